"""How well the three-way marker judge agrees with hand labels; how well two labellers agree.

    python experiments/judge_agreement.py            # writes results/judge-agreement/

Sets (rules: docs/labelling.md; all in steer/data/judge/):
- labelled.jsonl: 240 responses labelled by the first labeller; the judge's rules were written
  while looking at this set (development set).
- heldout_labelled.jsonl: 120 fresh responses (experiments/judge_heldout_sample.py, seed 1:
  validation-split and XSTest prompts) labelled blind by a second labeller. Some rules were
  revised after seeing the judge's errors here, so it is not a blind test of the final rules.
- second_labeller.jsonl: a third labeller's blind labels for 120 responses of labelled.jsonl:
  how much two careful people agree bounds what any judge can reach.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from steer.checkpoint.save import write_json
from steer.eval.judge import LABELS, MarkerJudge, agreement

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "steer" / "data" / "judge"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa: agreement beyond what the two label distributions give by chance."""
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    pe = sum((a.count(k) / n) * (b.count(k) / n) for k in LABELS)
    return (po - pe) / (1 - pe)


def table(name: str, a: dict) -> str:
    lines = [
        f"### {name} (n = {a['n']}): accuracy {100 * a['accuracy']:.1f}%\n",
        "| class | precision | recall | support |",
        "|---|---:|---:|---:|",
    ]
    for k, c in a["classes"].items():
        lines.append(f"| {k} | {100 * c['precision']:.1f}% | {100 * c['recall']:.1f}% | {c['support']} |")
    lines += [
        "",
        "confusion (rows: label, columns: judge): "
        + "; ".join(f"{g}: " + ", ".join(f"{p} {n}" for p, n in row.items()) for g, row in a["confusion"].items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    judge = MarkerJudge()
    out, md = (
        {"judge": judge.name},
        [f"# Judge agreement ({judge.name})\n", "`python experiments/judge_agreement.py`\n"],
    )
    for key, name in (("development", "labelled.jsonl"), ("heldout", "heldout_labelled.jsonl")):
        data = rows(name)
        pred = judge.classify([r["prompt"] for r in data], [r["response"] for r in data])
        res = agreement([r["label"] for r in data], pred)
        binary = sum((r["label"] == "denial") == (p == "denial") for r, p in zip(data, pred)) / len(data)
        res["denial_vs_other_accuracy"] = binary
        out[key] = res
        md.append(table(f"{key} set ({name})", res) + f"denial vs not denial: {100 * binary:.1f}%\n")
    combined_n = out["development"]["n"] + out["heldout"]["n"]
    combined = (
        out["development"]["accuracy"] * out["development"]["n"] + out["heldout"]["accuracy"] * out["heldout"]["n"]
    ) / combined_n
    out["combined_accuracy"] = combined
    md.append(f"All {combined_n} labelled responses: accuracy {100 * combined:.1f}%\n")
    first = {r["id"]: r for r in rows("labelled.jsonl")}
    second = rows("second_labeller.jsonl")
    a, b = [first[r["id"]]["label"] for r in second], [r["label"] for r in second]
    j = judge.classify([first[r["id"]]["prompt"] for r in second], [first[r["id"]]["response"] for r in second])
    out["labellers"] = {
        "n": len(a),
        "agreement": sum(x == y for x, y in zip(a, b)) / len(a),
        "kappa": kappa(a, b),
        "judge_vs_second_labeller": agreement(b, j)["accuracy"],
    }
    lab = out["labellers"]
    md.append(
        f"## Two labellers on the same {lab['n']} responses\n\nagreement {100 * lab['agreement']:.1f}%, "
        f"Cohen's kappa {lab['kappa']:.3f}; the judge agrees with the second labeller on "
        f"{100 * lab['judge_vs_second_labeller']:.1f}% of them.\n"
    )
    folder = ROOT / "results" / "judge-agreement"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "agreement.json", out)
    (folder / "README.md").write_text("\n".join(md), encoding="utf-8")
    sys.stdout.write("\n".join(md))


if __name__ == "__main__":
    main()
