"""Split the shipped sensitive and control prompts by concept, stratified by topic, with a seed.

    python experiments/split_by_concept.py [--seed 0] [--new-to val]

A concept is one answer key (steer/data/keys/<set>.jsonl): the English and Chinese prompts that ask the same
question. All prompts of a concept get the key's `concept` id and one split, so no question is trained on in one
language and tested in the other. Within each topic the concepts are shuffled (seeded per topic) and each goes to
the split furthest below its target share of the topic's prompts (train 40%, val 20%, test 40%: the shares the
sets had before). Prompts written on 2026-12-05 for the judge's validation (ids from NEW_FROM on) go whole to
`--new-to` (val). Rewrites steer/data/prompts/{sensitive,controls}.jsonl in place; running it
twice gives the same files.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARES = {"train": 0.4, "val": 0.2, "test": 0.4}
FIELDS = ("id", "text", "lang", "topic", "concept", "split")
NEW_FROM = {"sens-en": 178, "sens-zh": 132}  # first id of the prompts written for the judge's validation


def is_new(prompt_id: str) -> bool:
    prefix, _, number = prompt_id.rpartition("-")
    return prefix in NEW_FROM and int(number) >= NEW_FROM[prefix]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def assign(keys: list[dict], seed: int, new_to: str) -> dict[str, str]:
    """concept -> split."""
    by_topic: dict[str, list[dict]] = defaultdict(list)
    out = {}
    for k in sorted(keys, key=lambda k: k["concept"]):
        if all(is_new(p) for p in k["prompts"]):
            out[k["concept"]] = new_to
        else:
            by_topic[k["topic"]].append(k)
    for topic, concepts in sorted(by_topic.items()):
        random.Random(f"{seed}-{topic}").shuffle(concepts)
        total = sum(len(k["prompts"]) for k in concepts)
        count = dict.fromkeys(SHARES, 0)
        for k in concepts:
            split = max(SHARES, key=lambda s: SHARES[s] * total - count[s])  # largest deficit; ties in SHARES order
            out[k["concept"]] = split
            count[split] += len(k["prompts"])
    return out


def rewrite(name: str, seed: int, new_to: str) -> dict[str, dict[str, int]]:
    path = ROOT / "steer" / "data" / "prompts" / f"{name}.jsonl"
    rows = read_jsonl(path)
    keys = read_jsonl(ROOT / "steer" / "data" / "keys" / f"{name}.jsonl")
    concept_of = {p: k["concept"] for k in keys for p in k["prompts"]}
    missing = [r["id"] for r in rows if r["id"] not in concept_of]
    if missing:
        raise SystemExit(f"{name}: prompts without an answer key: {', '.join(missing[:5])}")
    splits = assign(keys, seed, new_to)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SHARES, 0))
    lines = []
    for r in rows:
        r = {**r, "concept": concept_of[r["id"]], "split": splits[concept_of[r["id"]]]}
        counts[r["lang"]][r["split"]] += 1
        lines.append(json.dumps({f: r[f] for f in FIELDS}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {lang: dict(c) for lang, c in counts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--new-to", default="val", choices=tuple(SHARES))
    args = ap.parse_args()
    for name in ("sensitive", "controls"):
        print(name, json.dumps(rewrite(name, args.seed, args.new_to)))


if __name__ == "__main__":
    main()
