"""Save the committed targeted edit plus a learned readout as a checkpoint, for `steer compare`.

    python experiments/readout_checkpoint.py --config kl_tokens=8 --out runs/readout [--force]

Rebuilds the edit recorded in results/archive/targeted-embedded-2026-11-22-7c5c9b4/ (that of the
2026-11-22 run at 7c5c9b4), trains a readout (steer.targeted.readout) with the --config settings
(experiments/readout_probe.py's syntax; deterministic, so the same readout as the probe's row),
scales it back to the largest fraction that meets the search's constraints on the validation split
(readout.fit_scale), bakes it into the weights and saves a Hugging Face checkpoint with
`readout_run.json` (settings, fraction, fits, commit). The held-out test split is then measured by
`steer compare`, outside this script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import torch
from readout_probe import parse
from targeted_setup import ROOT, prepared

from steer.checkpoint.save import atomic_dir, check_output, save_checkpoint, write_json
from steer.edit.rank1 import bake, scaled
from steer.model.load import checkpoint_hash
from steer.targeted.contrasts import rebuild, recorded_edit
from steer.targeted.readout import SCALES, continuations, fit_scale, train_readout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="", help="ReadoutSettings fields, e.g. kl_tokens=8 (default: the defaults)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--scale",
        type=float,
        help="bake this fraction of the readout instead of the largest one fit_scale "
        "finds feasible (the fits are recorded either way)",
    )
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    check_output(args.out, args.force)
    t0 = time.time()
    s = parse(args.config)
    loaded, ts, prep = prepared()
    model, tok = loaded.model, loaded.tokenizer
    cont = (
        continuations(model, tok, prep.groups["harmless"].texts, s.kl_tokens, ts.batch_size)
        if s.kl_tokens > 1
        else None
    )
    contrasts = ROOT / "results/archive/targeted-embedded-2026-11-22-7c5c9b4/contrasts.safetensors"
    params = rebuild(model, contrasts)
    r = recorded_edit(contrasts)[0][0].float()
    readout, history = train_readout(
        model,
        tok,
        prep.groups["sensitive"],
        prep.groups["harmful"],
        prep.groups["harmless"],
        r,
        prep.val.refusal_tokens,
        s,
        cont=cont,
    )
    feasible, fits = fit_scale(
        model, tok, r, readout, prep.val, prep.keep_floor, ts.kl_max, scales=SCALES + (0.0,), batch_size=ts.batch_size
    )
    scale = feasible if args.scale is None else args.scale
    bake(model, r, scaled(readout, scale))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    with atomic_dir(args.out, args.force) as tmp:
        save_checkpoint(model, tok, tmp)
        write_json(
            tmp / "readout_run.json",
            {
                "command": f"python experiments/readout_checkpoint.py --config '{args.config}'"
                + (f" --scale {args.scale}" if args.scale is not None else "")
                + f" --out {args.out}",
                "commit": commit,
                "model": loaded.source,
                "seed": ts.seed,
                "edit": params.to_dict(),
                "readout": asdict(s),
                "scale": scale,
                "feasible_scale": feasible,
                "fits": fits,
                "history": history,
                "versions": {"torch": torch.__version__},
                "output_sha256": checkpoint_hash(tmp),
                "elapsed_s": round(time.time() - t0),
            },
        )
    print(json.dumps({"scale": scale, "feasible_scale": feasible, "fits": fits}, indent=1))


if __name__ == "__main__":
    main()
