"""Produce results/abliterate-embedded/: the default `steer abliterate` on the embedded model.

    python experiments/abliterate_embedded.py            # about 10 minutes on 2 CPU cores

Runs the CLI exactly as a user would (into runs/, not committed: the checkpoint is 2.5 GB),
times it, and copies the report, directions, plot and manifest into results/ together with
run.json (command, wall time, machine, versions). The manifest's output_sha256 identifies
the weights; run it twice to check they are byte-identical.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = (
    "report.md",
    "report.json",
    "selection.png",
    "directions.safetensors",
    "directions.json",
    "steer_manifest.json",
)


def main(name: str = "abliterate-embedded", model: list[str] | None = None) -> None:
    """Run `steer abliterate [MODEL] ARGS` into runs/NAME and copy what it wrote to results/NAME."""
    run_dir = ROOT / "runs" / name
    run_dir.parent.mkdir(exist_ok=True)
    command = ["steer", "abliterate", *(model or []), "--out", str(run_dir.relative_to(ROOT)), "--force"]
    command += sys.argv[1:]
    started = time.time()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = time.time() - started
    dest = ROOT / "results" / name
    dest.mkdir(parents=True, exist_ok=True)
    for file in FILES:
        shutil.copy2(run_dir / file, dest / file)
    import torch
    import transformers

    from steer.model.load import sha256_file

    info = {
        "command": " ".join(command),
        "made_by": f"python experiments/{name.replace('-', '_')}.py " + " ".join(sys.argv[1:]),
        "wall_time_s": round(wall, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),  # the child's, if OMP_NUM_THREADS is inherited
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "output_sha256": json.loads((run_dir / "steer_manifest.json").read_text())["output_sha256"],
        "model_safetensors_sha256": sha256_file(run_dir / "model.safetensors"),
    }
    (dest / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
