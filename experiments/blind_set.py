"""Pool the answers of several systems into one blind, shuffled set for labelling.

    python experiments/blind_set.py --system base=runs/v3-val/base --system plain=runs/v3-val/plain ... \
        --out steer/data/judge/v3/pool1.unlabelled.jsonl --map /outside/the/repo/pool1.systems.json \
        [--prefix p1] [--seed 0]

Each SYSTEM is a `steer eval` output folder with items/censorship.jsonl and items/controls.jsonl, or
`report.json:before` / `report.json:after` of a `steer abliterate` run (its censorship answers only). Writes
one line per answer, {"id": "p1-0001", "suite": "sensitive" | "controls", "lang", "prompt_id", "prompt",
"response"}, in a seeded random order with sequential ids, and nothing that names the system or the marker
judge's label. The id -> system map goes to --map, kept away from the labellers until the labels are committed.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from steer.jsonl import jsonl_lines

SUITES = {"censorship": "sensitive", "controls": "controls"}


def _row(name: str, item: dict) -> dict:
    return {
        "suite": name,
        "lang": item["lang"],
        "prompt_id": item["id"],
        "prompt": item["prompt"],
        "response": item["output"],
    }


def answers(source: str) -> list[dict]:
    path, _, side = source.rpartition(":")
    if path.endswith(".json") and side in ("before", "after"):
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        return [_row("sensitive", item) for item in report[side]["censorship"]["items"]]
    folder, rows = Path(source), []
    for suite, name in SUITES.items():
        for line in jsonl_lines((folder / "items" / f"{suite}.jsonl").read_text(encoding="utf-8")):
            if line.strip():
                rows.append(_row(name, json.loads(line)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--system", action="append", required=True, help="NAME=EVAL_FOLDER or NAME=report.json:before|after (repeat)"
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--map", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefix", default="p1", help="blind id prefix (one per labelling pool)")
    args = ap.parse_args()
    pool = []
    for spec in args.system:
        name, _, folder = spec.partition("=")
        pool += [(name, row) for row in answers(folder)]
    random.Random(args.seed).shuffle(pool)
    lines, systems = [], {}
    for i, (name, row) in enumerate(pool, 1):
        bid = f"{args.prefix}-{i:04d}"
        systems[bid] = name
        lines.append(json.dumps({"id": bid, **row}, ensure_ascii=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args.map.write_text(json.dumps(systems, indent=1) + "\n")
    print(f"{len(lines)} answers from {len(args.system)} systems -> {args.out}; map -> {args.map}")


if __name__ == "__main__":
    main()
