"""Assign the seeded, stratified train/val/test split of the shipped prompt sets.

This is the command that made the `split` field of steer/data/prompts/*.jsonl:

    python experiments/prompt_splits.py --seed 0

Within every (lang, topic) stratum the prompts are shuffled with the seed and cut
40% train / 20% val / 40% test (test gets the rounding remainder). Running it again
with the same seed reproduces the files byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

PROMPTS = Path(__file__).resolve().parents[1] / "steer" / "data" / "prompts"
FRACTIONS = {"train": 0.4, "val": 0.2}


def assign(rows: list[dict], seed: int) -> list[dict]:
    strata: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        strata[(row["lang"], row["topic"])].append(row)
    for key in sorted(strata):
        group = sorted(strata[key], key=lambda r: r["id"])
        random.Random(f"{seed}:{key[0]}:{key[1]}").shuffle(group)
        n_train = round(len(group) * FRACTIONS["train"])
        n_val = round(len(group) * FRACTIONS["val"])
        for i, row in enumerate(group):
            row["split"] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in sorted(PROMPTS.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = assign(rows, args.seed)
        keys = ("id", "text", "lang", "topic", "split")
        lines = [json.dumps({k: r[k] for k in keys}, ensure_ascii=False) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts: dict[str, int] = defaultdict(int)
        for r in rows:
            counts[f"{r['lang']}/{r['split']}"] += 1
        print(path.name, dict(sorted(counts.items())))


if __name__ == "__main__":
    main()
