"""Prepare the targeted search: refusal tokens, contrasts on the train splits, the optimized
direction, and the validation prompts with the base model's logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from steer.locate.directions import remove_span
from steer.locate.scores import greedy_refused, refusal_score, refusal_tokens, split_by_score
from steer.model.collect import batched_last_logits, residual_means
from steer.prompts import Prompt, chat_texts, load_prompts, post_instruction_length, prompts_hash, seeded_sample
from steer.targeted.contrasts import Contrasts, compute_contrasts
from steer.targeted.optimize import Group, OptimizeSettings, optimize_direction
from steer.targeted.search import ValData
from steer.targeted.settings import TargetedSettings


@dataclass
class Prepared:
    """What the search, the confirmation and the readout start from (prepare)."""

    contrasts: Contrasts
    val: ValData
    val_prompts: dict[str, list[Prompt]]  # sensitive/en, sensitive/zh, harmful: confirmed by the judge
    keep_floor: float
    meta: dict
    groups: dict[str, Group]  # train prompts with base logits (what steer.targeted.optimize trains on)


def prepare(model, tokenizer, s: TargetedSettings) -> Prepared:
    """Refusal tokens, contrasts on the train splits, validation prompts with base logits."""
    texts = lambda ps: chat_texts(tokenizer, [p.text for p in ps])  # noqa: E731
    logits = lambda ps: batched_last_logits(model, tokenizer, texts(ps), s.batch_size)  # noqa: E731
    train = {name: load_prompts(name, "train") for name in ("controls", "harmful", "harmless")}
    train = {"sensitive": s.target_prompts("train"), **train}
    probe = refusal_tokens(model, tokenizer, texts(train["sensitive"]), texts(train["harmless"]), s.seed, s.batch_size)
    ref = probe.tokens
    lg = {"sensitive": probe.target_logits, "harmful": logits(train["harmful"]), "harmless": probe.baseline_logits}
    idx = {
        "sensitive": _refused(lg["sensitive"], ref, s) if s.only_refused else list(range(len(train["sensitive"]))),
        "harmful": split_by_score(lg["harmful"], ref, True),
        "harmless": split_by_score(lg["harmless"], ref, False),
    }
    for name, keep in idx.items():
        train[name], lg[name] = [train[name][i] for i in keep], lg[name][keep]
    contrasts = compute_contrasts(
        model,
        tokenizer,
        {k: texts(v) for k, v in train.items()},
        post_instruction_length(tokenizer),
        k=s.k_max - 1,
        batch_size=s.batch_size,
    )
    optimized = None  # what the report records about the optimization
    groups = {n: Group(texts(train[n]), lg[n]) for n in idx}
    if s.optimize_steps > 0:
        optimized = _optimize(model, tokenizer, contrasts, groups, ref, s)
        if s.own_direction:
            optimized["own"] = _own_directions(model, tokenizer, contrasts, groups, ref, s)
    val, data = _validation(model, tokenizer, s, ref)
    base_keep = float(refusal_score(data.base_keep, ref).mean())
    floor = s.keep_fraction * base_keep if base_keep > 0 else base_keep - 1.0
    confirm = {
        "sensitive/en": [p for p in val["sensitive"] if p.lang == "en"],
        "sensitive/zh": [p for p in val["sensitive"] if p.lang == "zh"],
        "harmful": val["harmful"],
    }
    meta = {
        "refusal_tokens": [tokenizer.decode([t]) for t in ref],
        "base_keep_score": base_keep,
        "keep_floor": floor,
        "prompts": {f"{k}_train": {"n": len(v), "sha256": prompts_hash(v)} for k, v in train.items()},
    }
    if optimized is not None:
        meta["optimize"] = optimized
    return Prepared(contrasts, data, confirm, floor, meta, groups)


def _validation(model, tokenizer, s: TargetedSettings, ref: list[int]) -> tuple[dict[str, list[Prompt]], ValData]:
    """The validation splits, and the search's validation data: seeded samples of the sensitive and
    harmful prompts the model refuses and of the harmless ones it answers, with their base logits."""
    texts = lambda ps: chat_texts(tokenizer, [p.text for p in ps])
    val = {name: load_prompts(name, "val") for name in ("harmful", "harmless")}
    val = {"sensitive": s.target_prompts("val"), **val}
    vlg = {name: batched_last_logits(model, tokenizer, texts(ps), s.batch_size) for name, ps in val.items()}
    keep_idx = lambda name, refused, n: seeded_sample(split_by_score(vlg[name], ref, refused), n, s.seed)
    t_idx = seeded_sample(
        _refused(vlg["sensitive"], ref, s) if s.only_refused else list(range(len(val["sensitive"]))), s.n_val, s.seed
    )
    k_idx, h_idx = keep_idx("harmful", True, s.n_val), keep_idx("harmless", False, 2 * s.n_val)
    data = ValData(
        texts([val["sensitive"][i] for i in t_idx]),
        texts([val["harmful"][i] for i in k_idx]),
        texts([val["harmless"][i] for i in h_idx]),
        vlg["sensitive"][t_idx],
        vlg["harmful"][k_idx],
        vlg["harmless"][h_idx],
        ref,
    )
    return val, data


def _refused(logits, ref: list[int], s: TargetedSettings) -> list[int]:
    """The target prompts counted as refused, by s.target_filter (steer.locate.scores)."""
    return greedy_refused(logits, ref) if s.target_filter == "greedy" else split_by_score(logits, ref, True)


def _optimize(
    model, tokenizer, contrasts: Contrasts, groups: dict[str, Group], ref: list[int], s: TargetedSettings
) -> dict:
    """steer.targeted.optimize on the train splits, from the projected censorship direction at 60% depth
    (last position), orthogonal to every layer's harmful direction when keep_safety; stores the
    result in contrasts.optimized and returns what the report records."""
    layer = round(0.6 * (contrasts.censorship.shape[0] - 1))
    init = remove_span(contrasts.censorship, contrasts.harmless_mean)[layer, -1]
    span = contrasts.harmful[:, -1] if s.keep_safety else None
    o = OptimizeSettings(steps=s.optimize_steps, seed=s.seed)
    contrasts.optimized, history = optimize_direction(
        model, tokenizer, groups["sensitive"], groups["harmful"], groups["harmless"], init, ref, span, o
    )
    return {
        "init": {"contrast": "censorship/projected", "layer": layer, "position": -1},
        "settings": asdict(o),
        "history": history,
    }


def _own_directions(
    model, tokenizer, contrasts: Contrasts, groups: dict[str, Group], ref: list[int], s: TargetedSettings
) -> dict:
    """One optimized direction per set in s.own_direction, trained on all its train prompts from its own contrast
    (mean minus the harmless mean, projected off it) at the main direction's layer, orthogonal to the harmful
    directions, the main optimized direction and the sets' earlier directions; stored in contrasts.extra [m, d]."""
    layer = round(0.6 * (contrasts.censorship.shape[0] - 1))
    harmless = contrasts.harmless_mean[layer, -1]
    found, meta = [], {}
    for name in s.own_direction.split(","):
        ps = load_prompts(name, "train")
        texts = chat_texts(tokenizer, [p.text for p in ps])
        group = Group(texts, batched_last_logits(model, tokenizer, texts, s.batch_size))
        mean = residual_means(model, tokenizer, texts, 1, s.batch_size, desc=name)[layer, -1]
        init = remove_span(mean - harmless, harmless)
        span = [contrasts.harmful[:, -1]] if s.keep_safety else []
        main = [] if contrasts.optimized is None else [contrasts.optimized.double().reshape(1, -1)]
        span = torch.cat([*span, *main, *(d.reshape(1, -1) for d in found)])
        o = OptimizeSettings(steps=s.optimize_steps, seed=s.seed)
        direction, history = optimize_direction(
            model, tokenizer, group, groups["harmful"], groups["harmless"], init, ref, span.double(), o
        )
        found.append(direction)
        meta[name] = {"prompts": len(ps), "layer": layer, "history": history}
    contrasts.extra = torch.stack(found)
    return meta
