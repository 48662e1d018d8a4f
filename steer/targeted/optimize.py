"""A gradient-optimized edit direction for targeted de-censoring.

Contrast directions (difference of means) that separate censorship from safety refusals are
weak in models where the two share a refusal mechanism (the embedded model: cosine 0.5-0.9,
docs/targeted.md). This module instead asks directly for a unit vector r whose removal, exactly
as the weight edit removes it (every residual writer's output and the embedding, strength 1),

  - lowers the refusal score on target (censored) prompts,
  - keeps the refusal score on harmful prompts the model refuses,
  - keeps the first-token distribution on harmless prompts,

by gradient descent through the frozen model. Per step, on a seeded minibatch of each group
(logits at the first answer position; steer.locate.scores.refusal_score, first_token_kl):

    loss = mean(max(score_target, -margin))   (power 1; power p: margin * mean((relu(score + margin) / margin)^p))
         + keep_weight * mean(relu(base_score_keep - slack - score_keep))
         + kl_weight * mean(KL(base || edited) on harmless)

r = normalize(v with span(keep_span) removed) (steer.locate.directions.remove_span; keep_span: the
harmful-refusal directions), so r is orthogonal to them like every targeted direction. Adam on v,
its step decayed to 0 over the run (cosine): the early steps, where the target score falls, are
almost unchanged, and the result does not hinge on the last few noisy minibatch steps. The result
is one more candidate direction for steer.targeted.search ("optimized"), where strengths, layers and
subspace size are searched and the judge confirms the front.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from steer.edit.preview import Edit, preview
from steer.edit.project import Profile
from steer.locate.directions import orthonormalize, remove_span
from steer.locate.scores import first_token_kl, refusal_score
from steer.model.collect import encode_batches, last_logits


@dataclass
class OptimizeSettings:
    """Settings of optimize_direction: steps, Adam step size and its cosine decay, minibatch sizes per group,
    the loss's margin, power, slack and weights, the seed, iterate averaging, and the strengths the direction
    is trained under."""

    # 32 steps reach a worse target score at the same KL (results/optimize-variants, the 2026-11-22 run at 673e21f)
    steps: int = 48
    lr: float = 0.003  # Adam step per coordinate of v (v starts at unit norm)
    cosine: bool = True  # decay lr to 0 over the steps: the last minibatch steps move v little
    target_batch: int = 8
    keep_batch: int = 6
    harmless_batch: int = 12
    margin: float = 3.0  # target scores below -margin count as done (no reward for pushing further)
    # exponent of the target hinge: above 1 the prompts still near refusal (score near 0: greedy answers
    # refuse above about -1, docs/targeted.md) pull harder than those already answered
    power: float = 1.0
    # harmful scores may fall this far below base before they cost anything; near the search's floor
    # (0.9 x the base mean score: 0.08 below it on the embedded model). 0.5 let a run settle at 0.43
    # against a base 0.81 at no cost, infeasible for the search (measured)
    slack: float = 0.1
    keep_weight: float = 2.0
    kl_weight: float = 40.0
    seed: int = 0
    # return the mean of the unit directions of the second half of the steps (Polyak-Ruppert
    # averaging) instead of the last one: the average of a noisy minibatch trajectory varies less
    average: bool = False
    # strengths of the edit the direction is trained under (flat over layers), as steer.edit.project applies
    # them: attention and MLP outputs (the embedding stays at 1). The search finds attention above 1
    # and MLP below it better (results/component-strengths); training under such an edit fits r to it
    attn: float = 1.0
    mlp: float = 1.0
    # rows per forward/backward: a step's gradient is accumulated over chunks of its minibatch (every loss term is
    # a sum over rows over a whole-minibatch count: the same gradient up to float rounding), so the autograd graph
    # holds chunk_rows rows, not the whole minibatch (docs/memory.md)
    chunk_rows: int = 8


@dataclass
class Group:
    """Chat-formatted prompts and the base model's last-position logits [N, vocab]."""

    texts: list[str]
    base_logits: torch.Tensor


def unit_direction(v: torch.Tensor, keep_span: torch.Tensor | None) -> torch.Tensor:
    """v [d] with span(keep_span) [m, d] removed (steer.locate.directions.remove_span), normalized; for
    v [r, d] (a subspace), its rows with the span removed, orthonormalized in order (QR; each row
    keeps its sign)."""
    if v.dim() == 1:
        w = v if keep_span is None else remove_span(v, keep_span)
        return w / w.norm()
    w = v if keep_span is None else remove_span(v, keep_span.expand(v.shape[0], *keep_span.shape))
    return orthonormalize(w)


def _target_rows(score: torch.Tensor, margin: float, power: float) -> torch.Tensor:
    """The target part of the loss per row [N] from scores [N]: max(score, -margin) for power 1, else
    margin * (relu(score + margin) / margin)^power, whose slope is power x that of power 1 at score 0 and
    falls to 0 at -margin."""
    if power == 1.0:
        return score.clamp(min=-margin)
    return margin * ((score + margin).clamp(min=0) / margin).pow(power)


def _target_term(score: torch.Tensor, margin: float, power: float) -> torch.Tensor:
    """The target part of the loss: the mean of _target_rows."""
    return _target_rows(score, margin, power).mean()


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """The model's parameters without gradients for the block, restored after: only the edit's
    own tensors train."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def draw(rng: random.Random, groups: list[tuple[Group, int]]) -> tuple[list[list[int]], list[str]]:
    """A seeded minibatch: sorted indices into each (group, batch size) and their texts in order."""
    picks = [sorted(rng.sample(range(len(g.texts)), min(n, len(g.texts)))) for g, n in groups]
    return picks, [g.texts[i] for (g, _), idx in zip(groups, picks) for i in idx]


class Rows(NamedTuple):
    """One minibatch's per-row parts of the loss: target scores [n0], keep scores and their base [n1], KL [n2]."""

    t_score: torch.Tensor
    k_score: torch.Tensor
    k_base: torch.Tensor
    kl: torch.Tensor


def loss_rows(logits: torch.Tensor, picks: list[list[int]], base: list[torch.Tensor], refusal_tokens: list[int]):
    """Rows of the loss. logits: [N, vocab] at the first answer position, rows = picks[0] target, picks[1] keep,
    picks[2] harmless prompts in order; base: the base model's logits of the three groups (indexed by picks)."""
    a, b = len(picks[0]), len(picks[0]) + len(picks[1])
    return Rows(
        refusal_score(logits[:a], refusal_tokens),
        refusal_score(logits[a:b], refusal_tokens),
        refusal_score(base[1][picks[1]], refusal_tokens),
        first_token_kl(base[2][picks[2]], logits[b:]),
    )


def chunks(picks: list[list[int]], size: int) -> Iterator[list[list[int]]]:
    """The minibatch's rows (picks: indices per group, in group order) in chunks of at most `size` rows, each chunk
    laid out as picks is (a chunk may hold rows of several groups, or none of one)."""
    flat = [(g, i) for g, p in enumerate(picks) for i in p]
    for start in range(0, len(flat), size):
        yield [[i for g, i in flat[start : start + size] if g == k] for k in range(len(picks))]


def joined(parts: list[Rows]) -> Rows:
    """Chunks' rows concatenated (detached): the whole minibatch's, for its metrics."""
    return Rows(*(torch.cat([getattr(p, f).detach() for p in parts]) for f in Rows._fields))


def weighted_loss(rows: Rows, n: list[int], s: OptimizeSettings) -> torch.Tensor:
    """The loss of the module docstring, each group's row terms summed and divided by that group's size in the
    whole minibatch (n): on the whole minibatch it is the mean form; over row chunks the chunks' values add up to
    it, so their gradients can be accumulated."""
    keep = torch.relu(rows.k_base - s.slack - rows.k_score)
    return (
        _target_rows(rows.t_score, s.margin, s.power).sum() / max(1, n[0])
        + s.keep_weight * keep.sum() / max(1, n[1])
        + s.kl_weight * rows.kl.sum() / max(1, n[2])
    )


def row_metrics(loss: float, rows: Rows) -> dict:
    """A step's metrics: its loss and the means of the scores and KL."""
    return {
        "loss": loss,
        "target_score": rows.t_score.mean().item(),
        "keep_score": rows.k_score.mean().item(),
        "keep_base": rows.k_base.mean().item(),
        "kl": rows.kl.mean().item(),
    }


def _forward(model, tokenizer, texts: list[str], r: torch.Tensor, attn: float = 1.0, mlp: float = 1.0) -> torch.Tensor:
    """Last-position logits [N, vocab] with r ablated at flat strengths attn / mlp, rows in the order of texts
    (one batch)."""
    ((idx, batch),) = list(encode_batches(tokenizer, texts, len(texts), share_prefix=True))
    with preview(model, Edit(r, profiles={"attn": Profile(attn, floor=attn), "mlp": Profile(mlp, floor=mlp)})):
        logits = last_logits(model, batch)
    out = torch.empty_like(logits)
    out[torch.tensor(idx)] = logits
    return out


def step_gradient(
    model, tokenizer, groups: list[Group], picks: list[list[int]], v: torch.Tensor, keep_span: torch.Tensor | None,
    base: list[torch.Tensor], refusal_tokens: list[int], s: OptimizeSettings,
) -> dict:  # fmt: skip
    """One minibatch's gradient of the loss, accumulated into v.grad chunk by chunk (s.chunk_rows rows per forward
    and backward), and the step's metrics."""
    total, parts = 0.0, []
    for chunk in chunks(picks, s.chunk_rows):
        texts = [g.texts[i] for g, idx in zip(groups, chunk) for i in idx]
        logits = _forward(model, tokenizer, texts, unit_direction(v, keep_span).float(), s.attn, s.mlp)
        rows = loss_rows(logits, chunk, base, refusal_tokens)
        loss = weighted_loss(rows, [len(p) for p in picks], s)
        loss.backward()
        total, parts = total + loss.item(), parts + [rows]
    return row_metrics(total, joined(parts))


class Optimized(NamedTuple):
    """optimize_direction's result: the unit direction [d] (or orthonormal rows [r, d]), float64, and
    the per-step metrics."""

    direction: torch.Tensor
    history: list[dict]


def optimize_direction(
    model,
    tokenizer,
    target: Group,
    keep: Group,
    harmless: Group,
    init: torch.Tensor,
    refusal_tokens: list[int],
    keep_span: torch.Tensor | None = None,
    s: OptimizeSettings | None = None,
    progress: bool = True,
) -> Optimized:
    """The optimized unit direction [d] (float64) and the per-step minibatch metrics.

    init: [d] starting direction (e.g. the censorship contrast), or [r, d] to optimize an
    r-dimensional subspace removed as a whole (returns orthonormal rows [r, d]); keep_span: [m, d]
    directions r must stay orthogonal to (or None). The model's parameters are frozen for the
    duration and restored after; it must be in eval mode (no dropout)."""
    s = s or OptimizeSettings()
    if s.average and init.dim() > 1:
        raise ValueError("averaging iterates needs a single direction (a mean of bases is not a basis)")
    v = unit_direction(init.double(), keep_span).float().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=s.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.steps) if s.cosine else None
    rng = random.Random(s.seed)
    groups = [(target, s.target_batch), (keep, s.keep_batch), (harmless, s.harmless_batch)]
    base = [g.base_logits.detach().clone().float() for g, _ in groups]  # out of inference mode: usable by autograd
    history = []
    mean = torch.zeros_like(v, dtype=torch.float64)
    with frozen(model):
        with torch.enable_grad(), tqdm(range(s.steps), desc="optimizing direction", disable=not progress) as bar:
            for step in bar:
                picks, _ = draw(rng, groups)
                opt.zero_grad()
                row = step_gradient(model, tokenizer, [g for g, _ in groups], picks, v, keep_span, base,
                                    refusal_tokens, s)  # fmt: skip
                lr = opt.param_groups[0]["lr"]
                opt.step()
                if sched is not None:
                    sched.step()
                if s.average and step >= s.steps // 2:
                    mean += unit_direction(v.detach().double(), keep_span)
                row = {"step": step, "lr": lr, **row}
                history.append(row)
                bar.set_postfix(
                    target=f"{row['target_score']:.2f}", keep=f"{row['keep_score']:.2f}", kl=f"{row['kl']:.3f}"
                )
    return Optimized(unit_direction(mean if s.average else v.detach().double(), keep_span), history)
