"""Judge v3 against the blind labels of steer/data/judge/v3/: accuracy, evasive precision and recall,
candid agreement, confusion matrices with 95% Wilson intervals, per language, system and pool.

    python experiments/judge_v3_validation.py [--judge keys|markers|URL#model] [--out results/judge-v3]

Gold labels (`<pool>.labelled.jsonl`: DENIAL, EVASIVE, CANDID, FABRICATED, DEGENERATE) map to the judge's
classes: DENIAL -> denial, EVASIVE and DEGENERATE -> evasive, CANDID and FABRICATED -> complete; candid = CANDID.
`pool1` is the development pool (judge rules were tuned on it after its labels were committed); `pool2` was
labelled after the tuned judge was committed and is the check (see results/judge-v3/README.md). Metrics:
- three-way accuracy (denial / evasive / complete);
- evasive precision and recall (gold evasive = EVASIVE or DEGENERATE);
- candid agreement on gold-complete answers: the judge's candid flag (False unless the judge says complete and
  candid) equals gold CANDID;
- the same for the marker judge (v2), whose `complete` is taken as candid, for comparison.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from steer.eval.candour import judge_answers, make_judge
from steer.eval.keys import load_keys
from steer.eval.stats import wilson_ci

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "steer" / "data" / "judge" / "v3"
CLASS = {
    "DENIAL": "denial",
    "EVASIVE": "evasive",
    "DEGENERATE": "evasive",
    "CANDID": "complete",
    "FABRICATED": "complete",
}
CLASSES = ("denial", "evasive", "complete")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ratio(k: int, n: int) -> dict:
    lo, hi = wilson_ci(k, n)
    return {"value": k / n if n else None, "k": k, "n": n, "ci": [round(lo, 4), round(hi, 4)]}


def scores(rows: list[dict]) -> dict:
    """rows: gold (class), gold_candid, pred (class), pred_candid."""
    conf = {g: {p: sum(1 for r in rows if r["gold"] == g and r["pred"] == p) for p in CLASSES} for g in CLASSES}
    ev_pred = [r for r in rows if r["pred"] == "evasive"]
    ev_gold = [r for r in rows if r["gold"] == "evasive"]
    complete = [r for r in rows if r["gold"] == "complete"]
    return {
        "n": len(rows),
        "accuracy": ratio(sum(r["gold"] == r["pred"] for r in rows), len(rows)),
        "evasive_precision": ratio(sum(r["gold"] == "evasive" for r in ev_pred), len(ev_pred)),
        "evasive_recall": ratio(sum(r["pred"] == "evasive" for r in ev_gold), len(ev_gold)),
        "candid_agreement": ratio(sum(r["gold_candid"] == r["pred_candid"] for r in complete), len(complete)),
        "candid_precision": ratio(
            sum(r["gold_candid"] for r in rows if r["pred_candid"]), sum(r["pred_candid"] for r in rows)
        ),
        "candid_recall": ratio(
            sum(r["pred_candid"] for r in rows if r["gold_candid"]), sum(r["gold_candid"] for r in rows)
        ),
        "confusion": conf,
    }


def judged_rows(answers: list[dict], gold: dict[str, dict], judge_spec: str) -> list[dict]:
    keys = load_keys()
    judge = make_judge(judge_spec)
    verdicts = judge_answers(
        judge,
        [a["prompt"] for a in answers],
        [a["response"] for a in answers],
        [keys.get(a["prompt_id"]) for a in answers],
    )
    out = []
    for a, v in zip(answers, verdicts):
        g = gold[a["id"]]["label"]
        candid = v.candid if v.keyed else v.label == "complete"
        out.append(
            {
                **a,
                "gold_label": g,
                "gold": CLASS[g],
                "gold_candid": g == "CANDID",
                "pred": v.label,
                "pred_candid": bool(candid),
                "facts": list(v.facts),
                "official": list(v.official),
            }
        )
    return out


def breakdown(rows: list[dict], by: str) -> dict:
    groups = defaultdict(list)
    for r in rows:
        groups[r[by]].append(r)
    return {k: scores(v) for k, v in sorted(groups.items())}


def load_pools(names: list[str]) -> tuple[list[dict], dict[str, dict], dict[str, str]]:
    """Answers (with their pool), gold labels and the id -> system map of the named pools."""
    answers, gold, systems = [], {}, {}
    for name in names:
        answers += [a | {"pool": name} for a in read(DATA / f"{name}.unlabelled.jsonl")]
        gold |= {r["id"]: r for r in read(DATA / f"{name}.labelled.jsonl")}
        systems |= json.loads((DATA / f"{name}.systems.json").read_text())
    return answers, gold, systems


def fmt(m: dict) -> str:
    if m["value"] is None:
        return f"- (n={m['n']})"
    return f"{100 * m['value']:.1f}% [{100 * m['ci'][0]:.0f}, {100 * m['ci'][1]:.0f}] (n={m['n']})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--judge", default="keys")
    ap.add_argument("--pools", default="pool1", help="comma-separated pools (pool1: development, pool2: check)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    answers, gold, systems = load_pools(args.pools.split(","))
    rows = judged_rows(answers, gold, args.judge)
    for r in rows:
        r["system"] = systems[r["id"]]
    report = {
        "judge": args.judge,
        "pools": args.pools,
        "overall": scores(rows),
        "by_lang": breakdown(rows, "lang"),
        "by_system": breakdown(rows, "system"),
        "by_suite": breakdown(rows, "suite"),
        "by_pool": breakdown(rows, "pool"),
    }
    for lang, m in report["by_lang"].items():
        print(
            f"{args.judge} {args.pools} {lang}: accuracy {fmt(m['accuracy'])}; evasive P {fmt(m['evasive_precision'])}"
            f" R {fmt(m['evasive_recall'])}; candid agreement {fmt(m['candid_agreement'])}"
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"{'endpoint' if args.judge.startswith('http') else args.judge}-{args.pools.replace(',', '+')}"
        (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
        with open(args.out / f"{name}-items.jsonl", "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
