"""Paired test between two per-item files of the same suite (steer eval / steer compare items/*.jsonl).

    python experiments/paired_items.py BASE.jsonl EDITED.jsonl [--field correct] [--out FILE.json]

For when the two sides come from separate runs (e.g. an edited model's `steer eval` against a
committed base run's items): items are matched by id; both sides must hold the same ids. Prints
and writes both rates, the paired delta with its bootstrap 95% CI and the exact McNemar test
(steer.eval.stats, as `steer compare` computes them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steer.eval.stats import mcnemar_exact, paired_bootstrap_ci


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base", type=Path)
    ap.add_argument("edited", type=Path)
    ap.add_argument("--field", default="correct")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    read = lambda p: {
        r["id"]: bool(r[args.field]) for r in map(json.loads, filter(None, p.read_text(encoding="utf-8").split("\n")))
    }
    b, e = read(args.base), read(args.edited)
    if set(b) != set(e):
        raise SystemExit(f"the files hold different items ({len(set(b) ^ set(e))} ids on one side only)")
    ids = sorted(b)
    bs, es = [b[i] for i in ids], [e[i] for i in ids]
    test = mcnemar_exact(bs, es)
    result = {
        "base_file": str(args.base),
        "edited_file": str(args.edited),
        "field": args.field,
        "n": len(ids),
        "base": sum(bs) / len(bs),
        "edited": sum(es) / len(es),
        "delta_ci": list(paired_bootstrap_ci(bs, es)),
        **test,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
