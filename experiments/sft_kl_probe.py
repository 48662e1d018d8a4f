"""Where an SFT model's first-token KL on harmless prompts comes from: a sharper distribution or a different top token?

    python experiments/sft_kl_probe.py runs/sft --split val --out results/sft-baseline/kl-probe-NAME.json

Also the first tokens whose probability, averaged over the prompts, rose or fell most (where the mass went).
For each harmless prompt of the split (the `kl` suite's prompts): the first answer token's distribution of the base
model and of MODEL; entropy of each, KL(base || model), whether the top token is the same, and the part of the KL
that comes from the base's top token (p_base(top) * log(p_base(top) / p_model(top))). Same chat template as the kl
suite; no decoding.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

from steer.model.collect import batched_last_logits
from steer.model.load import load_model
from steer.prompts import chat_texts, load_prompts


def entropy(lp: torch.Tensor) -> float:
    return float(-(lp.exp() * lp).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--base", default="embedded")
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    prompts = load_prompts("harmless", args.split)
    rows = {}
    for side, source in (("base", args.base), ("model", args.model)):
        loaded = load_model(source)
        logits = batched_last_logits(
            loaded.model, loaded.tokenizer, chat_texts(loaded.tokenizer, [p.text for p in prompts])
        )
        rows[side] = torch.log_softmax(logits.double(), -1)  # [n, V]
        tokenizer = loaded.tokenizer
        del loaded
    items = []
    for p, b, m in zip(prompts, rows["base"], rows["model"], strict=True):
        top = int(b.argmax())
        kl = float((b.exp() * (b - m)).sum())
        items.append({
            "id": p.id, "kl": kl, "kl_from_base_top": float(b[top].exp() * (b[top] - m[top])),
            "entropy_base": entropy(b), "entropy_model": entropy(m), "same_top": top == int(m.argmax()),
            "p_base_top": float(b[top].exp()), "p_model_at_base_top": float(m[top].exp()),
            "top_base": tokenizer.decode([top]), "top_model": tokenizer.decode([int(m.argmax())]),
        })  # fmt: skip
    mean = lambda k: sum(float(i[k]) for i in items) / len(items)  # noqa: E731
    summary = {k: round(mean(k), 4) for k in items[0] if k not in ("id", "top_base", "top_model")}
    moved = [i for i in items if not i["same_top"]]
    summary["kl_share_where_top_moved"] = round(sum(i["kl"] for i in moved) / sum(i["kl"] for i in items), 4)
    summary["top_moved_to"] = dict(collections.Counter(i["top_model"] for i in moved).most_common(8))
    # where the mass went: first tokens whose mean probability over the prompts rose or fell most
    shift = (rows["model"].exp() - rows["base"].exp()).mean(0)
    for name, order in (("gained", shift.topk(10).indices), ("lost", (-shift).topk(10).indices)):
        summary[f"mass_{name}"] = {tokenizer.decode([int(t)]): round(float(shift[t]), 4) for t in order}
    out = {
        "model": args.model,
        "base": args.base,
        "split": args.split,
        "n": len(items),
        "mean": summary,
        "items": items,
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
