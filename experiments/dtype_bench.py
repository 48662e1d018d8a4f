"""float32 against bfloat16 forward passes, measured in one run: speed, and what bfloat16 changes.

    python experiments/dtype_bench.py [--model embedded-1.5b] [--n 32] [--tokens 64] --out results/dtype-bench

On the same model and prompts, first in float32 and then with the same weights cast to bfloat16
(what `--dtype bfloat16` loads): steer's batched last-position forward pass over n harmless validation
prompts (what selection and KL cost) and greedy generation of n sensitive validation prompts (what evaluation
costs). Reports seconds and the float32 / bfloat16 ratio per stage, how many greedy answers are identical,
and the first-token KL(float32 || bfloat16) on the harmless prompts: the noise floor bfloat16 adds to
every KL steer measures (its bound is 0.1 plain, 0.05 with --keep-safety).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

from steer.eval.config import EvalConfig
from steer.eval.engine import GenSpec, generate_ids
from steer.model.collect import batched_last_logits
from steer.model.load import load_model
from steer.prompts import chat_texts, load_prompts


def measure(model, tok, harmless: list[str], sensitive: list[str], tokens: int, batch_size: int) -> dict:
    start = time.perf_counter()
    logits = batched_last_logits(model, tok, harmless, batch_size).double()  # as selection and KL run them
    forward_s = time.perf_counter() - start
    start = time.perf_counter()
    penalty = EvalConfig(suites=()).repetition_penalty  # the evaluation protocol's (docs/evaluation.md)
    answers = generate_ids(model, tok, sensitive, GenSpec(tokens, repetition_penalty=penalty), batch_size)
    return {
        "logits": logits,
        "answers": answers,
        "forward_s": forward_s,
        "generate_s": time.perf_counter() - start,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded-1.5b")
    ap.add_argument("--n", type=int, default=32, help="prompts per stage")
    ap.add_argument("--tokens", type=int, default=64, help="greedy tokens per answer")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    harmless = chat_texts(tok, [p.text for p in load_prompts("harmless", "val")[: args.n]])
    sensitive = chat_texts(tok, [p.text for p in load_prompts("sensitive", "val")[: args.n]])
    runs = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model.to(dtype)
        runs[name] = measure(model, tok, harmless, sensitive, args.tokens, args.batch_size)
        print(name, {k: round(v, 1) for k, v in runs[name].items() if k.endswith("_s")}, file=sys.stderr, flush=True)
    f32, b16 = runs["float32"], runs["bfloat16"]
    lp, lq = torch.log_softmax(f32["logits"], -1), torch.log_softmax(b16["logits"], -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    result = {
        "command": " ".join(sys.argv),
        "model": loaded.source,
        "n": args.n,
        "tokens": args.tokens,
        "batch_size": args.batch_size,
        "seconds": {name: {k: round(r[k], 2) for k in ("forward_s", "generate_s")} for name, r in runs.items()},
        "ratio_float32_over_bfloat16": {k: round(f32[k] / b16[k], 2) for k in ("forward_s", "generate_s")},
        "identical_answers": sum(a["ids"] == b["ids"] for a, b in zip(f32["answers"], b16["answers"])),
        "first_token_kl_float32_bfloat16": {"mean": kl.mean().item(), "max": kl.max().item()},
        "same_top_token": int((lp.argmax(-1) == lq.argmax(-1)).sum()),
        "machine": {
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "amx_bf16": "amx_bf16" in flags,
            "avx512_bf16": "avx512_bf16" in flags,
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dtype-bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("versions",)}, indent=1))


if __name__ == "__main__":
    main()
