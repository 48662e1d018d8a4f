"""Select: score candidate directions with the criteria of Arditi et al. (no decoding).

Refusal score: log p(refusal tokens) - log(1 - p(refusal tokens)) at the last prompt
position, where the refusal tokens are the first tokens of the model's own refusals.
For each candidate (layer, position):
  bypass  - mean refusal score on target (sensitive) prompts with the direction ablated;
  induce  - mean refusal score on harmless prompts with the raw direction added at its layer;
  kl      - mean first-token KL(base || ablated) on harmless prompts.
Candidates in the last 20% of layers are excluded; the chosen one has the lowest bypass
among those with induce > 0 and kl < kl_max, where kl is judged by the upper end of its 95%
confidence interval over the validation prompts (a validation mean just under the threshold
too often lands above it on held-out prompts: the per-prompt KL is heavy-tailed). To fit a CPU
budget every candidate is first screened by bypass on a few prompts and only the best `screen`
are scored in full, lazily: bypass for all of them, then in order of bypass KL, and induce only
where KL is within the bound, stopping at the first that passes. That choice is the one full
scoring makes; the scores it did not need stay None.
As in Arditi et al., directions and scores use only target prompts the model refuses and
baseline prompts it answers (`split_by_score`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from steer.edit.preview import preview
from steer.edit.project import added
from steer.locate.directions import DirectionSet
from steer.locate.scores import first_token_kl, kl_bound, refusal_score
from steer.model.collect import batched_last_logits


@dataclass
class Candidate:
    """One candidate (layer, position): its screening bypass, and for the `screen` best the full bypass, induce
    and KL scores, KL's 95% upper bound, and whether it passes the filters."""

    layer: int
    position: int
    screen_bypass: float
    bypass: float | None = None
    induce: float | None = None
    kl: float | None = None
    kl_ucb: float | None = None  # upper end of the 95% confidence interval of kl
    passes: bool | None = None


@dataclass
class Selection:
    """The chosen (layer, position), the refusal tokens, the base model's mean refusal scores on target and harmless
    prompts, every candidate, and why the choice fails the filters (None when it passes)."""

    layer: int
    position: int
    refusal_tokens: list[int]
    base_target_score: float
    base_harmless_score: float
    candidates: list[Candidate]
    fallback: str | None  # why the chosen candidate does not pass all filters, if it doesn't

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def select_direction(
    model,
    tokenizer,
    dirs: DirectionSet,
    target_texts: list[str],
    harmless_texts: list[str],
    refusal_tokens: list[int],
    *,
    kl_max: float = 0.1,
    max_layer_frac: float = 0.8,
    screen: int = 8,
    screen_prompts: int = 8,
    batch_size: int = 16,
    base_logits: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Selection:
    """base_logits: the unedited model's last logits on (target_texts, harmless_texts), if already known."""
    n_layers, n_pos, _ = dirs.directions.shape
    if base_logits is None:
        base_logits = tuple(
            batched_last_logits(model, tokenizer, t, batch_size) for t in (target_texts, harmless_texts)
        )
    base_t, base_h = base_logits
    screen_texts = target_texts[:screen_prompts]
    norms = dirs.directions.norm(dim=-1)
    # Template tokens are identical across prompts at the embedding: those differences are ~0.
    usable = norms > 1e-6 * norms.max()
    grid = [
        (layer, pos)
        for layer in range(max(1, int(n_layers * max_layer_frac)))
        for pos in range(-n_pos, 0)
        if usable[layer, pos]
    ]
    cands = [
        _screen(model, tokenizer, dirs, layer, pos, screen_texts, refusal_tokens, batch_size)
        for layer, pos in tqdm(grid, desc="screen candidates", leave=False)
    ]
    shortlist = sorted(cands, key=lambda c: c.screen_bypass)[:screen]
    for c in tqdm(shortlist, desc="bypass of the shortlist", leave=False):
        _bypass(model, tokenizer, dirs, c, target_texts, refusal_tokens, batch_size)
    for c in tqdm(sorted(shortlist, key=lambda c: c.bypass), desc="KL and induce", leave=False):
        _filters(model, tokenizer, dirs, c, harmless_texts, refusal_tokens, base_h, kl_max, batch_size)
        if c.passes:  # the lowest bypass that passes: the rest cannot be chosen
            break
    best, fallback = _choose(cands, kl_max)
    return Selection(
        best.layer,
        best.position,
        refusal_tokens,
        float(refusal_score(base_t, refusal_tokens).mean()),
        float(refusal_score(base_h, refusal_tokens).mean()),
        cands,
        fallback,
    )


def _screen(
    model,
    tokenizer,
    dirs: DirectionSet,
    layer: int,
    pos: int,
    texts: list[str],
    refusal_tokens: list[int],
    batch_size: int,
) -> Candidate:
    """A candidate with its bypass score on the few screening prompts."""
    with preview(model, dirs.vector(layer, pos)):
        score = refusal_score(batched_last_logits(model, tokenizer, texts, batch_size), refusal_tokens)
    return Candidate(layer, pos, float(score.mean()))


def score_candidate(
    model,
    tokenizer,
    dirs: DirectionSet,
    c: Candidate,
    target_texts: list[str],
    harmless_texts: list[str],
    refusal_tokens: list[int],
    base_harmless: torch.Tensor,
    kl_max: float,
    batch_size: int = 16,
) -> Candidate:
    """Fill all of c's scores: bypass (target refusal score with its direction ablated), KL (first-token KL on
    harmless prompts against base_harmless [N, vocab], mean and 95% bound), induce (harmless refusal score with
    the raw direction added at its layer) and whether it passes (induce > 0, KL bound < kl_max)."""
    _bypass(model, tokenizer, dirs, c, target_texts, refusal_tokens, batch_size)
    return _filters(
        model, tokenizer, dirs, c, harmless_texts, refusal_tokens, base_harmless, kl_max, batch_size, lazy=False
    )


def _bypass(model, tokenizer, dirs: DirectionSet, c: Candidate, texts: list[str], tokens: list[int], batch_size: int):
    with preview(model, dirs.vector(c.layer, c.position)):
        logits = batched_last_logits(model, tokenizer, texts, batch_size)
    c.bypass = float(refusal_score(logits, tokens).mean())


def _filters(
    model,
    tokenizer,
    dirs: DirectionSet,
    c: Candidate,
    harmless_texts: list[str],
    refusal_tokens: list[int],
    base_harmless: torch.Tensor,
    kl_max: float,
    batch_size: int,
    lazy: bool = True,
) -> Candidate:
    """c's KL and, unless lazy and the KL bound already fails, its induce score; then whether it passes."""
    with preview(model, dirs.vector(c.layer, c.position)):
        logits = batched_last_logits(model, tokenizer, harmless_texts, batch_size)
    kl = first_token_kl(base_harmless, logits)
    c.kl, c.kl_ucb = float(kl.mean()), kl_bound(kl)
    if not lazy or c.kl_ucb < kl_max:
        with added(model, c.layer, dirs.directions[c.layer, c.position].float()):
            harmless = batched_last_logits(model, tokenizer, harmless_texts, batch_size)
        c.induce = float(refusal_score(harmless, refusal_tokens).mean())
    c.passes = c.induce is not None and c.induce > 0 and c.kl_ucb < kl_max
    return c


def _choose(cands: list[Candidate], kl_max: float) -> tuple[Candidate, str | None]:
    """The lowest bypass among passing candidates, else among those within the KL bound, else the lowest KL
    bound (nothing is within the budget: the least damage); and why, when it does not pass."""
    scored = sorted((c for c in cands if c.bypass is not None), key=lambda c: c.bypass)
    passing = [c for c in scored if c.passes]
    if passing:
        return passing[0], None
    low_kl = [c for c in scored if c.kl_ucb is not None and c.kl_ucb < kl_max]
    if low_kl:
        return low_kl[0], "no candidate had induce > 0 and kl_ucb < kl_max; took the lowest bypass with kl_ucb < kl_max"
    closest = min(scored, key=lambda c: (float("inf") if c.kl_ucb is None else c.kl_ucb, c.bypass))
    return closest, "no candidate had kl_ucb < kl_max; took the lowest kl_ucb"
