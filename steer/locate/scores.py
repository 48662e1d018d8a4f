"""Scores without decoding: refusal score, first-token KL and its 95% bound, and the refusal-token probe.

Refusal score: log p(refusal tokens) - log(1 - p(refusal tokens)) at the last prompt position,
where the refusal tokens are the first tokens of the model's own refusals (`refusal_tokens`).
Every stage scores with these: selection (steer.locate.select), the targeted search and
optimizer, the readout's back-off.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import torch

from steer.errors import SteerError
from steer.eval.judge import is_refusal
from steer.model.collect import batched_last_logits
from steer.model.generation import generate

PROBE_PROMPTS = 64  # target train prompts whose greedy answers name the refusal tokens


def refusal_score(logits: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """Per-row log-odds of the refusal tokens: logits [B, vocab] -> [B]."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    lp = torch.logsumexp(logp[:, token_ids], dim=-1).clamp(max=-1e-12)
    return lp - torch.log(-torch.expm1(lp))


def first_token_kl(base: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Per-row KL(base || new) of next-token distributions: logits [B, vocab] -> [B]."""
    lp, lq = torch.log_softmax(base.double(), -1), torch.log_softmax(new.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def kl_bound(kl: torch.Tensor) -> float:
    """Upper end of the 95% normal confidence interval of mean per-prompt KL [N] (the mean itself
    for one prompt): the KL criterion of selection, search and readout alike, because the
    per-prompt KL is heavy-tailed and a mean just under a bound too often lands over it on new prompts."""
    return float(kl.mean() + 1.96 * kl.std() / len(kl) ** 0.5) if len(kl) > 1 else float(kl.mean())


def find_refusal_tokens(
    model,
    tokenizer,
    target_texts: list[str],
    target_logits: torch.Tensor,
    harmless_logits: torch.Tensor,
    batch_size: int = 16,
    max_tokens: int = 4,
) -> list[int]:
    """First tokens of the model's own refusals on target prompts (not a per-family list).

    Greedy-decodes a few tokens per target prompt, keeps the refusals (steer.eval.judge), counts
    their first tokens (the argmax of target_logits) and drops any token that also opens
    over 20% of harmless answers.
    """
    first = target_logits.argmax(-1).tolist()
    answers = generate(model, tokenizer, target_texts, max_new_tokens=16, batch_size=batch_size, desc="refusal tokens")
    counts = Counter(tok for tok, ans in zip(first, answers) if is_refusal(ans))
    harmless_first = Counter(harmless_logits.argmax(-1).tolist())
    keep = [t for t, _ in counts.most_common() if harmless_first[t] <= 0.2 * len(harmless_logits)][:max_tokens]
    if not keep:
        raise SteerError(
            f"the model refused none of {len(target_texts)} target prompts (judge: steer.eval.judge); nothing to remove"
        )
    return keep


def split_by_score(logits: torch.Tensor, token_ids: list[int], refused: bool, min_keep: int = 4) -> list[int]:
    """Indices of prompts the model refuses (score > 0) or answers (score < 0), as Arditi et al.

    Falls back to all indices when fewer than min_keep qualify, so tiny sets still work.
    """
    scores = refusal_score(logits, token_ids)
    idx = [i for i, s in enumerate(scores.tolist()) if (s > 0) == refused]
    return idx if len(idx) >= min_keep else list(range(len(scores)))


def greedy_refused(logits: torch.Tensor, token_ids: list[int], min_keep: int = 4) -> list[int]:
    """Indices of prompts whose greedy answer starts with a refusal token (argmax of logits [B, vocab] in token_ids)
    or whose refusal score is above 0: the prompts greedy decoding refuses, including those where the refusal
    tokens together hold less than half the probability (score < 0) yet one of them is the most likely token.
    Falls back to all indices when fewer than min_keep qualify, as split_by_score."""
    scores, top, refusal = refusal_score(logits, token_ids), logits.argmax(-1), set(token_ids)
    idx = [i for i, (s, t) in enumerate(zip(scores.tolist(), top.tolist())) if s > 0 or t in refusal]
    return idx if len(idx) >= min_keep else list(range(len(scores)))


@dataclass
class RefusalProbe:
    """What `refusal_tokens` found: the refusal tokens, and the last-position logits [N, vocab] of the
    target and baseline prompts it ran (reused by every later stage instead of a second pass)."""

    tokens: list[int]
    target_logits: torch.Tensor
    baseline_logits: torch.Tensor


def refusal_tokens(
    model, tokenizer, target_texts: list[str], baseline_texts: list[str], seed: int, batch_size: int = 16
) -> RefusalProbe:
    """The one refusal-token probe: last-position logits of chat-formatted target and baseline
    prompts, and the refusal tokens found from greedy answers to a seeded sample of at most
    PROBE_PROMPTS target prompts."""
    t_logits = batched_last_logits(model, tokenizer, target_texts, batch_size)
    b_logits = batched_last_logits(model, tokenizer, baseline_texts, batch_size)
    probe = sorted(random.Random(seed).sample(range(len(target_texts)), min(PROBE_PROMPTS, len(target_texts))))
    target = [target_texts[i] for i in probe]
    tokens = find_refusal_tokens(model, tokenizer, target, t_logits[probe], b_logits, batch_size)
    return RefusalProbe(tokens, t_logits, b_logits)
