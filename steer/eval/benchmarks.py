"""Capability benchmark data: MMLU, GSM8K, MATH-500, AIME 2024/2025, read from a folder.

Layout under DATA_DIR (as in the project's shared data folder):
    capability/mmlu/{dev,val,test}/<subject>_<split>.csv   no header: question, A, B, C, D, answer
    capability/gsm8k/test.jsonl                           question, answer ("... #### 42")
    capability/math500/test.jsonl                         problem, answer, subject, level
    capability/aime24/test.jsonl, capability/aime25/test.jsonl   problem, answer (integer)
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from steer.errors import SteerError
from steer.jsonl import jsonl_lines
from steer.prompts import Prompt


@dataclass(frozen=True)
class Item:
    """One benchmark item: id, question, gold answer (MMLU: the letter; maths: the final answer), MMLU's four
    choices, and its stratum for stratified subsets."""

    id: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    group: str = ""  # stratum: MMLU subject, MATH subject/level


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise SteerError(f"no {what} data: expected {path}")
    return path


def load_mmlu(data_dir: Path, split: str = "test") -> list[Item]:
    """MMLU items of one split, subject by subject (files in name order): id "<subject>-<row>", group the subject."""
    folder = _need(Path(data_dir) / "capability" / "mmlu" / split, "MMLU")
    files = sorted(folder.glob(f"*_{split}.csv"))
    if not files:
        raise SteerError(f"no MMLU data: expected {folder}/<subject>_{split}.csv files")
    items = []
    for f in files:
        subject = f.name[: -len(f"_{split}.csv")]
        with open(f, newline="", encoding="utf-8") as fh:
            for i, row in enumerate(csv.reader(fh), 1):
                if len(row) != 6 or row[5].strip() not in ("A", "B", "C", "D"):
                    raise SteerError(f"{f}:{i}: expected 6 columns (question, A, B, C, D, answer letter)")
                items.append(Item(f"{subject}-{i}", row[0], row[5].strip(), tuple(row[1:5]), subject))
    return items


def _jsonl(path: Path, what: str) -> list[dict]:
    rows = []
    for i, line in enumerate(jsonl_lines(_need(path, what).read_text(encoding="utf-8")), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise SteerError(f"{path}:{i}: not valid JSON") from None
    return rows


def _field(row: dict, keys: tuple[str, ...], path: Path, i: int) -> str:
    for k in keys:
        if k in row:
            return str(row[k])
    raise SteerError(f"{path}:{i}: expected a field {' or '.join(keys)}")


def load_gsm8k(data_dir: Path) -> list[Item]:
    """GSM8K test items; the gold answer is the number after "####" (commas removed)."""
    path = Path(data_dir) / "capability" / "gsm8k" / "test.jsonl"
    items = []
    for i, row in enumerate(_jsonl(path, "GSM8K"), 1):
        answer = _field(row, ("answer",), path, i)
        if "####" not in answer:
            raise SteerError(f"{path}:{i}: answer has no '#### <number>' line")
        items.append(
            Item(f"gsm8k-{i}", _field(row, ("question",), path, i), answer.split("####")[-1].strip().replace(",", ""))
        )
    return items


def load_math500(data_dir: Path) -> list[Item]:
    """MATH-500 test items, grouped by "<subject>/L<level>"."""
    path = Path(data_dir) / "capability" / "math500" / "test.jsonl"
    return [
        Item(
            row.get("unique_id", f"math500-{i}"),
            _field(row, ("problem",), path, i),
            _field(row, ("answer",), path, i),
            group=f"{row.get('subject', '?')}/L{row.get('level', '?')}",
        )
        for i, row in enumerate(_jsonl(path, "MATH-500"), 1)
    ]


def load_aime(data_dir: Path, year: int) -> list[Item]:
    """AIME test items of one year (2024 or 2025: capability/aime24, aime25); the question is the `problem`
    or `question` field."""
    path = Path(data_dir) / "capability" / f"aime{year % 100}" / "test.jsonl"
    return [
        Item(
            f"aime{year % 100}-{row.get('id', i)}",
            _field(row, ("problem", "question"), path, i),
            _field(row, ("answer",), path, i),
        )
        for i, row in enumerate(_jsonl(path, f"AIME {year}"), 1)
    ]


LOADERS = {
    "mmlu": load_mmlu,
    "gsm8k": load_gsm8k,
    "math500": load_math500,
    "aime24": lambda d: load_aime(d, 2024),
    "aime25": lambda d: load_aime(d, 2025),
}


def stratified_subset(items: list[Item], limit: int | None, seed: int, equal: bool = False) -> list[Item]:
    """A seeded subset of `limit` items stratified by `group`, in the original order.

    equal=True gives every group the same share (e.g. 50 per MMLU subject); otherwise
    shares are proportional to group size (largest remainder). Groups smaller than their
    share give what they have.
    """
    if limit is None or limit >= len(items):
        return list(items)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[item.group].append(i)
    names = sorted(groups)
    if equal:
        quota = {g: limit // len(names) + (k < limit % len(names)) for k, g in enumerate(names)}
    else:
        exact = {g: limit * len(groups[g]) / len(items) for g in names}
        quota = {g: int(exact[g]) for g in names}
        for g in sorted(names, key=lambda g: exact[g] - quota[g], reverse=True)[: limit - sum(quota.values())]:
            quota[g] += 1
    picked = []
    for g in names:
        idx = groups[g]
        picked += random.Random(f"{seed}:{g}").sample(idx, min(quota[g], len(idx)))
    return [items[i] for i in sorted(picked)]


def sample(prompts: list[Prompt], limit: int | None, seed: int) -> list[Prompt]:
    """Seeded subset stratified by topic (proportional), in the original order."""
    if limit is None or limit >= len(prompts):
        return prompts
    items = [Item(str(i), "", "", group=p.topic) for i, p in enumerate(prompts)]
    return [prompts[int(it.id)] for it in stratified_subset(items, limit, seed)]
