"""Probe: a learned readout (steer.targeted.readout) on top of the committed targeted edit, validation split only.

    python experiments/readout_probe.py [--config lr=1e-4,l2=1,steps=32 ...] [--out results/readout-probe]
        [--name DATE-COMMIT]

Rebuilds the edit recorded in results/archive/targeted-embedded-2026-11-22-7c5c9b4/ (the edit of the
2026-11-22 run at 7c5c9b4, as `steer edit` would), then for each --config trains a readout on the
train splits (steer.targeted.optimize's loss) and measures on the validation split: the search's
no-decoding scores (target score, share of refused prompts above NEAR_REFUSAL, harmful score,
first-token KL and its 95% bound), the judged greedy answers the confirmation step uses (censorship
EN / ZH, harmful refusal), and the largest fraction of the readout that meets the search's
constraints (readout.fit_scale). The edit alone is measured the same way first. Nothing here looks
at the test split. An empty --config means ReadoutSettings' defaults. Writes NAME.json / NAME.md to
--out after every configuration, NAME by default today's date (UTC) and the commit, as
results/README.md names runs.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from targeted_setup import ROOT, head_commit, prepared, run_name

from steer.edit.preview import Edit, preview
from steer.model.collect import batched_last_logits
from steer.targeted.confirm import judged_rates
from steer.targeted.contrasts import rebuild, recorded_edit
from steer.targeted.readout import ReadoutSettings, continuations, fit_scale, train_readout
from steer.targeted.search import metrics


def parse(spec: str) -> ReadoutSettings:
    """ "lr=1e-4,l2=1,components=attn+mlp,loss.kl_weight=80" -> ReadoutSettings (values cast to each field's type)."""
    kv = dict(item.split("=", 1) for item in spec.split(",") if item)
    s = ReadoutSettings()
    for k, v in kv.items():
        obj, name = (s.loss, k[5:]) if k.startswith("loss.") else (s, k)
        old = getattr(obj, name)  # AttributeError for an unknown field
        if isinstance(old, tuple):
            value = tuple(v.split("+"))
        elif isinstance(old, int) and not isinstance(old, bool):
            value = int(float(v))  # "24" or "24.0"
        else:
            value = type(old)(v)
        setattr(obj, name, value)
    return s


def measure(model, tok, prep, ts) -> dict:
    v = prep.val
    m = metrics(batched_last_logits(model, tok, v.target + v.keep + v.harmless, ts.batch_size), v)
    return {**m, **judged_rates(model, tok, prep.val_prompts, ts)}


def meta_of(args, loaded, ts, params, t0: float) -> dict:
    commit = head_commit()
    return {
        "command": "python experiments/readout_probe.py " + " ".join(f"--config '{c}'" for c in args.config),
        "commit": commit,
        "model": loaded.source,
        "split": "val",
        "seed": ts.seed,
        "edit": params.to_dict(),
        "versions": {"torch": torch.__version__},
        "elapsed_s": round(time.time() - t0),
    }


def write(out: Path, name: str, meta: dict, rows: list[dict]) -> str:
    """NAME.json and NAME.md (rewritten after every configuration, so a stopped run keeps what it measured)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    keys = [
        "feasible_scale",
        "target_score",
        "target_high",
        "keep_score",
        "kl",
        "kl_ucb",
        "censorship/sensitive/en",
        "censorship/sensitive/zh",
        "refusal/harmful",
    ]
    lines = ["| config | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    lines += [
        f"| {row['config'] or '(defaults)'} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |" for row in rows
    ]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", action="append", default=[], help="ReadoutSettings fields, e.g. lr=1e-4,l2=1,steps=32")
    ap.add_argument("--out", default="results/readout-probe")
    ap.add_argument("--name", default=None, help="file name stem (default: DATE-COMMIT of this run)")
    args = ap.parse_args()
    name = args.name or run_name()
    t0 = time.time()
    loaded, ts, prep = prepared()
    model, tok = loaded.model, loaded.tokenizer
    settings = [parse(spec) for spec in args.config]
    lengths = {s.kl_tokens for s in settings if s.kl_tokens > 1}
    if len(lengths) > 1:
        raise SystemExit("configs with kl_tokens > 1 must share one length")
    # the base model's answers to the harmless train prompts, before the edit is applied
    cont = continuations(model, tok, prep.groups["harmless"].texts, lengths.pop(), ts.batch_size) if lengths else None
    contrasts = ROOT / "results/archive/targeted-embedded-2026-11-22-7c5c9b4/contrasts.safetensors"
    params = rebuild(model, contrasts)
    r = recorded_edit(contrasts)[0][0].float()
    rows = [{"config": "edit alone", "feasible_scale": 0.0, **measure(model, tok, prep, ts)}]
    print(json.dumps(rows[-1]))
    for spec, s in zip(args.config, settings):
        start = time.time()
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
        with preview(model, Edit(r, project=False, readout=readout)):
            got = measure(model, tok, prep, ts)
        # how far the search's constraints (harmful floor, KL bound) would let the readout go
        scale, fits = fit_scale(model, tok, r, readout, prep.val, prep.keep_floor, ts.kl_max, batch_size=ts.batch_size)
        rows.append(
            {
                "config": spec,
                "settings": asdict(s),
                "train_s": round(time.time() - start, 1),
                **got,
                "feasible_scale": scale,
                "fits": fits,
                "history": history,
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("history", "settings")}))
        write(ROOT / args.out, name, meta_of(args, loaded, ts, params, t0), rows)
    print(write(ROOT / args.out, name, meta_of(args, loaded, ts, params, t0), rows))


if __name__ == "__main__":
    main()
