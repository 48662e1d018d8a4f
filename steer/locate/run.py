"""The locate stage: contrastive activations -> candidate directions -> the selected one.

loaded = steer.load()
dirs = steer.directions(loaded, Settings())   # DirectionSet [layer, position, d_model] + selection
"""

from __future__ import annotations

import random
import sys
from dataclasses import asdict

import torch

from steer import __version__
from steer.errors import SteerError
from steer.locate.directions import DirectionSet, diff_in_means, project_off
from steer.locate.scores import refusal_tokens, split_by_score
from steer.locate.select import Selection, select_direction
from steer.locate.settings import Settings
from steer.model.collect import batched_last_logits, residual_means
from steer.model.load import Loaded
from steer.prompts import Prompt, chat_texts, load_prompts, post_instruction_length, prompts_hash, seeded_sample


def log(msg: str) -> None:
    """Progress on stderr, one line."""
    print(f"[steer] {msg}", file=sys.stderr, flush=True)


def train_val(source: str, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """Train and validation prompts: the file's own split, else a seeded 80/20 cut."""
    prompts = load_prompts(source)
    if any(p.split != "?" for p in prompts):
        train = [p for p in prompts if p.split == "train"]
        val = [p for p in prompts if p.split == "val"]
    else:
        order = list(range(len(prompts)))
        random.Random(seed).shuffle(order)
        cut = max(1, len(order) // 5)
        val, train = [prompts[i] for i in sorted(order[:cut])], [prompts[i] for i in sorted(order[cut:])]
    if not train or not val:
        raise SteerError(f"prompt set {source} needs at least 2 prompts (train and validation)")
    return train, val


def check_prompts(settings: Settings) -> None:
    """Read every prompt source up front, so bad input fails before the model loads."""
    train_val(settings.target, settings.seed)
    train_val(settings.baseline, settings.seed)


def _kept(
    prompts: list[Prompt], logits: torch.Tensor, tokens: list[int], refused: bool, n: int | None, seed: int
) -> tuple[list[Prompt], torch.Tensor]:
    """The prompts the model refuses (or answers), a seeded sample of n of them (None: all), and their logits."""
    idx = split_by_score(logits, tokens, refused)
    idx = idx if n is None else seeded_sample(idx, n, seed)
    return [prompts[i] for i in idx], logits[idx]


def directions(loaded: Loaded, settings: Settings) -> DirectionSet:
    """Collect means on the train splits, take differences, select on the validation splits."""
    model, tok, s = loaded.model, loaded.tokenizer, settings
    torch.manual_seed(s.seed)
    t_train, t_val = train_val(s.target, s.seed)
    b_train, b_val = train_val(s.baseline, s.seed)
    # 1. twice what selection needs: filtering by refusal below drops some
    t_val, b_val = seeded_sample(t_val, 2 * s.n_val, s.seed), seeded_sample(b_val, 3 * s.n_val, s.seed)
    texts = lambda ps: chat_texts(tok, [p.text for p in ps])  # noqa: E731
    log(
        f"finding refusal tokens from the model's own refusals ({len(t_train)} target, "
        f"{len(b_train)} baseline train prompts)"
    )
    probe = refusal_tokens(model, tok, texts(t_train), texts(b_train), s.seed, s.batch_size)
    tokens = probe.tokens
    # 2. refused target and answered baseline prompts only (Arditi et al.); validation keeps its base logits
    t_train, _ = _kept(t_train, probe.target_logits, tokens, True, None, s.seed)
    b_train, _ = _kept(b_train, probe.baseline_logits, tokens, False, None, s.seed)
    t_val, t_val_logits = _kept(t_val, _logits(loaded, texts(t_val), s), tokens, True, s.n_val, s.seed)
    b_val, b_val_logits = _kept(b_val, _logits(loaded, texts(b_val), s), tokens, False, 2 * s.n_val, s.seed)
    n_pos = post_instruction_length(tok)
    log(
        f"refusal tokens {[tok.decode([t]) for t in tokens]}; kept {len(t_train)} refused target and "
        f"{len(b_train)} answered baseline train prompts; collecting activations at {n_pos} positions"
    )
    # 3. residual means and their difference per layer and position
    mean_t = residual_means(model, tok, texts(t_train), n_pos, s.batch_size, desc="target")
    mean_b = residual_means(model, tok, texts(b_train), n_pos, s.batch_size, desc="baseline")
    diffs = diff_in_means(mean_t, mean_b)
    dirs = DirectionSet(project_off(diffs, mean_b) if s.projected else diffs, mean_t, mean_b)
    # 4. selection on the validation prompts
    log(
        f"selecting among {diffs.shape[0]} layers x {n_pos} positions on {len(t_val)} + {len(b_val)} validation prompts"
    )
    sel = select_direction(
        model,
        tok,
        dirs,
        texts(t_val),
        texts(b_val),
        tokens,
        kl_max=s.kl_max,
        screen=s.screen,
        screen_prompts=s.screen_prompts,
        batch_size=s.batch_size,
        base_logits=(t_val_logits, b_val_logits),
    )
    prompts = {"target_train": t_train, "baseline_train": b_train, "target_val": t_val, "baseline_val": b_val}
    dirs.meta = _meta(loaded, s, diffs, sel, prompts)
    return dirs


def _meta(loaded: Loaded, s: Settings, diffs: torch.Tensor, sel: Selection, prompts: dict[str, list[Prompt]]) -> dict:
    """The directions file's sidecar: model, method, layout, prompt hashes, settings, the selection."""
    tok = loaded.tokenizer
    return {
        "steer_version": __version__,
        "model": loaded.source,
        "hidden_size": int(diffs.shape[-1]),
        "method": "diff-in-means" + (" (projected)" if s.projected else ""),
        "layout": "[layer, position, d_model]; layer l = residual stream entering decoder layer l; "
        "position -1 = last token",
        "prompts": {name: {"n": len(ps), "sha256": prompts_hash(ps)} for name, ps in prompts.items()},
        "settings": asdict(s),
        "selected": {"layer": sel.layer, "position": sel.position},
        "selection": sel.to_dict() | {"refusal_token_strings": [tok.decode([t]) for t in sel.refusal_tokens]},
    }


def _logits(loaded: Loaded, texts: list[str], s: Settings) -> torch.Tensor:
    return batched_last_logits(loaded.model, loaded.tokenizer, texts, s.batch_size)
