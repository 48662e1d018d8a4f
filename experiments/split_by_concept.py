"""Split the shipped sensitive and control prompts by concept, stratified by topic, with a seed.

    python experiments/split_by_concept.py [--seed 0]

A concept is one answer key (steer/data/keys/<set>.jsonl): the English and Chinese prompts that ask the same
question. All prompts of a concept get the key's `concept` id and one split, so no question is trained on in one
language and tested in the other. Within each topic the concepts are shuffled (seeded per topic) and each goes to
the split furthest below its target share of the topic's prompts (train 40%, val 20%, test 40%: the shares the
sets had before). The prompts written on 2026-12-05 are split like the others: val stays a fifth of each set
(the targeted search and heretic read it every trial), and the test split gains questions no run has seen.
Rewrites steer/data/prompts/{sensitive,controls}.jsonl in place; running it twice gives the same files.
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


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def assign(keys: list[dict], seed: int) -> dict[str, str]:
    """concept -> split."""
    by_topic: dict[str, list[dict]] = defaultdict(list)
    out = {}
    for k in sorted(keys, key=lambda k: k["concept"]):
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


def rewrite(name: str, seed: int) -> dict[str, dict[str, int]]:
    path = ROOT / "steer" / "data" / "prompts" / f"{name}.jsonl"
    rows = read_jsonl(path)
    keys = read_jsonl(ROOT / "steer" / "data" / "keys" / f"{name}.jsonl")
    concept_of = {p: k["concept"] for k in keys for p in k["prompts"]}
    missing = [r["id"] for r in rows if r["id"] not in concept_of]
    if missing:
        raise SystemExit(f"{name}: prompts without an answer key: {', '.join(missing[:5])}")
    splits = assign(keys, seed)
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
    args = ap.parse_args()
    for name in ("sensitive", "controls"):
        print(name, json.dumps(rewrite(name, args.seed)))


if __name__ == "__main__":
    main()
