"""Paired test between two per-item files of the same suite (steer eval / steer compare items/*.jsonl).

    python experiments/paired_items.py BASE.jsonl EDITED.jsonl [--field correct] [--agree extracted] [--out FILE.json]

For when the two sides come from separate runs (e.g. an edited model's `steer eval` against a
committed base run's items): items are matched by id; both sides must hold the same ids. Prints
and writes both rates, the paired delta with its bootstrap 95% CI and the exact McNemar test
(steer.eval.stats, as `steer compare` computes them). --agree FIELD adds the share of items whose FIELD is equal on
both sides (e.g. the predicted MMLU letter: the same model in two dtypes, or two scorers). --also-without FIELD adds
the same test on the items whose FIELD is false on both sides (e.g. hit_limit: the maths answers neither side cut off
at the token budget), so a budget-bound accuracy can be read beside the accuracy on finished answers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steer.eval.stats import mcnemar_exact, paired_bootstrap_ci


def paired(b: dict[str, bool], e: dict[str, bool], ids: list[str]) -> dict:
    """Both rates, the paired delta's bootstrap 95% CI and the exact McNemar test on the items ids."""
    bs, es = [b[i] for i in ids], [e[i] for i in ids]
    if not ids:
        return {"n": 0}
    rates = {"n": len(ids), "base": sum(bs) / len(bs), "edited": sum(es) / len(es)}
    return {**rates, "delta_ci": list(paired_bootstrap_ci(bs, es)), **mcnemar_exact(bs, es)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base", type=Path)
    ap.add_argument("edited", type=Path)
    ap.add_argument("--field", default="correct")
    ap.add_argument("--agree", help="also report the share of items whose FIELD is equal on both sides")
    ap.add_argument("--also-without", help="also test on the items whose FIELD is false on both sides")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = lambda p: {r["id"]: r for r in map(json.loads, filter(None, p.read_text(encoding="utf-8").split("\n")))}
    base_rows, edited_rows = rows(args.base), rows(args.edited)
    b = {i: bool(r[args.field]) for i, r in base_rows.items()}
    e = {i: bool(r[args.field]) for i, r in edited_rows.items()}
    if set(b) != set(e):
        raise SystemExit(f"the files hold different items ({len(set(b) ^ set(e))} ids on one side only)")
    ids = sorted(b)
    result = {"base_file": str(args.base), "edited_file": str(args.edited), "field": args.field, **paired(b, e, ids)}
    if args.also_without:
        f = args.also_without
        kept = [i for i in ids if not base_rows[i][f] and not edited_rows[i][f]]
        result[f"without_{f}"] = paired(b, e, kept)
    if args.agree:
        same = [base_rows[i][args.agree] == edited_rows[i][args.agree] for i in ids]
        result[f"same_{args.agree}"] = sum(same) / len(same)
        result[f"different_{args.agree}_ids"] = [i for i, ok in zip(ids, same) if not ok]
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
