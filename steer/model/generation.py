"""Greedy answers as plain strings (chat, generate, refusal-token discovery): the engine's
batched, length-sorted, KV-cached generation without the per-item cache."""

from __future__ import annotations

from steer.eval.engine import GenSpec, generate_ids


def generate(
    model, tokenizer, texts: list[str], max_new_tokens: int = 64, batch_size: int = 16, desc: str | None = None
) -> list[str]:
    """Greedy completions of chat-formatted texts, returned in input order."""
    return [o["text"] for o in generate_ids(model, tokenizer, texts, GenSpec(max_new_tokens), batch_size, desc=desc)]
