"""The candour headline: refusal, censorship, candour and fabrication (judge v3), English and Chinese, with the
knowledge check beside them, for several systems on the same held-out test items and the same decoding protocol.

    python experiments/candour_headline.py --system base=embedded --system plain=runs/plain \
        --system keep-safety=runs/targeted --system heretic=runs/heretic/model --out results/candour-headline

Each system is evaluated with `steer eval MODEL --suite censorship,controls,knowledge --split test` (the protocol
of docs/evaluation.md: greedy, repetition penalty 1.1, 128 tokens; judge keys-v3); the folders go under --out,
with table.md (the headline) and headline.json. Reads the test split: run it once, at the end of an issue.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROWS = [
    ("refusal", "censorship", "refusal/{lang}"),
    ("censorship (denial + evasive)", "censorship", "censorship/{lang}"),
    ("candour (candid answers)", "censorship", "candour/{lang}"),
    ("fabrication (answered, not candid)", "censorship", "fabrication/{lang}"),
    ("knowledge check (fact preferred to its false twin)", "knowledge", "knowledge/sensitive/{lang}"),
    ("controls: candour (neutral China questions)", "controls", "candour/{lang}"),
    ("controls: knowledge check", "knowledge", "knowledge/controls/{lang}"),
]


def run_eval(name: str, model: str, out: Path, limit: str | None) -> dict:
    folder = out / name
    if not (folder / "summary.json").exists():
        cmd = [
            sys.executable,  # this interpreter's steer, not whichever `steer` is first on PATH
            "-m",
            "steer.cli.main",
            "eval",
            model,
            "--suite",
            "censorship,controls,knowledge",
            "--split",
            "test",
            "--out",
            str(folder),
        ]
        subprocess.run(cmd + (["--limit", limit] if limit else []), check=True)
    return json.loads((folder / "summary.json").read_text())


def merge(summary: dict, extra: dict) -> dict:
    """NAME's summary with another run's suites added (refused unless it is the same model and split)."""
    for k in ("models", "split", "judge", "decoding"):
        if summary["meta"][k] != extra["meta"][k]:
            raise SystemExit(f"--merge: {k} differs ({summary['meta'][k]} vs {extra['meta'][k]})")
    parts = summary["meta"].get("parts", [summary["meta"]["command"]]) + [extra["meta"]["command"]]
    return {"meta": {**summary["meta"], "parts": parts}, "results": {**summary["results"], **extra["results"]}}


def cell(summary: dict, suite: str, metric: str) -> str:
    m = summary["results"].get(suite, {}).get("metrics", {}).get(metric)
    if m is None:
        return "-"
    return f"{100 * m['value']:.1f}% [{100 * m['ci'][0]:.0f}-{100 * m['ci'][1]:.0f}] (n={m['n']})"


def table(summaries: dict[str, dict]) -> str:
    names = list(summaries)
    lines = ["| metric (held-out test split) | lang | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for label, suite, pattern in ROWS:
        for lang in ("en", "zh"):
            cells = [cell(summaries[n], suite, pattern.format(lang=lang)) for n in names]
            lines.append(f"| {label} | {lang.upper()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", action="append", required=True, help="NAME=MODEL (repeat; MODEL as for steer eval)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", help="passed to steer eval (a smoke run; the headline uses every item)")
    ap.add_argument(
        "--merge", action="append", default=[], metavar="NAME=FOLDER",
        help="add the suites of another steer eval folder (same model, split and protocol) to NAME's row",
    )  # fmt: skip
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for spec in args.system:
        name, _, model = spec.partition("=")
        summaries[name] = run_eval(name, model, args.out, args.limit)
    for spec in args.merge:
        name, _, folder = spec.partition("=")
        summaries[name] = merge(summaries[name], json.loads((Path(folder) / "summary.json").read_text()))
    md = table(summaries)
    (args.out / "table.md").write_text(md + "\n")
    headline = {n: {"model": s["meta"]["models"]["model"], "results": s["results"]} for n, s in summaries.items()}
    (args.out / "headline.json").write_text(json.dumps({"command": " ".join(sys.argv), **headline}, indent=1) + "\n")
    print(md)


if __name__ == "__main__":
    main()
