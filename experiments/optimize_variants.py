"""Exploration: which steer.targeted.optimize settings give a direction with the best no-decoding trade-off.

    python experiments/optimize_variants.py --set NAME [--only VARIANTS] [--out results/optimize-variants]
        [--name DATE-COMMIT]

Prepares once (contrasts, train groups, validation split: the same as `steer abliterate
--keep-safety`), then trains the optimized direction with each variant below and scores each at the
flat (attention, MLP) strength pairs its set lists, on the validation split, as the search would: target refusal score
(lower is better), harmful refusal score (must stay >= the floor), first-token KL on the harmless
prompts the base model answers (what the search bounds) and on a seeded sample of all harmless
validation prompts (what the evaluation's KL suite measures: it includes the few the base
refuses), and the share of target prompts scoring above steer.targeted.search.NEAR_REFUSAL (greedy answers
refuse above it). The variants "session6" and "session8" are the directions of the committed
runs at 6c51148 and f896339 (2026-11-22; their contrasts files as committed in e3605b1 / 7c5c9b4, read
from git history; no training); each set scores one of them as its reference. Set and variant names
keep the old work-period numbers; docs/history.md maps them to dates and commits. Writes variants-NAME.json and
variants-NAME.md to --out, NAME by default today's date (UTC) and the commit, as results/README.md names runs.
No generation, no judge: this chooses what to run in full, it is not a result about censorship rates.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace

import torch
from targeted_setup import ROOT, committed_direction, head_commit, prepared, run_name

from steer.edit.project import Profile
from steer.model.collect import batched_last_logits
from steer.prompts import chat_texts, load_prompts, seeded_sample
from steer.targeted.optimize import OptimizeSettings, optimize_direction
from steer.targeted.search import NEAR_REFUSAL, EditParams, ValData, edit_basis, score

BASE = OptimizeSettings(steps=32)  # the default until f896339 (2026-11-22); the sets below vary it
# each set: the variants trained and the (attention, MLP) strength pairs every direction is scored at
SETS = {
    "session7": (
        {
            "average": replace(BASE, average=True),
            "average+kl80+keep4": replace(BASE, average=True, kl_weight=80.0, keep_weight=4.0),
            "average+batch1.5x,22steps": replace(
                BASE, average=True, steps=22, target_batch=12, keep_batch=9, harmless_batch=18
            ),
        },
        ((1.0, 1.0), (0.9, 0.9), (0.8, 0.8)),
    ),
    # f896339 (2026-11-22): more steps, and training under the strengths the 83993f7 run's search chose
    # (attention ~1.4, MLP ~0.65)
    "session8": (
        {
            "steps48": replace(BASE, steps=48),
            "train-attn1.4-mlp0.7": replace(BASE, attn=1.4, mlp=0.7),
        },
        ((1.0, 1.0), (1.2, 0.8), (1.2, 0.7), (1.4, 0.7), (1.4, 0.6), (1.6, 0.7)),
    ),
    # 3d85935 (2026-11-22): a target hinge that pulls harder on the prompts still near refusal (OptimizeSettings.power)
    "session9": (
        {
            "steps48-power2": replace(BASE, steps=48, power=2.0),
            "steps48-power3": replace(BASE, steps=48, power=3.0),
        },
        ((1.0, 1.0), (1.2, 0.8), (1.2, 0.7), (1.4, 0.7), (1.4, 0.6), (1.6, 0.7)),
    ),
}
SETS["session9-rank2"] = (
    {"steps48-rank2": replace(BASE, steps=48)},
    ((1.0, 1.0), (1.0, 0.8), (1.0, 0.6), (1.2, 0.8), (1.2, 0.7), (1.2, 0.5), (1.4, 0.7), (1.4, 0.6)),
)
REFERENCE = {"session7": "session6", "session8": "session6", "session9": "session8", "session9-rank2": "session8"}
# variants that optimize a subspace: its rank (the start: the censorship direction, then its principal components)
RANK = {"steps48-rank2": 2}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/optimize-variants")
    ap.add_argument("--set", default="session7", choices=sorted(SETS), help="which variants and strength pairs")
    ap.add_argument("--only", default=None, help="comma-separated variant names (default: all of the set)")
    ap.add_argument("--name", default=None, help="file name stem after variants- (default: DATE-COMMIT of this run)")
    args = ap.parse_args()
    loaded, ts, prep = prepared()
    m, tok, c = loaded.model, loaded.tokenizer, prep.contrasts
    layer = round(0.6 * (c.censorship.shape[0] - 1))
    from steer.locate.directions import remove_span

    init = remove_span(c.censorship, c.harmless_mean)[layer, -1]
    span = c.harmful[:, -1]
    harmless = load_prompts("harmless", "val")
    pick = seeded_sample(list(range(len(harmless))), 2 * ts.n_val, ts.seed)
    texts = chat_texts(tok, [harmless[i].text for i in pick])
    all_harmless = ValData(
        [],
        [],
        texts,
        prep.val.base_target[:0],
        prep.val.base_keep[:0],
        batched_last_logits(m, tok, texts, ts.batch_size),
        prep.val.refusal_tokens,
    )
    ref = REFERENCE[args.set]
    directions = {ref: committed_direction(ref)}
    rows = []
    variants, pairs = SETS[args.set]
    names = args.only.split(",") if args.only else list(variants)
    for name in [ref, *names]:
        started = time.time()
        if name != ref:
            start = torch.cat([init[None], c.components[layer, -1, : RANK.get(name, 1) - 1].double()]).squeeze(0)
            directions[name], _ = optimize_direction(
                m,
                tok,
                prep.groups["sensitive"],
                prep.groups["harmful"],
                prep.groups["harmless"],
                start,
                prep.val.refusal_tokens,
                span,
                variants[name],
            )
        train_s = time.time() - started
        if directions[name].dim() == 1:
            c.optimized = directions[name]
        inputs = c.search_inputs(ts.keep_safety, ts.keep_layers)
        for a, mlp in pairs:
            flat = lambda x: Profile(
                peak=x, center=(c.censorship.shape[0] - 1) / 2, width=float(c.censorship.shape[0]), floor=x
            )
            # the first set (82da0ea) scaled the embedding with the rest; later sets keep it at 1 as the search's
            # seeds do
            p = EditParams(
                index=layer,
                position=-1,
                contrast="optimized",
                attn=flat(a),
                mlp=flat(mlp),
                embed=a if args.set == "session7" else 1.0,
            )
            basis = (
                directions[name] if directions[name].dim() > 1 else edit_basis(inputs, p)
            )  # a subspace is already off the span
            r = score(m, tok, basis, p, prep.val, ts.batch_size)
            r_all = score(m, tok, basis, p, all_harmless, ts.batch_size)
            row = {
                "variant": name,
                "attn": a,
                "mlp": mlp,
                **r,
                "kl_all": r_all["kl"],
                "kl_all_ucb": r_all["kl_ucb"],
                "feasible": r["keep_score"] >= prep.keep_floor,
                "train_s": round(train_s, 1),
                # for a subspace: the norm of the reference direction's projection onto it
                "cos_ref": float((directions[name] @ directions[ref]).norm()),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    commit = head_commit()
    stem = f"variants-{args.name or run_name(commit)}"
    meta = {
        "command": "python experiments/optimize_variants.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v),
        "commit": commit,
        "model": loaded.source,
        "keep_floor": prep.keep_floor,
        "split": "val",
        "seed": ts.seed,
        "set": args.set,
        "variants": {k: asdict(variants[k]) for k in names},
        "versions": {"torch": torch.__version__},
    }
    (out / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"| variant | attention, MLP | target score | above {NEAR_REFUSAL:g} | "
        f"harmful score (floor {prep.keep_floor:.2f}) | "
        f"KL answered (95% bound) | KL all harmless (95% bound) | cos to {ref} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['variant']} | {r['attn']}, {r['mlp']} | {r['target_score']:.2f} | {r['target_high']:.3f} | "
        f"{r['keep_score']:.2f}{'' if r['feasible'] else ' (under)'} | "
        f"{r['kl']:.4f} ({r['kl_ucb']:.4f}) | {r['kl_all']:.4f} ({r['kl_all_ucb']:.4f}) | {r['cos_ref']:.3f} |"
        for r in rows
    ]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
