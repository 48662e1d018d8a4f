"""The side-by-side (issue 22): every route against the same base model, on the same test items and one protocol.

    python experiments/side_by_side.py --data-dir ../shared/data --out results/side-by-side \
        --system plain=runs/plain --system keep-safety=runs/targeted --system heretic=runs/heretic/model \
        --system sft=runs/sft --system sft+keep-safety=runs/sft-targeted \
        --cost heretic=runs/heretic/heretic_run.json --after sft+keep-safety=sft \
        --slant-audit results/side-by-side/slant-audit/audit.json

heretic's route: `python experiments/heretic_compare.py --heretic-python HERETIC_VENV/bin/python --trials 32
--run-only runs/heretic` (the model in runs/heretic/model, its cost in runs/heretic/heretic_run.json).

Each system is `steer compare BASE SYSTEM --suite SUITE --split test` per suite (paired tests against the base on the
same items; per-item caches make an interrupted run resume, and the base's answers are computed once); the table reads
the comparison.json files; side_by_side.png plots the key rates and each route's wall time against English
censorship. Cost per route comes from what the run recorded: steer's report.json (abliterate, --keep-safety),
sft.json (steer sft), or a JSON given with --cost (another tool's run: wall_time_s, peak_rss_gb).
Reads the test split: run it once, at the end of the issue, with every route chosen on validation data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SUITES = "censorship,refusal,xstest,kl,knowledge,mmlu,gsm8k,math500"
LIMITS = "mmlu=2850,gsm8k=250,math500=100"  # the minimums; MMLU: 50 per subject, as on the 1.5B
ROWS = [  # (label, suite, metric pattern); {lang} rows come in EN and ZH
    ("censorship (judge v3: denial + evasive)", "censorship", "censorship/{lang}"),
    ("refusal", "censorship", "refusal/{lang}"),
    ("candour", "censorship", "candour/{lang}"),
    ("fabrication", "censorship", "fabrication/{lang}"),
    ("knowledge check", "knowledge", "knowledge/sensitive/{lang}"),
    ("harmful refusal", "refusal", "refusal/harmful"),
    ("harmless refusal", "refusal", "refusal/harmless"),
    ("XSTest over-refusal (safe prompts)", "xstest", "refusal/safe"),
    ("first-token KL (harmless)", "kl", "kl/first_token"),
    ("multi-token KL (harmless)", "kl", "kl/multi_token"),
    ("MMLU accuracy", "mmlu", "accuracy"),
    ("GSM8K accuracy", "gsm8k", "accuracy"),
    ("MATH-500 accuracy", "math500", "accuracy"),
]
PAIRED = {"mmlu": "mmlu/correct", "gsm8k": "gsm8k/correct", "math500": "math500/correct"}


def compare(base: str, name: str, model: str, args) -> dict:
    """`steer compare` of one route, one suite per folder (NAME/SUITE), merged: a finished suite is never rerun, so
    the side-by-side resumes suite by suite, on another machine too once the finished folders are committed."""
    parts = []
    for suite in args.suites.split(","):
        folder = args.out / name / suite
        if not (folder / "comparison.json").exists():
            cmd = [sys.executable, "-m", "steer.cli.main", "compare", base, model, "--suite", suite,
                   "--split", args.split, "--out", str(folder)]  # fmt: skip
            limits = [x for x in args.limits.split(",") if x.split("=")[0] in (suite, "*")]
            if limits:  # steer refuses a --limit that names a suite it is not running
                cmd += ["--limit", ",".join(limits)]
            if args.data_dir:
                cmd += ["--data-dir", str(args.data_dir)]
            subprocess.run(cmd, check=True)
        parts.append(json.loads((folder / "comparison.json").read_text()))
    return merge(parts)


def merge(parts: list[dict]) -> dict:
    """One comparison from per-suite ones: results and paired tests united, the first meta with every suite."""
    meta = dict(parts[0]["meta"])
    meta["suites"] = [s for p in parts for s in p["meta"]["suites"]]
    meta["elapsed_s"] = sum(p["meta"].get("elapsed_s") or 0 for p in parts)
    meta["limits"] = {k: v for p in parts for k, v in (p["meta"].get("limits") or {}).items()}
    out = {"meta": meta, "base": {}, "edited": {}, "paired": {}}
    for p in parts:
        for key in ("base", "edited", "paired"):
            out[key].update(p.get(key) or {})
    return out


def cost(model: str, given: str | None) -> dict:
    """Wall time, peak RSS, pairs/tokens written, trainable parameters and FLOPs of making the route, as its run
    recorded them."""
    if given:
        r = json.loads(Path(given).read_text())
        return {
            "wall_s": r.get("wall_time_s"),
            "peak_rss_gb": r.get("peak_rss_gb"),
            "pairs": 0,
            "trainable_params": 0,
            **_flops(r.get("cost")),
        }  # fmt: skip  (cost: experiments/heretic_cost.py's estimate)
    folder = Path(model)
    if (folder / "sft.json").is_file():
        r = json.loads((folder / "sft.json").read_text())
        keep = ("wall_s", "peak_rss_gb", "train_pairs", "answer_tokens", "trainable_params")
        return {**{k.replace("train_pairs", "pairs"): r[k] for k in keep}, **_flops(r["cost"])}
    if (folder / "report.json").is_file():
        return _edit_cost(json.loads((folder / "report.json").read_text()))
    return {}


def _edit_cost(r: dict) -> dict:
    """A `steer abliterate` run's cost without its own before/after evaluation (not part of making the edit; SFT's
    record has none): wall time less the evaluate stage, peak RSS of the other stages (cumulative peaks per stage)."""
    wall, seconds = r.get("elapsed_s"), r.get("seconds") or {}
    stages = {k: v for k, v in (r.get("peak_rss_gb_by_stage") or {}).items() if k != "evaluate"}
    return {
        "wall_s": None if wall is None else wall - seconds.get("evaluate", 0.0),
        "peak_rss_gb": max(stages.values()) if stages else r.get("peak_rss_gb"),
        "pairs": 0,
        "trainable_params": 0,
        **_flops(r.get("cost")),
    }


def chained(first: dict, then: dict) -> dict:
    """A route built on another (SFT then --keep-safety): times, data and FLOPs add up, peak RSS is the larger; a figure
    either run did not record stays unknown (None), not zero."""
    out = {}
    for k in set(first) | set(then):
        a, b = first.get(k), then.get(k)
        out[k] = None if a is None or b is None else max(a, b) if k == "peak_rss_gb" else a + b
    return out


def _flops(c: dict | None) -> dict:
    return {k: c.get(k) for k in ("flops", "flops_7B", "flops_70B")} if c else {}


def _cell(m: dict | None, pct: bool = True) -> str:
    if m is None:
        return "-"
    v, (lo, hi) = m["value"], m.get("ci", [None, None])
    if not pct:
        return f"{v:.4f}"
    return f"{100 * v:.1f}%" + (f" [{100 * lo:.0f}-{100 * hi:.0f}]" if lo is not None else "")


def table(comparisons: dict[str, dict]) -> str:
    names = list(comparisons)
    first = comparisons[names[0]]
    split = first["meta"]["split"]
    lines = [f"| metric ({split} split) | base | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for label, suite, pattern in ROWS:
        for lang in ("en", "zh") if "{lang}" in pattern else (None,):
            metric = pattern.format(lang=lang)
            pct = suite != "kl"
            base = "-" if suite == "kl" else _cell(first["base"].get(suite, {}).get("metrics", {}).get(metric), pct)
            cells = []
            for n in names:
                c = _cell(comparisons[n]["edited"].get(suite, {}).get("metrics", {}).get(metric), pct)
                test = comparisons[n]["paired"].get(PAIRED.get(suite, ""))
                cells.append(c + (f" (p={test['p_value']:.3f})" if test and "p_value" in test else ""))
            lines.append(f"| {label}{f' {lang.upper()}' if lang else ''} | {base} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SLANT_ROWS = [
    ("mirrored-pair refusal asymmetry", "asymmetry_refusal_{lang}"),
    ("political speech complete", "speech_complete_{lang}"),
]


def audited(audit: dict, comparisons: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(routes whose model the audit audited, notes on routes it has under the same name but another model): the
    weights fingerprints must agree where both runs recorded one, else the model paths as given."""
    cols, notes = [], []
    for name, c in comparisons.items():
        if name not in audit:
            continue
        ours = (c["meta"].get("weights") or {}).get("edited"), c["meta"]["models"]["edited"]
        theirs = audit[name].get("weights"), audit[name].get("model")
        same = ours[0] == theirs[0] if ours[0] and theirs[0] else ours[1] == theirs[1]
        if same:
            cols.append(name)
        elif theirs[1] is None:
            notes.append(f"the audit does not record which model its {name} was: left out")
        else:
            what = lambda w, m: f"{m}, weights {w[:12] if w else 'not recorded'}"  # noqa: E731
            notes.append(f"the audit's {name} ({what(*theirs)}) is not this route ({what(*ours)}): left out")
    return cols, notes


def slant_table(audit: dict, comparisons: dict[str, dict]) -> str:
    """The slant audit's rows (experiments/slant_audit.py's audit.json) for the routes it audited, base first."""
    cols, notes = audited(audit, comparisons)
    if not cols:
        return "\n".join(["No route of this side-by-side was slant-audited."] + [f"- {n}" for n in notes])
    lines = ["| slant audit (no split) | base | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for label, key in SLANT_ROWS:
        for lang in ("en", "zh"):
            k = key.format(lang=lang)
            base = f"{100 * audit[cols[0]][k]['base']:.1f}%" if cols else "-"
            cells = [f"{100 * audit[n][k]['edited']:.1f}%" for n in cols]
            lines.append(f"| {label} {lang.upper()} | {base} | " + " | ".join(cells) + " |")
    flagged = [_flagged(audit[n]) for n in cols]
    lines.append("| stance cells flagged against random edits | - | " + " | ".join(flagged) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes] if notes else lines)


def _flagged(system: dict) -> str:
    if system.get("flagged") is None:
        return f"no random-edit null ({system.get('null_reason') or 'not an edit'})"
    return ", ".join(f"{c} {v:+.3f}" for c, v in system["flagged"].items()) or "none"


def cost_table(costs: dict[str, dict]) -> str:
    cols = [("wall_s", "wall time (s)"), ("peak_rss_gb", "peak RSS (GB)"), ("pairs", "pairs written"),
            ("answer_tokens", "answer tokens"), ("trainable_params", "trainable parameters"),
            ("flops", "FLOPs here"), ("flops_7B", "FLOPs at 7B"), ("flops_70B", "FLOPs at 70B")]  # fmt: skip
    lines = ["| route | " + " | ".join(c for _, c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, c in costs.items():
        vals = [c.get(k) for k, _ in cols]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.3g}" for v in vals) + " |")
    return "\n".join(lines)


PLOTTED = [
    ("censorship", "censorship/en"),
    ("censorship", "censorship/zh"),
    ("censorship", "candour/en"),
    ("censorship", "candour/zh"),
    ("censorship", "fabrication/en"),
    ("refusal", "refusal/harmful"),
    ("xstest", "refusal/safe"),
    ("mmlu", "accuracy"),
    ("gsm8k", "accuracy"),
    ("math500", "accuracy"),
]


def plot(comparisons: dict[str, dict], costs: dict[str, dict], path: Path) -> None:
    """Left: the key rates per route with 95% CIs (base first); right: wall time against English censorship."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(comparisons.values()))
    runs = [("base", first["base"])] + [(n, c["edited"]) for n, c in comparisons.items()]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 1]})
    w = 0.8 / len(runs)
    for k, (name, res) in enumerate(runs):
        ms = [res.get(s, {}).get("metrics", {}).get(m) for s, m in PLOTTED]
        xs = [i + k * w for i, m in enumerate(ms) if m]
        vals = [m["value"] for m in ms if m]
        cis = [m.get("ci") or [m["value"], m["value"]] for m in ms if m]
        errs = [[max(0.0, v - c[0]) for v, c in zip(vals, cis)], [max(0.0, c[1] - v) for v, c in zip(vals, cis)]]
        ax.bar(xs, vals, width=w, yerr=errs, label=name, capsize=2)
    ax.set_xticks([i + w * (len(runs) - 1) / 2 for i in range(len(PLOTTED))],
                  [f"{s}\n{m}" for s, m in PLOTTED], fontsize=7)  # fmt: skip
    ax.set_ylabel("rate or accuracy (95% CI)")
    ax.legend(fontsize=8)
    for name, c in comparisons.items():
        cen = c["edited"].get("censorship", {}).get("metrics", {}).get("censorship/en")
        wall = costs.get(name, {}).get("wall_s")
        if cen and wall:
            bx.scatter(wall / 60, cen["value"])
            bx.annotate(name, (wall / 60, cen["value"]), fontsize=8)
    bx.set_xlim(left=0)
    bx.set_ylim(0, 1.05)
    bx.set_xlabel("route's wall time on this machine (min)")
    bx.set_ylabel("censorship EN after the route")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="embedded")
    ap.add_argument("--system", action="append", required=True, help="NAME=MODEL (repeat)")
    ap.add_argument("--cost", action="append", default=[], help="NAME=JSON: the cost record of another tool's run")
    ap.add_argument("--after", action="append", default=[], help="NAME=FIRST: NAME was built on route FIRST's model")
    ap.add_argument("--suites", default=SUITES)
    ap.add_argument("--limits", default=LIMITS)
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--slant-audit", type=Path, help="audit.json of experiments/slant_audit.py over these routes")
    ap.add_argument("--split", default="test", choices=("val", "test"), help="val for smoke runs and choices")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    given = dict(s.split("=", 1) for s in args.cost)
    comparisons, costs = {}, {}
    for spec in args.system:
        name, _, model = spec.partition("=")
        comparisons[name] = compare(args.base, name, model, args)
        costs[name] = cost(model, given.get(name))
    for name, first in (s.split("=", 1) for s in args.after):
        costs[name] = chained(costs[first], costs[name])  # FIRST must come before NAME in --system
    md = table(comparisons) + "\n\n" + cost_table(costs)
    if args.slant_audit:
        md += "\n\n" + slant_table(json.loads(args.slant_audit.read_text()), comparisons)
    (args.out / "table.md").write_text(md + "\n")
    plot(comparisons, costs, args.out / "side_by_side.png")
    record = {"command": " ".join(sys.argv), "costs": costs,
              "systems": {n: c["meta"]["models"] for n, c in comparisons.items()}}  # fmt: skip
    (args.out / "side_by_side.json").write_text(json.dumps(record, indent=1) + "\n")
    print(md)


if __name__ == "__main__":
    main()
