"""The before/after evaluation of `steer abliterate`: the same engine and suites as `steer eval`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from steer.eval.compare import context
from steer.eval.kl import live, suite_kl
from steer.eval.suites import EvalConfig, run_suites
from steer.locate.run import Settings, log
from steer.model.load import Loaded


def eval_config(settings: Settings) -> EvalConfig:
    """Sensitive (EN, ZH), harmful and harmless prompts of settings.eval_split (default the held-out test split),
    eval_limit per group, decoded by the protocol of
    docs/evaluation.md (settings.max_new_tokens sets the refusal suite's budget)."""
    return EvalConfig(
        ["censorship", "refusal"],
        limits={"*": settings.eval_limit},
        split=settings.eval_split,
        seed=settings.seed,
        batch_size=settings.batch_size,
        max_new_tokens={"refusal": settings.max_new_tokens},  # censorship: the protocol's CANDOUR_TOKENS
        dtype=settings.dtype,  # the model is loaded in it (steer.pipeline.compute_dtype)
    )


def _kl(ctx, preview: Callable[[], AbstractContextManager]) -> dict:
    """KL(base || edited) on harmless test prompts, the edit previewed by `preview()` (a context
    manager: hooks, or a reversible weight edit), so the base weights are the reference. The suite
    also reports it over the prompts the base model answers: where it over-refused a harmless
    prompt, a change is the point of the edit; damage is the change on the others."""
    ctx.reference = live(ctx)
    base_fn = ctx.reference.logits

    def edited_fn(batch, keep):
        with preview():
            return base_fn(batch, keep)

    kl = suite_kl(ctx, edited_fn)
    ctx.reference = None
    return kl


@dataclass
class BeforeAfter:
    """Suite results of the base model and of the edited one; after["kl"] is KL(base || edited)."""

    before: dict
    after: dict


def before_after(
    loaded: Loaded, config: EvalConfig, preview: Callable[[], AbstractContextManager], apply: Callable[[], None]
) -> BeforeAfter:
    """Evaluate the base model, measure KL against the previewed edit, apply the edit to the
    weights (apply()), evaluate again."""
    log("evaluating the base model on held-out prompts")
    ctx = context(loaded, config)
    before = run_suites(ctx)
    kl = _kl(ctx, preview)
    apply()
    log("evaluating the edited model")
    after = run_suites(context(loaded, config))
    after["kl"] = kl
    return BeforeAfter(before, after)
