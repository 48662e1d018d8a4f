"""Exploration: flat per-component strengths (attention, MLP, embedding) of the optimized direction.

    python experiments/component_strengths.py [--out results/component-strengths]

The searched profiles have 9 parameters; three 32-trial-or-fewer TPE searches (2026-11-22, docs/history.md)
found different best edits. This scores a small grid of flat strengths per component for the
direction of the run at 6c51148 (its contrasts file as committed in e3605b1, read from git history), on the
validation split, as the search scores a trial: target and harmful refusal scores, first-token KL
(answered harmless prompts) and its 95% upper bound. No generation: it tells the search where to
start, not what the censorship rates are.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess

import torch
from targeted_setup import ROOT, committed_direction, prepared

from steer.edit.project import Profile
from steer.targeted.search import EditParams, edit_basis, score

GRID = {"attn": (1.0, 1.1), "mlp": (0.6, 0.75, 0.9), "embed": (0.7, 1.0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/component-strengths")
    args = ap.parse_args()
    loaded, ts, prep = prepared()
    m, tok, c = loaded.model, loaded.tokenizer, prep.contrasts
    c.optimized = committed_direction()
    inputs = c.search_inputs(ts.keep_safety, ts.keep_layers, "optimized")
    n = c.censorship.shape[0]
    flat = lambda s: Profile(peak=s, center=(n - 1) / 2, width=float(n), floor=s)  # noqa: E731
    rows = []
    for a, mlp, e in itertools.product(*GRID.values()):
        p = EditParams(index=0.5 * (n - 1), position=-1, contrast="optimized", attn=flat(a), mlp=flat(mlp), embed=e)
        r = score(m, tok, edit_basis(inputs, p), p, prep.val, ts.batch_size)
        row = {
            "attn": a,
            "mlp": mlp,
            "embed": e,
            **r,
            "feasible": r["keep_score"] >= prep.keep_floor and r["kl_ucb"] <= ts.kl_max,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    meta = {
        "command": f"python experiments/component_strengths.py --out {args.out}",
        "commit": commit,
        "model": loaded.source,
        "split": "val",
        "seed": ts.seed,
        "keep_floor": prep.keep_floor,
        "kl_max": ts.kl_max,
        "versions": {"torch": torch.__version__},
    }
    (out / "grid.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"| attention | MLP | embedding | target score | harmful score (floor {prep.keep_floor:.2f}) | "
        "KL (95% bound) | feasible |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['attn']} | {r['mlp']} | {r['embed']} | {r['target_score']:.2f} | {r['keep_score']:.2f} | "
        f"{r['kl']:.4f} ({r['kl_ucb']:.4f}) | "
        f"{'yes' if r['feasible'] else 'no'} |"
        for r in rows
    ]
    (out / "grid.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
