"""Capability suites: MMLU (letter log-probs), GSM8K, MATH-500, AIME 2024/2025 (greedy generation).

Prompts (documented in docs/evaluation.md):
- MMLU: steer.eval.mmlu, chat template, zero-shot by default (`--shots 5` uses the dev split).
- GSM8K: the question, then "Solve step by step and end with 'The answer is <number>'."; the
  number after the last "answer is", else the last number in the answer.
- MATH-500 / AIME: the problem, then "Please reason step by step, and put your final answer within
  \\boxed{}." (Qwen's maths prompt); the last \\boxed{}, else (AIME) the last number.
"""

from __future__ import annotations

import re

from steer.eval.answers import boxed, equivalent, last_number
from steer.eval.benchmarks import LOADERS, Item, load_mmlu, stratified_subset
from steer.eval.engine import GenSpec, cached_map, generate_cached, key
from steer.eval.judge import degenerate
from steer.eval.mmlu import LETTERS, model_inputs, score_mmlu, summarize
from steer.eval.stats import rate
from steer.prompts import chat_texts

GSM8K_SUFFIX = "\nSolve step by step and end with 'The answer is <number>'."
BOXED_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
MAX_TOKENS = {"gsm8k": 320, "math500": 512, "aime24": 768, "aime25": 768}
STOP = ("\n\n\n\n",)  # runaway blank lines: nothing useful follows


def extract(suite: str, text: str) -> str | None:
    """The final answer in a generated text: for GSM8K the last number after the last "answer is", else the last
    number; otherwise the last \\boxed{}, and for AIME the last number when there is none."""
    if suite == "gsm8k":
        tail = re.split(r"answer is", text, flags=re.I)
        return last_number(tail[-1]) if len(tail) > 1 and last_number(tail[-1]) else last_number(text)
    found = boxed(text)
    if found is None and suite.startswith("aime"):
        return last_number(text)
    return found


def run_mmlu(ctx) -> dict:
    """The mmlu suite: a seeded subset with the same number of items per subject, scored by answer-letter log-prob
    (cached per item); accuracy, macro accuracy and per-subject accuracy."""
    cfg = ctx.config
    data = ctx.data_dir("mmlu")
    items = stratified_subset(load_mmlu(data, "test"), cfg.limit("mmlu"), cfg.seed, equal=True)
    dev = {}
    if cfg.shots:
        for it in load_mmlu(data, "dev"):
            dev.setdefault(it.group, []).append(it)
    keys = [key("mmlu", ctx.model_id, it.id, it.question, cfg.shots) for it in items]
    compute = lambda idx: score_mmlu(
        ctx.model,
        ctx.tokenizer,
        [items[i] for i in idx],
        dev,
        cfg.shots,
        batch_size=cfg.batch_size,
    )
    lengths = [len(it.question) + sum(map(len, it.choices)) for it in items]
    # few-shot: chunks follow subjects, so each batch shares its subject's examples (run once per batch)
    order = (lambda i: (items[i].group, lengths[i])) if cfg.shots else lengths.__getitem__
    rows = cached_map(ctx.cache, keys, compute, chunk=8 * cfg.batch_size, desc=f"mmlu {cfg.shots}-shot", order=order)
    inputs = model_inputs(ctx.tokenizer, items, dev, cfg.shots)
    results = [
        {
            "id": it.id,
            "subject": it.group,
            "prompt": it.question,
            "input": text,  # the exact text fed to the model, as lm-eval logs its arguments
            "continuations": list(LETTERS),
            "choices": list(it.choices),
            "output": r["logprobs"],
            "extracted": r["pred"],
            "answer": it.answer,
            "correct": r["correct"],
        }
        for it, r, text in zip(items, rows, inputs)
    ]
    summary = summarize(results)
    return {
        "metrics": {
            "accuracy": rate([r["correct"] for r in results]),
            "macro_accuracy": {"value": summary["macro"], "ci": [None, None], "n": len(summary["per_subject"])},
        },
        "per_subject": summary["per_subject"],
        "items": results,
        "paired": ["correct"],
    }


def run_generative(suite: str, ctx) -> dict:
    """A maths suite (gsm8k, math500, aime24, aime25): greedy answers to the chat-formatted problem and the suite's
    instruction (cached per item), the extracted answer compared with the gold one; accuracy, the share that hit
    the token limit and the share of degenerate outputs."""
    cfg = ctx.config
    items: list[Item] = stratified_subset(LOADERS[suite](ctx.data_dir(suite)), cfg.limit(suite), cfg.seed)
    suffix = GSM8K_SUFFIX if suite == "gsm8k" else BOXED_SUFFIX
    texts = chat_texts(ctx.tokenizer, [it.question + suffix for it in items])
    spec = GenSpec(cfg.tokens(suite, MAX_TOKENS[suite]), STOP)
    outs = generate_cached(ctx.model, ctx.tokenizer, texts, spec, ctx.cache, ctx.model_id, cfg.batch_size, desc=suite)
    results = []
    for it, o, text in zip(items, outs, texts):
        pred = extract(suite, o["text"])
        results.append(
            {
                "id": it.id,
                "group": it.group,
                "prompt": it.question,
                "input": text,  # the exact text fed to the model (chat template and instruction included)
                "output": o["text"],
                "extracted": pred,
                "answer": it.answer,
                "correct": equivalent(pred, it.answer),
                "hit_limit": len(o["ids"]) >= spec.max_new_tokens,
                "degenerate": degenerate(o["text"]),
            }
        )
    return {
        "metrics": {
            "accuracy": rate([r["correct"] for r in results]),
            "hit_token_limit": rate([r["hit_limit"] for r in results]),
            "degenerate": rate([r["degenerate"] for r in results]),
        },
        "items": results,
        "paired": ["correct", "degenerate"],
    }


def run(suite: str, ctx) -> dict:
    """One capability suite on ctx (steer.eval.suites.Ctx): its metrics, items and paired fields."""
    return run_mmlu(ctx) if suite == "mmlu" else run_generative(suite, ctx)
