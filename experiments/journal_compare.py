"""Compare two Optuna search journals trial by trial (the objective value each trial recorded).

    python experiments/journal_compare.py A.journal B.journal [--out FILE.json]

Used to check that a code change leaves `steer abliterate --keep-safety`'s search unchanged: the
same trials, scored to the last bit, on the same machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def values(journal: Path) -> dict[int, float]:
    """trial number -> its first objective value, from an Optuna JournalFileBackend file."""
    out = {}
    for line in journal.read_text().splitlines():
        op = json.loads(line)
        if op.get("op_code") == 6 and op.get("values"):  # a finished trial's values
            out[op["trial_id"]] = op["values"][0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    a, b = values(args.a), values(args.b)
    rows = [{"trial": t, "a": a[t], "b": b[t], "same": a[t] == b[t]} for t in sorted(set(a) & set(b))]
    for r in rows:
        print(f"trial {r['trial']:3d}  {r['a']!r:>22}  {r['b']!r:>22}  {'same' if r['same'] else 'DIFFERENT'}")
    print(f"{sum(r['same'] for r in rows)} of {len(rows)} common trials bit-identical")
    if args.out:
        args.out.write_text(json.dumps({"a": str(args.a), "b": str(args.b), "trials": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
