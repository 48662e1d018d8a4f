"""The base model's own answers for the general pairs (`steer sft --general-answers model`).

Self-distillation: the general pairs teach the model what it already says, so they hold its behaviour on
ordinary prompts (first-token KL, over-refusal) while the sensitive and refusal pairs change what they target.
Answers are greedy under the evaluation protocol's repetition penalty and cached per weights fingerprint; an answer
cut by the token budget is dropped (training on it would teach the model to stop mid-sentence).
"""

from __future__ import annotations

import dataclasses
import sys

from steer.eval.engine import GenSpec, ItemCache, fingerprint, generate_cached
from steer.model.load import Loaded, cache_dir
from steer.prompts import chat_texts
from steer.sft.data import Pair

OWN_TOKENS = 384  # most written general answers fit; longer own answers are dropped, not cut
OWN_PENALTY = 1.1  # the evaluation protocol's repetition penalty (docs/evaluation.md)


@dataclasses.dataclass(frozen=True)
class OwnAnswers:
    """The pairs with their general answers replaced, and how many general pairs were replaced or dropped."""

    pairs: list[Pair]
    replaced: int
    dropped: int


def own_answers(loaded: Loaded, pairs: list[Pair], kinds: tuple[str, ...] = ("general",), batch_size: int = 32):
    """Replace the answers of pairs whose kind is in `kinds` with the loaded model's greedy answers -> OwnAnswers.
    Large batches: decoding on a CPU reads every weight once per token, whatever the batch size."""
    idx = [i for i, p in enumerate(pairs) if p.kind in kinds]
    if not idx:
        return OwnAnswers(list(pairs), 0, 0)
    model_id = fingerprint(loaded.model)
    cache = ItemCache(cache_dir() / "sft" / "own" / f"{model_id[:24]}.jsonl")
    spec = GenSpec(OWN_TOKENS, repetition_penalty=OWN_PENALTY)
    texts = chat_texts(loaded.tokenizer, [pairs[i].prompt for i in idx])
    print(f"[steer sft] the base model answers {len(idx)} general prompts (cached)", file=sys.stderr, flush=True)
    outs = generate_cached(loaded.model, loaded.tokenizer, texts, spec, cache, model_id, batch_size, desc="own")
    eos = loaded.model.generation_config.eos_token_id or loaded.tokenizer.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    new, dropped = {}, set()
    for i, out in zip(idx, outs, strict=True):
        finished = bool(out["ids"]) and out["ids"][-1] in eos
        if finished and out["text"].strip():
            new[i] = dataclasses.replace(pairs[i], answer=out["text"])
        else:
            dropped.add(i)
    kept = [new.get(i, p) for i, p in enumerate(pairs) if i not in dropped]
    return OwnAnswers(kept, len(new), len(dropped))
