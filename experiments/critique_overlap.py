"""How much the refusal of critique requests shares the harmful-refusal direction, beside factual questions' (issue 23).

    python experiments/critique_overlap.py --out results/critique-overlap

`--keep-safety` removes a censorship direction made orthogonal to the harmful-refusal direction, and must keep harmful
refusals. If requests to criticise China's leaders are refused along nearly the harmful direction, no edit that keeps
safety refusals can remove them; if along the factual questions' direction, the targeted mode should reach them.
On the train splits only (no decision uses validation or test here): the base model's residual stream before each
layer at the last prompt token, difference of means against the harmless prompts, for the English factual questions
the base refuses (refusal score > 0), the English critique requests (all; and those greedy decoding refuses), and the
harmful requests it refuses. Per layer: cosines between the three, and the share of each direction's norm left after
removing the harmful direction (what an edit orthogonal to it can act on). Writes overlap.json, table.md, overlap.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from steer.locate.directions import remove_span
from steer.locate.scores import greedy_refused, refusal_tokens, split_by_score
from steer.model.collect import batched_last_logits, residual_means
from steer.model.load import COMPUTE_DTYPES, load_model
from steer.prompts import chat_texts, load_prompts


def cos(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per-layer cosine of a, b [L, d]."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).tolist()


def kept_share(d: torch.Tensor, harm: torch.Tensor) -> list[float]:
    """Per layer, ||d with the harmful direction removed|| / ||d|| for d, harm [L, d]."""
    return (remove_span(d, harm.unsqueeze(-2)).norm(dim=-1) / d.norm(dim=-1)).tolist()


def prompt_sets(model, tok, batch: int, seed: int) -> tuple[dict[str, list[str]], list[str]]:
    """Chat texts of the sets compared (train splits), and the refusal tokens used to pick the refused ones."""
    texts = lambda ps: chat_texts(tok, [p.text for p in ps])  # noqa: E731
    fact, crit = texts(load_prompts("sensitive", "train", "en")), texts(load_prompts("critique", "train", "en"))
    harmful, harmless = texts(load_prompts("harmful", "train")), texts(load_prompts("harmless", "train"))
    probe = refusal_tokens(model, tok, fact, harmless, seed, batch)
    ref = probe.tokens
    pick = lambda ts, idx: [ts[i] for i in idx]  # noqa: E731
    crit_lg, harm_lg = batched_last_logits(model, tok, crit, batch), batched_last_logits(model, tok, harmful, batch)
    sets = {
        "factual (refused)": pick(fact, split_by_score(probe.target_logits, ref, True, min_keep=0)),
        "critique (all)": crit,
        "critique (greedy refused)": pick(crit, greedy_refused(crit_lg, ref, 0)),
        "harmful (refused)": pick(harmful, split_by_score(harm_lg, ref, True, min_keep=0)),
        "harmless": harmless,
    }
    return sets, [tok.decode([t]) for t in ref]


def table(out: dict, layers: list[int]) -> str:
    """Markdown rows for some layers."""
    rows = ["| layer | " + " | ".join(out["per_layer"]) + " |", "|---:|" + "---:|" * len(out["per_layer"])]
    for li in layers:
        rows.append(f"| {li} | " + " | ".join(f"{v[li]:.3f}" for v in out["per_layer"].values()) + " |")
    return "\n".join(rows) + "\n"


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, v in out["per_layer"].items():
        ax.plot(v, label=name, linestyle="--" if name.startswith("kept") else "-")
    ax.set_xlabel("layer (residual stream before it, last prompt token)")
    ax.set_ylabel("cosine / norm share")
    ax.set_title(f"Critique vs harmful refusal directions, {out['meta']['model']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--dtype", default="float32", choices=sorted(COMPUTE_DTYPES))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    start = time.perf_counter()
    loaded = load_model(args.model, dtype=COMPUTE_DTYPES[args.dtype])
    model, tok = loaded.model, loaded.tokenizer
    sets, words = prompt_sets(model, tok, args.batch_size, args.seed)
    mean = {k: residual_means(model, tok, v, 1, args.batch_size, desc=k)[:, -1] for k, v in sets.items()}
    d = {k: mean[k] - mean["harmless"] for k in sets if k != "harmless"}
    harm = d["harmful (refused)"]
    per_layer = {
        "cos factual, harmful": cos(d["factual (refused)"], harm),
        "cos critique, harmful": cos(d["critique (all)"], harm),
        "cos critique (greedy refused), harmful": cos(d["critique (greedy refused)"], harm),
        "cos critique, factual": cos(d["critique (all)"], d["factual (refused)"]),
        "kept share factual": kept_share(d["factual (refused)"], harm),
        "kept share critique": kept_share(d["critique (all)"], harm),
    }
    out = {
        "per_layer": per_layer,
        "n": {k: len(v) for k, v in sets.items()},
        "meta": {
            "model": args.model,
            "dtype": args.dtype,
            "seed": args.seed,
            "refusal_tokens": words,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "elapsed_s": round(time.perf_counter() - start, 1),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overlap.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    n_layers = len(harm)
    layers = sorted({round(f * (n_layers - 1)) for f in (0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)})
    (args.out / "table.md").write_text(table(out, layers))
    plot(out, args.out / "overlap.png")
    print(table(out, layers))
    print(json.dumps(out["n"]))


if __name__ == "__main__":
    main()
