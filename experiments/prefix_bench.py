"""Shared-prefix forward passes (steer.model.collect.left_pad(share_prefix=True)) against plain
left-padded batches, measured in one run on the embedded model.

    python experiments/prefix_bench.py --out results/prefix-bench

Chat prompts begin with the same system prompt and user header (26 tokens on Qwen2.5, about
half of each prompt): the shared path runs them once per batch and repeats their KV cache over
the rows. Three workloads of the targeted pipeline, each run both ways on the same prompts, with
the optimized edit direction of results/archive/targeted-embedded-2026-12-01-56fa5db/ (the 2026-12-01
run at 56fa5db, the default run when this was measured) hooked in as the pipeline does:
- search trial: last-position logits of the 128 validation prompts, batches of 32, no gradient;
- optimize step: one minibatch (8 sensitive, 6 harmful, 12 harmless train prompts), forward and
  backward to the direction (steer.targeted.optimize);
- readout step: 8 + 6 prompts and 24 harmless prompts teacher-forced through 8 answer tokens,
  logits at the last 8 positions, forward and backward to a readout (steer.targeted.readout).
Reports the median of --repeats timings (plain and shared interleaved), the ratio plain /
shared, and the largest logit difference between the two (float rounding).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from steer.edit.preview import Edit, preview
from steer.edit.project import Profile
from steer.edit.rank1 import zeros
from steer.model.collect import forward, left_pad
from steer.model.load import load_model
from steer.prompts import chat_texts, load_prompts
from steer.targeted.readout import continuations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/prefix-bench"))
    parser.add_argument(
        "--contrasts",
        type=Path,
        default=Path("results/archive/targeted-embedded-2026-12-01-56fa5db/contrasts.safetensors"),
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    loaded = load_model(None)
    model, tok = loaded.model, loaded.tokenizer
    r = load_file(str(args.contrasts))["optimized"].float()
    pad = tok.pad_token_id
    ids = lambda ps: tok(chat_texts(tok, [p.text for p in ps]), add_special_tokens=False)["input_ids"]  # noqa: E731
    val = ids(
        load_prompts("sensitive", "val")[:32]
        + load_prompts("harmful", "val")[:32]
        + load_prompts("harmless", "val")[:64]
    )
    mini = ids(
        load_prompts("sensitive", "train")[:8]
        + load_prompts("harmful", "train")[:6]
        + load_prompts("harmless", "train")[:12]
    )
    harmless = chat_texts(tok, [p.text for p in load_prompts("harmless", "train")[:24]])
    cont = continuations(model, tok, harmless, 8, 16)
    read_ids = mini[:14] + cont.ids
    full = {"attn": Profile(1.0, floor=1.0), "mlp": Profile(1.0, floor=1.0)}

    def search_trial(share: bool) -> torch.Tensor:
        with torch.inference_mode(), preview(model, Edit(r, profiles=full)):
            return torch.cat(
                [forward(model, left_pad(val[i : i + 32], pad, share), 1)[:, -1] for i in range(0, len(val), 32)]
            )

    def optimize_step(share: bool) -> torch.Tensor:
        v = r.clone().requires_grad_(True)
        with preview(model, Edit(v / v.norm(), profiles=full)):
            logits = forward(model, left_pad(mini, pad, share), 1)[:, -1]
        logits.float().logsumexp(-1).sum().backward()
        return logits.detach()

    def readout_step(share: bool) -> torch.Tensor:
        a = {k: t.requires_grad_(True) for k, t in zeros(model).items()}
        with preview(model, Edit(r, project=False, readout=a)):
            logits = forward(model, left_pad(read_ids, pad, share), 8)
        logits.float().logsumexp(-1).sum().backward()
        return logits.detach()

    for p in model.parameters():
        p.requires_grad_(False)
    rows = []
    for name, fn in (
        ("search trial (128 prompts)", search_trial),
        ("optimize step (26 prompts, backward)", optimize_step),
        ("readout step (38 prompts, 8 positions, backward)", readout_step),
    ):
        times: dict[bool, list[float]] = {False: [], True: []}
        outs = {}
        for _ in range(args.repeats):
            for share in (False, True):
                start = time.perf_counter()
                outs[share] = fn(share)
                times[share].append(time.perf_counter() - start)
        plain, shared = statistics.median(times[False]), statistics.median(times[True])
        diff = (outs[False].float() - outs[True].float()).abs().max().item()
        same = (outs[False].argmax(-1) == outs[True].argmax(-1)).float().mean().item()
        rows.append(
            {
                "workload": name,
                "plain_s": round(plain, 3),
                "shared_s": round(shared, 3),
                "speedup": plain / shared,
                "max_abs_logit_diff": diff,
                "same_argmax": same,
                "times": times,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    import transformers

    lengths = [len(x) for x in val]
    result = {
        "command": " ".join(sys.argv),
        "model": loaded.source,
        "repeats": args.repeats,
        "mean_prompt_tokens": sum(lengths) / len(lengths),
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Shared-prefix forward passes against plain left-padded batches\n",
        f"`{result['command']}`\n",
        f"{loaded.source} (fp32), {torch.get_num_threads()} CPU threads, torch {torch.__version__}, transformers "
        f"{transformers.__version__}; validation prompts average {result['mean_prompt_tokens']:.1f} tokens; median of "
        f"{args.repeats} interleaved repeats, both paths in the same run on the same prompts.\n",
        "| workload | plain s | shared prefix s | speed-up | max abs logit difference | same argmax |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        md.append(
            f"| {row['workload']} | {row['plain_s']:.2f} | {row['shared_s']:.2f} | {row['speedup']:.2f}x | "
            f"{row['max_abs_logit_diff']:.1e} | {row['same_argmax']:.0%} |"
        )
    (args.out / "README.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
