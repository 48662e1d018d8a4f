"""Produce results/targeted-embedded/: `steer abliterate --keep-safety` on the embedded model,
then `steer compare` of base vs edited on the held-out test split (judged suites, XSTest, KL and
MMLU zero-shot on the same 2,850-question stratified subset as results/compare-embedded/).

    python experiments/targeted_embedded.py [--no-compare] [--dest results/DIR] [--no-mmlu]
        [extra steer abliterate flags]

The targeted run itself is timed (wall, peak RSS of the child) because the issue's budget is
30 minutes on the 2-core machine; the comparison is evidence, not part of that budget. The
timed run gets an empty evaluation cache (STEER_EVAL_CACHE in a temporary folder) and a new
search journal (--study in that folder, unless given) so that its base-model evaluation and its
search are computed, as on a fresh machine (the 2026-12-01 run at 56fa5db, before this, resumed
the journal the run at f62f958 had left with the same search settings); the embedded model's converted
checkpoint (about 45 s on first use) is taken from the cache. --no-mmlu leaves MMLU out of the
comparison (run `steer eval --suite mmlu` on the edited side separately; an hour less on 2 cores).
The checkpoint goes to runs/targeted (not committed: 2.5 GB); reports, plots, contrasts and
the manifest are copied into results/ with run.json (command, time, machine, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = (
    "report.md",
    "report.json",
    "cosines.png",
    "pareto.png",
    "contrasts.safetensors",
    "contrasts.json",
    "steer_manifest.json",
)
SUITES = "censorship,refusal,xstest,kl"
MMLU = ["--limit", "mmlu=2850"]
COMPARE = ["--data-dir", "../shared/data", "--batch-size", "16", "--seed", "0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-compare", action="store_true")
    ap.add_argument("--no-mmlu", action="store_true")
    ap.add_argument("--dest", default="results/targeted-embedded")
    opts, args = ap.parse_known_args()
    run_dir, dest = ROOT / "runs" / "targeted", ROOT / opts.dest
    run_dir.parent.mkdir(exist_ok=True)
    command = ["steer", "abliterate", "--keep-safety", "--out", "runs/targeted", "--force"] + args
    started = time.time()
    with tempfile.TemporaryDirectory() as cold:  # no cached evaluation, no search journal to resume
        study = [] if "--study" in args else ["--study", str(Path(cold) / "search.journal")]
        subprocess.run(command + study, cwd=ROOT, check=True, env={**os.environ, "STEER_EVAL_CACHE": cold})
    wall = time.time() - started
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, dest / name)
    import torch
    import transformers

    info = {
        "command": " ".join(command),
        "made_by": "python experiments/targeted_embedded.py " + " ".join(sys.argv[1:]),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "wall_time_s": round(wall, 1),
        "peak_rss_gb": round(peak_gb, 2),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "output_sha256": json.loads((run_dir / "steer_manifest.json").read_text())["output_sha256"],
    }
    # written now and again after the comparison, so the run's own record survives an interrupted compare
    (dest / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    if not opts.no_compare:
        suites = ["--suite", SUITES] if opts.no_mmlu else ["--suite", SUITES + ",mmlu", *MMLU]
        compare = [
            "steer",
            "compare",
            "embedded",
            "runs/targeted",
            *suites,
            *COMPARE,
            "--out",
            f"{opts.dest}/compare",
            "--force",
        ]
        subprocess.run(compare, cwd=ROOT, check=True)
        info["compare_command"] = " ".join(compare)
        (dest / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
