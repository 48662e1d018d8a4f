"""Shared set-up of the targeted exploration scripts (component_strengths.py, optimize_variants.py, near_refusal.py,
readout_probe.py, readout_checkpoint.py)."""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load

from steer.model.load import Loaded, load_model
from steer.targeted.prepare import Prepared, prepare
from steer.targeted.settings import TargetedSettings

ROOT = Path(__file__).resolve().parents[1]
# the commits whose contrasts file holds these runs' directions (the 2026-11-22 runs at 6c51148 and f896339; keys
# are their old work-period names, docs/history.md); later runs replaced those files
RUNS = {"session6": "e3605b1", "session8": "7c5c9b4"}


def head_commit() -> str:
    """The short hash of the checkout's HEAD (what a run records as its commit)."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def run_name(commit: str | None = None) -> str:
    """DATE-COMMIT, the name of a new run's files in a results folder that keeps several runs side by side
    (results/README.md): today's date (UTC) and HEAD's short hash."""
    return f"{datetime.now(timezone.utc):%Y-%m-%d}-{commit or head_commit()}"


def prepared() -> tuple[Loaded, TargetedSettings, Prepared]:
    """The embedded model, default targeted settings without optimization, and what prepare() measures."""
    loaded, ts = load_model(None), TargetedSettings(optimize_steps=0)
    torch.manual_seed(ts.seed)
    return loaded, ts, prepare(loaded.model, loaded.tokenizer, ts)


def committed_direction(run: str = "session6") -> torch.Tensor:
    """The optimized direction [d] (float64) of a committed targeted run (a key of RUNS), read from git history."""
    path = f"{RUNS[run]}:results/targeted-embedded/contrasts.safetensors"
    got = subprocess.run(["git", "show", path], cwd=ROOT, capture_output=True)
    if got.returncode != 0:
        raise SystemExit(f"cannot read {path} from git (a clone with history is needed): {got.stderr.decode().strip()}")
    return load(got.stdout)["optimized"].double()
