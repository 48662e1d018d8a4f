"""`steer judge`: label answers made anywhere (a JSONL file) with judge v3 and the answer keys.

Input lines: {"prompt", "response", optional "id" (a prompt id: the key is looked up by it), "lang"}. Output: the
same lines plus `label` (denial / evasive / complete) and, where the id has a key, `candid`, `facts`, `official`,
`false` (steer.eval.candour.Verdict). The output is written to a temporary file and renamed when complete.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from steer.checkpoint.save import check_output
from steer.errors import SteerError
from steer.eval.candour import judge_answers
from steer.eval.keys import KeySet, load_keys
from steer.jsonl import read_jsonl
from steer.prompts import SHIPPED, load_prompts


def read_answers(path: Path) -> list[dict]:
    """The answer lines of a JSONL file; a missing field, a non-string or an empty file is one SteerError line."""
    rows = read_jsonl(path, "answers file")
    for i, row in rows:
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("prompt", "response")):
            raise SteerError(f"{path}:{i}: expected a JSON object with string fields prompt and response")
    return [row for _, row in rows]


def shipped_prompt_ids() -> set[str]:
    """Every prompt id of the shipped prompt sets."""
    return {p.id for name in SHIPPED for p in load_prompts(name)}


def keys_for(extra: list[str] | None, answer_ids: set[str]) -> KeySet:
    """The shipped keys plus the user's key files; a user key naming an id that is neither shipped nor among the
    answers is an error."""
    return load_keys(["sensitive", "controls", *(extra or [])], known_prompts=shipped_prompt_ids() | answer_ids)


def judge_file(
    answers: Path, out: Path, judge, key_files: list[str] | None = None, strict: bool = False, force: bool = False
) -> dict:
    """Label every answer of `answers` into `out`; returns {"n", "labels": {label: count}, "keyed", "candid"}.
    strict: every answer must have an id with a key."""
    rows = read_answers(answers)
    check_output(out, force, inputs=(answers,))
    keys = keys_for(key_files, {str(r["id"]) for r in rows if "id" in r})
    found = [keys.get(str(r["id"])) if "id" in r else None for r in rows]
    missing = [str(r.get("id", f"line {i}")) for i, (r, k) in enumerate(zip(rows, found), 1) if k is None]
    if strict and missing:
        raise SteerError(f"{answers}: {len(missing)} answers have no answer key (first: {missing[0]}); add --keys FILE")
    verdicts = judge_answers(judge, [r["prompt"] for r in rows], [r["response"] for r in rows], found)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r, v in zip(rows, verdicts):
            fh.write(json.dumps(r | v.as_dict(), ensure_ascii=False) + "\n")
    tmp.replace(out)
    keyed = [v for v in verdicts if v.keyed]
    return {
        "n": len(rows),
        "labels": dict(Counter(v.label for v in verdicts)),
        "keyed": len(keyed),
        "candid": sum(v.candid for v in keyed),
        "fabricated": sum(v.fabricated for v in keyed),
    }
