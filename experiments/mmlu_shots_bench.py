"""MMLU few-shot prompts batched by subject (their shots then run once per batch) against length-sorted batches that
mix subjects, measured in one run on one model.

    python experiments/mmlu_shots_bench.py --model embedded-1.5b --shots 5 --subjects 4 --per-subject 16 \
        --data-dir ../shared/data --out results/mmlu-shots-bench

A 5-shot MMLU prompt repeats its subject's five answered dev questions (several hundred tokens) before the question.
steer.model.collect.batched_last_logits runs a batch's common prefix once and repeats its KV cache over the rows;
batches sorted by length alone mix subjects, so only the chat header is common. With `groups` (the subject per
prompt, what steer.eval.mmlu passes when shots > 0) a batch holds one subject. Reports the median of --repeats
timings (the two orders interleaved), the ratio mixed / grouped, the largest difference of the letter log-probs and
how many predicted letters agree.
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

from steer.eval.benchmarks import load_mmlu, stratified_subset
from steer.eval.mmlu import letter_ids, model_inputs
from steer.model.collect import batched_last_logits
from steer.model.load import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded-1.5b")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--per-subject", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("results/mmlu-shots-bench"))
    args = parser.parse_args()

    data = args.data_dir
    pool = load_mmlu(data, "test")
    subjects = sorted({it.group for it in pool})[:: max(1, 57 // args.subjects)][: args.subjects]
    chosen = [it for it in pool if it.group in subjects]
    items = stratified_subset(chosen, args.subjects * args.per_subject, args.seed, equal=True)
    dev: dict = {}
    for it in load_mmlu(data, "dev"):
        dev.setdefault(it.group, []).append(it)
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    texts = model_inputs(tok, items, dev, args.shots)
    groups = [it.group for it in items]
    letters = letter_ids(tok, chat=True)

    def run(grouped: bool) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        logits = batched_last_logits(model, tok, texts, args.batch_size, groups=groups if grouped else None)
        return time.perf_counter() - start, torch.log_softmax(logits[:, letters].double(), -1)

    times: dict[str, list[float]] = {"mixed": [], "grouped": []}
    out: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for name in ("mixed", "grouped"):
            t, out[name] = run(name == "grouped")
            times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_tokens = sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])
    report = {
        "model": args.model,
        "shots": args.shots,
        "subjects": subjects,
        "items": len(items),
        "prompt_tokens_mean": n_tokens / len(items),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "seconds": times,
        "median_s": med,
        "ratio_mixed_over_grouped": med["mixed"] / med["grouped"],
        "max_abs_logprob_diff": float((out["mixed"] - out["grouped"]).abs().max()),
        "same_letter": int((out["mixed"].argmax(-1) == out["grouped"].argmax(-1)).sum()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cpu": platform.processor() or platform.machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median_s", "ratio_mixed_over_grouped", "max_abs_logprob_diff")}))


if __name__ == "__main__":
    main()
