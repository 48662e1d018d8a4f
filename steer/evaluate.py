"""Evaluate: refusal rates from greedy generations, and first-token KL on harmless prompts.

(First version; the validated judge and capability benchmarks build on this module.)
"""

from __future__ import annotations

import torch

from .collect import batched_last_logits
from .generation import generate
from .judge import is_refusal
from .prompts import Prompt, chat_texts
from .select import first_token_kl


def refusal_eval(model, tokenizer, groups: dict[str, list[Prompt]], *, max_new_tokens: int = 64,
                 batch_size: int = 16, desc: str | None = None) -> dict:
    """Generate once for all groups (better batching) and report the refusal rate of each."""
    flat = [p for prompts in groups.values() for p in prompts]
    answers = generate(model, tokenizer, chat_texts(tokenizer, [p.text for p in flat]), max_new_tokens, batch_size, desc=desc)
    out, start = {}, 0
    for name, prompts in groups.items():
        items = [
            {"id": p.id, "lang": p.lang, "topic": p.topic, "prompt": p.text, "answer": a, "refusal": is_refusal(a)}
            for p, a in zip(prompts, answers[start:start + len(prompts)])
        ]
        start += len(prompts)
        out[name] = {"n": len(items), "refusal_rate": sum(i["refusal"] for i in items) / len(items), "items": items}
    return {"groups": out}


def prompt_logits(model, tokenizer, prompts: list[Prompt], batch_size: int = 16) -> torch.Tensor:
    return batched_last_logits(model, tokenizer, chat_texts(tokenizer, [p.text for p in prompts]), batch_size)


def kl_summary(base_logits: torch.Tensor, new_logits: torch.Tensor) -> dict:
    kl = first_token_kl(base_logits, new_logits)
    return {"n": len(kl), "mean": float(kl.mean()), "max": float(kl.max())}
