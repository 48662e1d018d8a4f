"""heretic vs steer --keep-safety on the embedded model, same prompts, same evaluation.

    python experiments/heretic_compare.py --heretic-python /work/heretic-venv/bin/python [--trials 30]

1. Writes steer's shipped prompt splits as heretic's plain-text prompt files: sensitive/train as
   its "bad" prompts, harmless/train as "good", and the val splits as its evaluation prompts
   (the same splits steer's search uses; the test split stays held out for both).
2. Runs heretic (PyPI heretic-llm, in its own virtual environment) non-interactively through
   experiments/heretic_driver.py, seeded, timed (wall and peak RSS), merged model saved.
3. Evaluates heretic's model with `steer compare` on the held-out test split (judged censorship
   EN/ZH, harmful and harmless refusal, XSTest, KL) and puts it beside steer's targeted run
   (results/archive/targeted-embedded-2026-11-22-7c5c9b4/: the edit of the 2026-11-22 run at 7c5c9b4,
   made by experiments/targeted_embedded.py before the readout existed), with both tools' times.
Writes results/heretic-compare/ (comparison.json, README table, heretic's choice and log tail).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = "censorship,refusal,xstest,kl"
ROWS = [
    ("censorship EN (denial+evasive)", "censorship", "censorship/en"),
    ("censorship ZH", "censorship", "censorship/zh"),
    ("censorship ZH without repetition loops (diagnostic)", "censorship", "censorship_without_loops/zh"),
    ("harmful refusal", "refusal", "refusal/harmful"),
    ("harmless refusal", "refusal", "refusal/harmless"),
    ("XSTest safe refusal", "xstest", "refusal/safe"),
    ("first-token KL", "kl", "kl/first_token"),
    ("multi-token KL", "kl", "kl/multi_token"),
    ("MMLU 0-shot", "mmlu", "accuracy"),
]


def write_prompts(folder: Path) -> dict[str, Path]:
    from steer.prompts import load_prompts

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, (name, split) in {
        "bad": ("sensitive", "train"),
        "good": ("harmless", "train"),
        "bad-evaluation": ("sensitive", "val"),
        "good-evaluation": ("harmless", "val"),
    }.items():
        files[key] = folder / f"{key}.txt"
        files[key].write_text(
            "".join(p.text.replace("\n", " ") + "\n" for p in load_prompts(name, split)), encoding="utf-8"
        )
    return files


def run_heretic(python: str, model: Path, files: dict[str, Path], work: Path, trials: int, seed: int) -> dict:
    out = work / "model"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    cmd = [
        python,
        str(ROOT / "experiments" / "heretic_driver.py"),
        "--model",
        str(model),
        "--dtypes",
        '["float32"]',
        "--n-trials",
        str(trials),
        "--n-startup-trials",
        str(max(1, trials // 3)),
        "--seed",
        str(seed),
        "--study-checkpoint-dir",
        str(work / "checkpoints"),
        "--export-strategy",
        "merge",
        "--max-response-length",
        "32",
        "--batch-size",
        "16",
    ]
    for key, path in files.items():
        cmd += [f"--{key}-prompts.dataset", str(path)]
    env = {**os.environ, "HERETIC_OUT": str(out), "HERETIC_KL_MAX": "0.05", "PYTHONUNBUFFERED": "1"}
    started = time.time()
    with open(work / "heretic.log", "w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"heretic failed (exit {proc.returncode}); see {work / 'heretic.log'}")
    version = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('heretic-llm'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "command": " ".join(cmd),
        "heretic_version": version,
        "steer_commit": commit,
        "trials": trials,
        "seed": seed,
        "wall_time_s": round(wall, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
        "choice": json.loads((out / "heretic_choice.json").read_text()),
        "model": str(out),
    }


def metric(comparison: dict, side: str, suite: str, name: str):
    m = comparison.get(side, {}).get(suite, {}).get("metrics", {}).get(name)
    return None if m is None else m["value"]


def table(heretic: dict, steer: dict | None, h_run: dict, s_run: dict | None) -> str:
    fmt = lambda v, name: "-" if v is None else (f"{v:.4f}" if "KL" in name else f"{100 * v:.1f}%")  # noqa: E731
    lines = ["| metric (held-out test split) | base | heretic | steer --keep-safety |", "|---|---:|---:|---:|"]
    for name, suite, key in ROWS:
        lines.append(
            f"| {name} | {fmt(metric(heretic, 'base', suite, key), name)} | "
            f"{fmt(metric(heretic, 'edited', suite, key), name)} | "
            f"{fmt(metric(steer, 'edited', suite, key), name) if steer else '-'} |"
        )
    t_s = f"{s_run['wall_time_s'] / 60:.1f} min" if s_run else "-"
    lines.append(f"| wall time (search + edit + save) | - | {h_run['wall_time_s'] / 60:.1f} min | {t_s} |")
    r_s = f"{s_run['peak_rss_gb']:.1f} GB" if s_run and "peak_rss_gb" in s_run else "-"
    lines.append(f"| peak RSS | - | {h_run['peak_rss_gb']:.1f} GB | {r_s} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heretic-python", help="python of the virtual environment heretic-llm is installed in")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument(
        "--table-only",
        action="store_true",
        help="rebuild table.md from the saved heretic run and results/archive/targeted-embedded-2026-11-22-7c5c9b4 "
        "(no heretic, no evaluation)",
    )
    ap.add_argument(
        "--run-only",
        type=Path,
        metavar="DIR",
        help="run heretic only: its model and heretic_run.json under DIR, no evaluation (the side-by-side's route)",
    )
    args = ap.parse_args()
    from steer.model.load import embedded_checkpoint

    work, dest = args.run_only or ROOT / "runs" / "heretic", ROOT / "results" / "heretic-compare"
    work.mkdir(parents=True, exist_ok=True)
    if not args.table_only and not args.heretic_python:
        ap.error("--heretic-python is required unless --table-only")
    if args.table_only:
        h_run = json.loads((dest / "heretic_run.json").read_text())
    else:
        h_run = run_heretic(
            args.heretic_python, embedded_checkpoint(), write_prompts(work / "prompts"), work, args.trials, args.seed
        )
        if args.run_only:
            h_run["log_tail"] = (work / "heretic.log").read_text(errors="replace")[-3000:]
            (work / "heretic_run.json").write_text(json.dumps(h_run, indent=2) + "\n")
            return
        subprocess.run(
            [
                "steer",
                "compare",
                "embedded",
                h_run["model"],
                "--suite",
                SUITES,
                "--data-dir",
                args.data_dir,
                "--batch-size",
                "16",
                "--seed",
                str(args.seed),
                "--out",
                str(dest / "heretic"),
                "--force",
            ],
            cwd=ROOT,
            check=True,
        )
        h_run["log_tail"] = (work / "heretic.log").read_text(errors="replace")[-3000:]
        (dest / "heretic_run.json").write_text(json.dumps(h_run, indent=2) + "\n")
    heretic = json.loads((dest / "heretic" / "comparison.json").read_text())
    s_dir = ROOT / "results/archive/targeted-embedded-2026-11-22-7c5c9b4"
    steer = (
        json.loads((s_dir / "compare" / "comparison.json").read_text())
        if (s_dir / "compare" / "comparison.json").exists()
        else None
    )
    s_run = json.loads((s_dir / "run.json").read_text()) if (s_dir / "run.json").exists() else None
    md = table(heretic, steer, h_run, s_run)
    (dest / "table.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
