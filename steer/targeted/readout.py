"""A learned readout along the edit direction: a rank-1 weight update that is not a projection.

A projection edit leaves each residual writer W (o_proj, down_proj) writing (1 - s) r^T W x along
the edit direction r: one fixed scale per writer, the same for a censored question and a
harmful request. Where the two refusals share r (the embedded model, docs/targeted.md), no
choice of scales removes one and keeps the other beyond the trade-off curve measured on
2026-11-21 and 2026-11-22 (a1caa94..7a99b51, docs/history.md). This stage learns, for every
writer, a vector a [d_in] so that it writes

    W' x = W x + r (a^T x),        i.e.  W' = W + r a^T      (rank 1, along r only)

on top of an edit already applied: what goes along r becomes a learned linear function of the
writer's input, so it can differ between kinds of prompt. a = 0 is the edit unchanged. Trained
with steer.targeted.optimize's loss (weighted_loss: target refusal score down, harmful refusal
score kept, first-token KL to the base model on harmless prompts) plus an L2 penalty on the written
coefficient, by Adam through the frozen model; hooks apply exactly the update the weights get
(`bake`), so the trained model and the saved checkpoint agree up to float rounding.

Writers whose output goes through a norm before the residual add (Gemma) are refused: there
the update would not stay along r.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from steer.edit.preview import Edit, preview
from steer.edit.rank1 import Readout, scaled, writers, zeros
from steer.errors import SteerError
from steer.eval.engine import GenSpec, generate_ids
from steer.model.collect import batched_last_logits, encode_batches, forward, last_logits, left_pad
from steer.targeted.optimize import (
    Group,
    OptimizeSettings,
    chunks,
    draw,
    frozen,
    joined,
    loss_rows,
    row_metrics,
    weighted_loss,
)
from steer.targeted.prepare import Prepared
from steer.targeted.search import EditParams, ValData, metrics
from steer.targeted.settings import TargetedSettings


@dataclass
class ReadoutSettings:
    """Defaults: the best of the configurations results/readout-probe/ measured (lr 3e-4, L2 300)."""

    steps: int = 32
    lr: float = 3e-4  # Adam step per input coordinate of a
    l2: float = 300.0  # penalty weight on mean (a^T x)^2 over the minibatch's last positions (what a writes)
    # KL on harmless prompts at the first answer token (1) or also at the base answer's next kl_tokens - 1
    # tokens (needs continuations()): a writes at every position, the first token alone constrains it at one
    kl_tokens: int = 1
    components: tuple[str, ...] = ("attn", "mlp")  # writer components that get a readout (attention alone: no gain)
    # weights, margin, batches, seed of steer.targeted.optimize's loss; KL and keep weighted up (with its defaults,
    # 40 and 2, validation KL and harmful scores moved further: results/readout-probe/), twice the harmless prompts
    # per step
    loss: OptimizeSettings = field(
        default_factory=lambda: OptimizeSettings(kl_weight=120.0, keep_weight=4.0, harmless_batch=24)
    )


SCALES = (1.0, 0.75, 0.5, 0.25)  # fractions of a trained readout fit_scale tries, largest first


@dataclass
class Continuations:
    """Harmless prompts teacher-forced through the base model's greedy answer: token ids (prompt +
    the answer's first n - 1 tokens) and the base model's log-probabilities [N, n, vocab]
    (bfloat16) at the last n positions: the first answer token and the n - 1 after it."""

    ids: list[list[int]]
    base_logp: torch.Tensor


@torch.inference_mode()
def continuations(model, tokenizer, texts: list[str], n: int, batch_size: int = 16) -> Continuations:
    """Continuations of chat-formatted texts on `model` (the base model); prompts whose greedy
    answer ends before n tokens are left out."""
    answers = generate_ids(model, tokenizer, texts, GenSpec(n), batch_size)
    prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = [p + a["ids"][: n - 1] for p, a in zip(prompts, answers) if len(a["ids"]) >= n]
    if not ids:
        raise SteerError(f"no harmless prompt has a base answer of {n} tokens")
    logp = []
    for i in range(0, len(ids), batch_size):
        logits = (
            forward(model, left_pad(ids[i : i + batch_size], tokenizer.pad_token_id, share_prefix=True), n)
            .float()
            .cpu()
        )
        logp.append(torch.log_softmax(logits, -1).to(torch.bfloat16))
    return Continuations(ids, torch.cat(logp))


class ScaleFit(NamedTuple):
    """fit_scale's result: the largest scale that met the constraints (0.0: none) and every scale's metrics."""

    scale: float
    fits: list[dict]


class Trained(NamedTuple):
    """train_readout's result: the readout (a [d_in] per writer) and the per-step metrics."""

    readout: Readout
    history: list[dict]


@torch.inference_mode()
def fit_scale(
    model,
    tokenizer,
    r: torch.Tensor,
    readout: Readout,
    val: ValData,
    keep_floor: float | None,
    kl_max: float | None,
    scales: tuple[float, ...] = SCALES,
    batch_size: int = 16,
    kl_stat: str = "kl_ucb",
) -> ScaleFit:
    """The largest t in scales whose readout t*a meets the search's constraints on validation
    prompts (harmful score >= keep_floor, first-token KL <= kl_max, the KL being its 95% bound
    (kl_stat="kl_ucb", as the search) or its mean ("kl"); steer.targeted.search.metrics), and every
    scale's metrics. 0.0 when none does: the edit stays as it was.
    The readout is trained on minibatches of the train split; this checks it, and backs off along
    the learned update, on prompts it was not trained on."""
    if kl_stat not in ("kl", "kl_ucb"):
        raise ValueError(f"kl_stat must be 'kl' or 'kl_ucb', not {kl_stat!r}")
    rows = []
    for t in sorted(scales, reverse=True):
        with preview(model, Edit(r, project=False, readout=scaled(readout, t))):
            m = metrics(batched_last_logits(model, tokenizer, val.target + val.keep + val.harmless, batch_size), val)
        m["scale"] = t
        m["feasible"] = (keep_floor is None or m["keep_score"] >= keep_floor) and (
            kl_max is None or m[kl_stat] <= kl_max
        )
        rows.append(m)
        if m["feasible"]:
            return ScaleFit(t, rows)
    return ScaleFit(0.0, rows)


def train_readout(
    model,
    tokenizer,
    target: Group,
    keep: Group,
    harmless: Group,
    r: torch.Tensor,
    refusal_tokens: list[int],
    s: ReadoutSettings | None = None,
    cont: Continuations | None = None,
    progress: bool = True,
) -> Trained:
    """Learn the readout for unit direction r [d] on a model that already carries its edit (the
    groups' base_logits are the unedited model's). With s.kl_tokens > 1 the KL term also covers
    the base model's answer tokens after the first, from `cont` (continuations(), computed on the
    base model), whose prompts then replace `harmless`. Returns the readout and per-step metrics.
    The model's parameters are frozen for the duration and restored after; eval mode expected."""
    s = s or ReadoutSettings()
    r = (r / r.norm()).float()
    params = {k: a.requires_grad_(True) for k, a in zeros(model, s.components).items()}
    opt = torch.optim.Adam(list(params.values()), lr=s.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.steps)
    ls, rng = s.loss, random.Random(s.loss.seed)
    if s.kl_tokens > 1 and (cont is None or cont.base_logp.shape[1] != s.kl_tokens):
        raise ValueError(
            f"kl_tokens = {s.kl_tokens} needs the harmless prompts' continuations of that length "
            "(readout.continuations)"
        )
    cont = cont if s.kl_tokens > 1 else None
    if cont is not None:  # harmless prompts are drawn from those with a continuation
        harmless = Group([str(i) for i in range(len(cont.ids))], cont.base_logp[:, 0])
    groups = [(target, ls.target_batch), (keep, ls.keep_batch), (harmless, ls.harmless_batch)]
    base = [g.base_logits.detach().clone().float() for g, _ in groups]
    mods = writers(model, s.components)
    history = []
    with frozen(model):
        with torch.enable_grad(), tqdm(range(s.steps), desc="training readout", disable=not progress) as bar:
            for step in bar:
                picks, _ = draw(rng, groups)
                opt.zero_grad()
                row = _accumulate(model, tokenizer, [g for g, _ in groups], picks, r, params, mods, cont, base,
                                  refusal_tokens, s)  # fmt: skip
                row = {"step": step, "lr": opt.param_groups[0]["lr"], **row}
                opt.step()
                sched.step()
                history.append(row)
                bar.set_postfix(
                    target=f"{row['target_score']:.2f}", keep=f"{row['keep_score']:.2f}", kl=f"{row['kl']:.3f}"
                )
    return Trained({k: a.detach().clone() for k, a in params.items()}, history)


def _accumulate(
    model,
    tokenizer,
    groups: list[Group],
    picks: list[list[int]],
    r: torch.Tensor,
    params: Readout,
    mods: dict,
    cont: Continuations | None,
    base: list[torch.Tensor],
    refusal_tokens: list[int],
    s: ReadoutSettings,
) -> dict:
    """One minibatch's gradient, accumulated into params' .grad over chunks of s.chunk_rows rows, and its metrics.

    The loss is optimize's (weighted_loss: each group's row terms over that group's size in the minibatch) + l2 x
    the mean over writers and rows of what the readout writes (a^T x)^2 + (with continuations) kl_weight x the mean
    KL at the harmless answers' later tokens; every term is a sum over rows divided by a whole-minibatch count, so
    the chunks' losses add up to the minibatch's and so do their gradients."""
    n = [len(p) for p in picks]
    parts, total, written, later = [], 0.0, 0.0, 0.0
    for chunk in chunks(picks, s.loss.chunk_rows):  # gradients accumulate chunk by chunk (the graph's memory)
        hooked: list[torch.Tensor] = []
        grab = lambda: _written(mods, params, hooked)  # noqa: E731  (the rows only, not a shared prefix)
        texts = [groups[g].texts[i] for g in (0, 1) for i in chunk[g]]
        if cont is None:
            logits = _forward(model, tokenizer, texts + [groups[2].texts[i] for i in chunk[2]], r, params, grab)
            kl_later = None
        else:
            logits, kl_later = _forward_cont(model, tokenizer, texts, cont, chunk[2], r, params, grab)
        rows = loss_rows(logits, chunk, base, refusal_tokens)
        penalty = torch.stack(hooked).sum() / (len(hooked) * sum(n))  # every writer fires once per forward
        loss = weighted_loss(rows, n, s.loss) + s.l2 * penalty
        if kl_later is not None:  # KL at the answer tokens after the first, weighted like the first token's
            kl_later = kl_later / (n[2] * (cont.base_logp.shape[1] - 1))
            loss = loss + s.loss.kl_weight * kl_later
            later += kl_later.item()
        loss.backward()
        parts.append(rows)
        total, written = total + loss.item(), written + penalty.item()
    rows = joined(parts)
    loss = total - s.l2 * written - s.loss.kl_weight * later  # optimize's loss alone, as its history reports it
    out = {**row_metrics(loss, rows), "written": written}
    if cont is not None:
        out["kl_later"] = later
    return out


@contextmanager
def _written(mods: dict[str, torch.nn.Module], readout: Readout, into: list[torch.Tensor]) -> Iterator[None]:
    """Hooks appending, per writer, the sum over rows of (a^T x)^2 at each row's last position (what it writes along
    r) to `into`."""
    hs = [
        mods[k].register_forward_hook(lambda m, args, out, a=a: into.append((args[0][:, -1].float() @ a).pow(2).sum()))
        for k, a in readout.items()
    ]
    try:
        yield
    finally:
        for h in hs:
            h.remove()


def _forward(model, tokenizer, texts: list[str], r: torch.Tensor, readout: Readout, rest_hooks=None) -> torch.Tensor:
    """Last-position logits [N, vocab] with the readout hooked in, rows in the order of texts
    (rest_hooks: steer.model.collect.forward's, a context for the rows' own tokens)."""
    ((idx, batch),) = list(encode_batches(tokenizer, texts, len(texts), share_prefix=True))
    with preview(model, Edit(r, project=False, readout=readout)):
        logits = last_logits(model, batch, rest_hooks)
    out = torch.empty_like(logits)
    out[torch.tensor(idx)] = logits
    return out


def _forward_cont(
    model,
    tokenizer,
    texts: list[str],
    cont: Continuations,
    picks: list[int],
    r: torch.Tensor,
    readout: Readout,
    rest_hooks=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One left-padded batch: chat texts (target and keep prompts) then the picked harmless
    continuations. Returns first-answer-position logits [len(texts) + len(picks), vocab] (a
    harmless row's first answer position is n positions from its end) and KL(base || edited) summed
    over the harmless rows' n - 1 later positions."""
    n = cont.base_logp.shape[1]
    ids = (tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []) + [cont.ids[i] for i in picks]
    batch = left_pad(ids, tokenizer.pad_token_id, share_prefix=True)
    with preview(model, Edit(r, project=False, readout=readout)):
        out = forward(model, batch, n, rest_hooks).float().cpu()  # [B, n, vocab]
    t = len(texts)
    lp = cont.base_logp[picks, 1:].float()
    later = (lp.exp() * (lp - torch.log_softmax(out[t:, 1:], -1))).sum()  # summed over rows and positions
    return torch.cat([out[:t, -1], out[t:, 0]]), later


@dataclass
class ReadoutFit:
    """fit_readout's result: the readout at the scale kept (None: none kept, or the architecture takes
    none) and what the report records (settings, criterion, scale, validation fits, train history; or
    "skipped" and why)."""

    readout: Readout | None
    info: dict


def fit_readout(
    model,
    tokenizer,
    prep: Prepared,
    basis: torch.Tensor,
    params: EditParams,
    s: TargetedSettings,
    edit_kl: float | None = None,
) -> ReadoutFit:
    """steer.targeted.readout on top of the chosen edit, the model's weights as they were on return:
    trained on the train splits along r = basis[0], then backed off to the largest fraction that
    keeps the harmful floor and first-token KL on the validation prompts within its bound:
    s.readout_kl "kl" (mean <= s.kl_max), "kl_ucb" (95% bound <= s.kl_max) or "edit" (mean <=
    edit_kl, the chosen edit's own validation mean: the readout spends no KL). The edit is
    written into the weights for the duration (restored after), so the readout is trained on
    exactly the edited weights. Returns that scaled readout (None when no fraction qualifies:
    the edit stays as chosen) and what the report records. An architecture whose writers cannot
    take a readout (post-norm, mixture of experts) gets none, and the report says why."""
    rs = ReadoutSettings(
        steps=s.readout_steps,
        lr=s.readout_lr,
        kl_tokens=s.readout_kl_tokens,
        loss=replace(ReadoutSettings().loss, seed=s.seed),
    )
    try:
        zeros(model, rs.components)
    except SteerError as exc:
        return ReadoutFit(None, {"skipped": str(exc)})
    if s.readout_kl not in ("kl", "kl_ucb", "edit") or (s.readout_kl == "edit" and edit_kl is None):
        raise ValueError(f"readout_kl {s.readout_kl!r} needs to be 'kl', 'kl_ucb' or 'edit' (with edit_kl)")
    stat, bound = ("kl", edit_kl) if s.readout_kl == "edit" else (s.readout_kl, s.kl_max)
    g = prep.groups
    cont = (
        continuations(model, tokenizer, g["harmless"].texts, rs.kl_tokens, s.batch_size) if rs.kl_tokens > 1 else None
    )
    r = basis[0].float()
    with preview(model, params.edit(basis), in_weights=True):  # the weights apply_edit writes, then the readout's hooks
        readout, history = train_readout(
            model, tokenizer, g["sensitive"], g["harmful"], g["harmless"], r, prep.val.refusal_tokens, rs, cont
        )
        scale, fits = fit_scale(
            model, tokenizer, r, readout, prep.val, prep.keep_floor, bound, SCALES, s.batch_size, kl_stat=stat
        )
    info = {
        "settings": asdict(rs),
        "kl_stat": stat,
        "kl_max": bound,
        "criterion": s.readout_kl,
        "scale": scale,
        "fits": fits,
        "history": history,
        "writers": len(readout),
    }
    return ReadoutFit(scaled(readout, scale) if scale > 0 else None, info)
