"""Exploration (not a result): how far full-strength single-direction edits from each contrast go.

    python experiments/targeted_probe.py [--layers 6,9,12,15,18] [--judge-top 3]

For every contrast (censorship = sensitive vs controls, versus_harmless) and layer, the
direction made orthogonal to the harmful-refusal direction (keep_safety), projected off the
harmless mean, removed at strength 1 everywhere: the search's no-decoding scores (target and
keep refusal scores, first-token KL) on the validation split, then generation + judge on the
best few. Tells whether the search space contains edits that reach the targets at all.
"""

from __future__ import annotations

import argparse
import json

from steer.edit.preview import preview
from steer.model.load import load_model
from steer.targeted.confirm import judged_rates
from steer.targeted.prepare import prepare
from steer.targeted.search import EditParams, edit_basis, score
from steer.targeted.settings import TargetedSettings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="6,9,12,15,18")
    ap.add_argument("--judge-top", type=int, default=3)
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--keep-layers", default="same", choices=("same", "all"))
    args = ap.parse_args()
    loaded = load_model(None)
    m, tok, ts = loaded.model, loaded.tokenizer, TargetedSettings()
    prep = prepare(m, tok, ts)
    inputs = prep.contrasts.search_inputs(True, args.keep_layers)
    print("base", json.dumps(judged_rates(m, tok, prep.val_prompts, ts)), "keep floor", prep.keep_floor, flush=True)
    rows = []
    for contrast in ("censorship", "versus_harmless"):
        for layer in map(int, args.layers.split(",")):
            s = args.strength
            p = EditParams(index=layer, position=-1, contrast=contrast, attn=_flat(s), mlp=_flat(s), embed=s)
            r = score(m, tok, edit_basis(inputs, p), p, prep.val, ts.batch_size)
            rows.append((p, r))
            print(contrast, layer, {k: round(v, 4) for k, v in r.items()}, flush=True)
    best = sorted([x for x in rows if x[1]["kl"] < 0.15], key=lambda x: x[1]["target_score"])[: args.judge_top]
    for p, r in best:
        with preview(m, p.edit(edit_basis(inputs, p))):
            print("judged", p.contrast, p.index, json.dumps(judged_rates(m, tok, prep.val_prompts, ts)), flush=True)


def _flat(s: float):
    from steer.edit.project import Profile

    return Profile(peak=s, floor=s)


if __name__ == "__main__":
    main()
