"""The output head on the strided slice `logits_to_keep` passes it, against the same input made contiguous
(steer.model.load.contiguous_input), per dtype, with the weight frozen as in steer's targeted mode.

    python experiments/head_bench.py --model embedded-1.5b --batch 8 --out results/head-bench

Times one head call (median of --repeats) on the model's own head weight; the ratio strided / contiguous is the
speed-up of the hook. Also times a whole forward pass at logits_to_keep=1 on --batch chat prompts with the model's
parameters frozen, and steer's shared-prefix forward (steer.model.collect.forward: the prefix once, at one row, then
the rows; the readout's, 8 answer positions), with and without the hook.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from steer.checkpoint.manifest import machine, versions
from steer.model import collect
from steer.model.collect import left_pad
from steer.model.load import COMPUTE_DTYPES, load_model
from steer.prompts import chat_texts


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def bench(model_spec: str, dtype: str, batch: int, repeats: int) -> dict:
    loaded = load_model(model_spec, dtype=COMPUTE_DTYPES[dtype])
    model, tok = loaded.model, loaded.tokenizer
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.get_output_embeddings()
    d = head.weight.shape[1]
    hidden = torch.randn(batch, 45, d, dtype=head.weight.dtype, generator=torch.Generator().manual_seed(0))
    strided = hidden[:, -1:, :]
    row = {
        "dtype": dtype,
        "head_strided_s": timed(lambda: torch.nn.functional.linear(strided, head.weight), repeats),
        "head_contiguous_s": timed(lambda: torch.nn.functional.linear(strided.contiguous(), head.weight), repeats),
    }
    texts = chat_texts(tok, [f"Tell me about the history of topic number {i} in a few words." for i in range(batch)])
    enc = tok(texts, return_tensors="pt", padding=True)
    forward = lambda: model(**enc, logits_to_keep=1, use_cache=False)  # noqa: E731
    shared = left_pad(tok(texts, add_special_tokens=False)["input_ids"], tok.pad_token_id, share_prefix=True)
    prefixed = lambda: collect.forward(model, shared, 8)  # noqa: E731  (the readout's shared-prefix forward)
    row["forward_hooked_s"] = timed(forward, repeats)
    row["shared_prefix_hooked_s"] = timed(prefixed, repeats)
    hooks = head._forward_pre_hooks.copy()
    head._forward_pre_hooks.clear()  # the model as transformers loads it
    row["forward_unhooked_s"] = timed(forward, repeats)
    row["shared_prefix_unhooked_s"] = timed(prefixed, repeats)
    head._forward_pre_hooks.update(hooks)
    row["head_ratio"] = row["head_strided_s"] / row["head_contiguous_s"]
    row["forward_ratio"] = row["forward_unhooked_s"] / row["forward_hooked_s"]
    row["shared_prefix_ratio"] = row["shared_prefix_unhooked_s"] / row["shared_prefix_hooked_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded-1.5b")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = [bench(args.model, d, args.batch, args.repeats) for d in args.dtypes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "batch": args.batch, "repeats": args.repeats, "rows": rows,
              "torch_threads": torch.get_num_threads(), "machine": machine(), "versions": versions()}  # fmt: skip
    (args.out / "head_bench.json").write_text(json.dumps(record, indent=2) + "\n")
    print("| dtype | head, strided (s) | dense (s) | ratio | forward unhooked (s) | hooked (s) | ratio "
          "| shared-prefix forward unhooked (s) | hooked (s) | ratio |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['dtype']} | {r['head_strided_s']:.3f} | {r['head_contiguous_s']:.3f} | {r['head_ratio']:.1f} | "
              f"{r['forward_unhooked_s']:.2f} | {r['forward_hooked_s']:.2f} | {r['forward_ratio']:.1f} | "
              f"{r['shared_prefix_unhooked_s']:.2f} | {r['shared_prefix_hooked_s']:.2f} | "
              f"{r['shared_prefix_ratio']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
