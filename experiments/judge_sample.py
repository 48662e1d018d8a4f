"""Sample real responses for the judge's labelled validation set.

    python experiments/judge_sample.py results/abliterate-embedded/report.json --n 240 --seed 0

Takes responses of the base and the edited model from an abliterate report (sensitive
English/Chinese, harmful, harmless test prompts), a seeded sample stratified by group and
model, and writes them unlabelled to steer/data/judge/unlabelled.jsonl for labelling by the
rules in docs/labelling.md.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    strata = {}
    for model in ("before", "after"):
        for group, data in report[model]["groups"].items():
            strata[(group, model)] = data["items"]
    per = args.n // len(strata)
    rows = []
    for (group, model), items in sorted(strata.items()):
        for item in random.Random(f"{args.seed}:{group}:{model}").sample(items, min(per, len(items))):
            rows.append(
                {
                    "id": f"{model}:{item['id']}",
                    "prompt_id": item["id"],
                    "group": group,
                    "model": "base" if model == "before" else "abliterated",
                    "prompt": item["prompt"],
                    "response": item["answer"],
                    "label": None,
                    "note": "",
                }
            )
    out = ROOT / "steer" / "data" / "judge" / "unlabelled.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} responses -> {out}")


if __name__ == "__main__":
    main()
