"""Throughput of the evaluation engine against a naive one-at-a-time loop, measured in one run.

    python experiments/eval_throughput.py --data-dir ../shared/data --out results/eval-throughput

For each benchmark, the same seeded items are scored twice on the embedded model:
- engine: length-sorted, left-padded batches (KV-cached model.generate / one forward per batch),
  per-item cache disabled;
- naive: one item at a time (model.generate with batch size 1 / one forward per item).
Reports items per second, the speed-up (engine / naive), and how many answers are identical.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from steer.eval.benchmarks import LOADERS, stratified_subset
from steer.eval.capability import BOXED_SUFFIX, GSM8K_SUFFIX, MAX_TOKENS, STOP
from steer.eval.engine import GenSpec, generate_ids
from steer.eval.mmlu import score_mmlu
from steer.eval.suites import JUDGED_TOKENS
from steer.model.load import load_model
from steer.prompts import chat_texts, load_prompts


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("results/eval-throughput"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    loaded = load_model(None)
    model, tok = loaded.model, loaded.tokenizer
    rows = []

    def gen_bench(name, prompts, max_tokens, stop=()):
        texts = chat_texts(tok, prompts)
        spec = GenSpec(max_tokens, stop)
        fast, t_fast = timed(lambda: generate_ids(model, tok, texts, spec, args.batch_size))
        slow, t_slow = timed(lambda: [generate_ids(model, tok, [t], spec, 1)[0] for t in texts])
        same = sum(a["text"] == b["text"] for a, b in zip(fast, slow))
        tokens = sum(len(o["ids"]) for o in fast)
        rows.append(
            {
                "benchmark": name,
                "items": len(texts),
                "max_new_tokens": max_tokens,
                "generated_tokens": tokens,
                "engine_s": round(t_fast, 2),
                "naive_s": round(t_slow, 2),
                "engine_items_per_s": len(texts) / t_fast,
                "naive_items_per_s": len(texts) / t_slow,
                "speedup": t_slow / t_fast,
                "identical_answers": same,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    judged = [p.text for p in load_prompts("sensitive", "test")[:32]]
    gen_bench("judged answers (censorship)", judged, JUDGED_TOKENS)
    mmlu = stratified_subset(LOADERS["mmlu"](args.data_dir), 114, args.seed, equal=True)
    fast, t_fast = timed(lambda: score_mmlu(model, tok, mmlu, batch_size=args.batch_size))
    slow, t_slow = timed(lambda: [score_mmlu(model, tok, [it], batch_size=1)[0] for it in mmlu])
    rows.append(
        {
            "benchmark": "mmlu (0-shot, letter log-probs)",
            "items": len(mmlu),
            "engine_s": round(t_fast, 2),
            "naive_s": round(t_slow, 2),
            "engine_items_per_s": len(mmlu) / t_fast,
            "naive_items_per_s": len(mmlu) / t_slow,
            "speedup": t_slow / t_fast,
            "identical_answers": sum(a["pred"] == b["pred"] for a, b in zip(fast, slow)),
        }
    )
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for name, n in (("gsm8k", 8), ("math500", 6), ("aime24", 4)):
        items = stratified_subset(LOADERS[name](args.data_dir), n, args.seed)
        suffix = GSM8K_SUFFIX if name == "gsm8k" else BOXED_SUFFIX
        gen_bench(name, [it.question + suffix for it in items], MAX_TOKENS[name], STOP)

    import transformers

    result = {
        "command": " ".join(sys.argv),
        "model": loaded.source,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Evaluation throughput: engine vs naive one-at-a-time loop\n",
        f"`{result['command']}`\n",
        f"{loaded.source}, batch size {args.batch_size}, {torch.get_num_threads()} CPU threads, "
        f"torch {torch.__version__}, "
        f"seed {args.seed}; both measured in the same run on the same items.\n",
        "| benchmark | items | max new tokens | engine items/s | naive items/s | speed-up | identical answers |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['benchmark']} | {r['items']} | {r.get('max_new_tokens', '-')} | {r['engine_items_per_s']:.2f} | "
            f"{r['naive_items_per_s']:.2f} | {r['speedup']:.1f}x | {r['identical_answers']}/{r['items']} |"
        )
    (args.out / "README.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
