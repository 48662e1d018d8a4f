"""Search: choose the edit's parameters with Optuna, scored without decoding.

A trial picks EditParams (fractional direction index and position, subspace size k, projected
or plain direction, attention and MLP strength profiles, embedding strength, norm-preserving or
not), previews the edit (hooks, or a reversible weight edit for the norm-preserving variant) and
measures on validation prompts, one forward pass each:
  - target score: mean refusal score (log-odds of the refusal tokens) on refused target prompts
    (minimized);
  - KL: mean first-token KL(base || edited) on harmless prompts (minimized);
  - keep score: mean refusal score on harmful prompts, which must stay above a floor (a
    constraint, so safety refusals survive).
The study (TPE, seeded) minimizes the target score subject to the keep floor and a KL bound, or,
without a bound, both target score and KL; it is stored in a journal file, so a search resumes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from steer.edit.preview import Edit, preview
from steer.edit.project import Profile
from steer.edit.rank1 import Readout
from steer.errors import SteerError
from steer.locate.directions import interpolate, orthonormalize, remove_span
from steer.locate.scores import first_token_kl, kl_bound, refusal_score
from steer.model.collect import batched_last_logits
from steer.targeted.settings import TARGET_FLOOR


@dataclass(frozen=True)
class EditParams:
    """Everything needed to rebuild an edit from a directions file (stored in the manifest)."""

    index: float  # fractional layer of the main direction (interpolated between layers)
    position: int  # post-instruction position (-1 = last token)
    k: int = 1  # subspace size: the main direction plus k - 1 principal components
    projected: bool = True  # direction variant: projected off the harmless mean, or plain
    contrast: str = "censorship"  # which contrast the main direction comes from (SearchInputs.directions)
    attn: Profile = field(default_factory=Profile)
    mlp: Profile = field(default_factory=Profile)
    embed: float = 1.0
    preserve_norm: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EditParams:
        """The inverse of to_dict."""
        return cls(**{**d, "attn": Profile(**d["attn"]), "mlp": Profile(**d["mlp"])})

    def edit(self, basis: torch.Tensor, readout: Readout | None = None) -> Edit:
        """The Edit these parameters make of basis [k, d] (edit_basis), with an optional readout along basis[0]."""
        return Edit(
            basis,
            profiles={"attn": self.attn, "mlp": self.mlp},
            embed=self.embed,
            preserve_norm=self.preserve_norm,
            readout=readout,
        )


@dataclass
class SearchInputs:
    """Directions the search draws from, all float64.

    directions: {"<contrast>/projected" or "<contrast>/plain": [L, P, d]} candidate directions;
    components: [L, P, K, d] principal components of per-prompt differences (or None: k = 1);
    keep: [L, P, m, d] vectors every edit direction is made orthogonal to (the harmful-refusal
    direction, the harmless mean), or None;
    extra: [m, d] directions every edit removes beside its own (--own-direction), or None.
    """

    directions: dict[str, torch.Tensor]
    components: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    extra: torch.Tensor | None = None


def edit_basis(inputs: SearchInputs, p: EditParams) -> torch.Tensor:
    """The k directions [k, d] (float64) an edit removes, then `extra`'s, orthogonal to `keep` where given."""
    dirs = inputs.directions[f"{p.contrast}/{'projected' if p.projected else 'plain'}"]
    layer = int(round(p.index))
    vecs = [interpolate(dirs, p.index, p.position)]
    if p.k > 1:
        if inputs.components is None or inputs.components.shape[2] < p.k - 1:
            raise ValueError(f"k = {p.k} needs {p.k - 1} principal components per layer")
        vecs += list(inputs.components[layer, p.position, : p.k - 1].double())
    if inputs.extra is not None:
        vecs += list(inputs.extra.double())
    basis = torch.stack(vecs)
    if inputs.keep is not None:
        basis = remove_span(basis, inputs.keep[layer, p.position].expand(len(basis), *inputs.keep.shape[2:]))
    # in order (the main direction first), dropping what the removal of `keep` made dependent
    try:
        return orthonormalize(basis, drop_dependent=True, rtol=1e-6)
    except ValueError:
        raise ValueError("the edit direction lies inside the span it must stay orthogonal to") from None


@dataclass
class ValData:
    """Validation prompts (chat-formatted) with the base model's last-position logits."""

    target: list[str]
    keep: list[str]
    harmless: list[str]
    base_target: torch.Tensor
    base_keep: torch.Tensor
    base_harmless: torch.Tensor
    refusal_tokens: list[int]


def fingerprint(inputs: SearchInputs, val: ValData) -> str:
    """sha256 of what a trial's scores depend on besides the model: every direction's bytes and the
    validation prompts. Part of a study's file name, so a journal is resumed only with the same inputs
    (new code or data that changes a direction starts a new study instead of mixing in stale scores)."""
    h = hashlib.sha256()
    named = [
        *((k, inputs.directions[k]) for k in sorted(inputs.directions)),
        ("components", inputs.components),
        ("keep", inputs.keep),
        *((("extra", inputs.extra),) if inputs.extra is not None else ()),
    ]
    for name, t in named:
        h.update(name.encode())
        if t is not None:
            h.update(str(tuple(t.shape)).encode() + t.detach().double().contiguous().numpy().tobytes())
    for texts in (val.target, val.keep, val.harmless):
        h.update("\x00".join(texts).encode() + b"\x01")
    h.update(str(val.refusal_tokens).encode())
    return h.hexdigest()


# Greedy answers on the embedded model refuse only at target refusal scores above about -1 (every
# judged denial scored above it, none under -1.5 was refused: results/near-refusal/), so the share
# of target prompts above it is a no-decoding proxy of the refusal rate.
NEAR_REFUSAL = -1.0


@torch.inference_mode()
def score(
    model,
    tokenizer,
    basis: torch.Tensor,
    p: EditParams,
    val: ValData,
    batch_size: int = 16,
    target_floor: float | None = TARGET_FLOOR,
) -> dict:
    """Target and keep refusal scores and harmless first-token KL with the edit applied.
    target_score: mean of the target prompts' scores clamped below at target_floor (None: plain
    mean); target_raw: the plain mean; target_high: the share of target prompts scoring above NEAR_REFUSAL."""
    with preview(model, p.edit(basis)):
        logits = batched_last_logits(model, tokenizer, val.target + val.keep + val.harmless, batch_size)
    return metrics(logits, val, target_floor)


def metrics(logits: torch.Tensor, val: ValData, target_floor: float | None = TARGET_FLOOR) -> dict:
    """score's measures from the last-position logits [N, vocab] of val.target + val.keep + val.harmless."""
    t, k = len(val.target), len(val.keep)
    kl = first_token_kl(val.base_harmless, logits[t + k :])
    target = refusal_score(logits[:t], val.refusal_tokens)
    clamped = target if target_floor is None else target.clamp(min=target_floor)
    return {
        "target_score": float(clamped.mean()),
        "target_raw": float(target.mean()),
        "target_high": float((target > NEAR_REFUSAL).double().mean()),
        "keep_score": float(refusal_score(logits[t : t + k], val.refusal_tokens).mean()) if k else math.nan,
        "kl": float(kl.mean()),
        "kl_ucb": kl_bound(kl),
    }


def suggest(
    trial,
    n_layers: int,
    n_positions: int,
    k_max: int,
    contrasts: list[str],
    layer_frac: tuple[float, float] = (0.2, 0.8),
) -> EditParams:
    """The search space (Optuna trial -> EditParams)."""
    lo, hi = layer_frac[0] * (n_layers - 1), layer_frac[1] * (n_layers - 1)

    def profile(name: str) -> Profile:
        return Profile(
            peak=trial.suggest_float(f"{name}_peak", 0.5, 1.5),
            center=trial.suggest_float(f"{name}_center", 0, n_layers - 1),
            width=trial.suggest_float(f"{name}_width", 1.0, float(n_layers)),
            floor=trial.suggest_float(f"{name}_floor", 0.0, 1.5),
        )

    return EditParams(
        index=trial.suggest_float("index", lo, hi),
        position=trial.suggest_int("position", -n_positions, -1),
        k=trial.suggest_int("k", 1, k_max),
        projected=trial.suggest_categorical("projected", [True, False]),
        contrast=trial.suggest_categorical("contrast", contrasts),
        attn=profile("attn"),
        mlp=profile("mlp"),
        embed=trial.suggest_float("embed", 0.0, 1.0),
        preserve_norm=trial.suggest_categorical("preserve_norm", [False, True]),
    )


# The optimized direction's first trials: (attention, MLP) strengths, flat over the layers, embedding 1.
# (1, 1) is the edit as trained; on the embedded model attention strength above 1 lowered the
# censorship score and raised the harmful one, MLP strength lowered both and raised KL
# (results/component-strengths), so the seeds trade the two before TPE explores profiles.
OPTIMIZED_SEEDS = ((1.0, 1.0), (1.0, 0.8), (1.2, 0.8), (1.2, 0.7), (1.4, 0.8), (1.4, 0.7))


def full_strength(
    n_layers: int,
    strength: float = 1.0,
    contrast: str = "optimized",
    layer_frac: tuple[float, float] = (0.2, 0.8),
    mlp: float | None = None,
    embed: float | None = None,
) -> dict:
    """Search parameters (suggest's names) of a rank-1 edit with one strength at every layer: `strength`
    for attention (and for the MLP and the embedding unless `mlp` / `embed` are given)."""
    flat = lambda name, s: {
        f"{name}_peak": s,
        f"{name}_center": (n_layers - 1) / 2,  # noqa: E731
        f"{name}_width": float(n_layers),
        f"{name}_floor": s,
    }
    return {
        "index": sum(layer_frac) / 2 * (n_layers - 1),
        "position": -1,
        "k": 1,
        "projected": True,
        "contrast": contrast,
        **flat("attn", strength),
        **flat("mlp", strength if mlp is None else mlp),
        "embed": strength if embed is None else embed,
        "preserve_norm": False,
    }


SEARCH_VERSION = 4  # part of a study's name: bump when what a trial measures or optimizes changes


def objective_name(keep_floor: float | None, kl_max: float | None, target_floor: float | None = TARGET_FLOOR) -> str:
    """What a study optimizes, recorded in it and checked on resume."""
    cons = [f"keep_score >= {keep_floor!r}"] * (keep_floor is not None) + [f"kl_ucb <= {kl_max!r}"] * (
        kl_max is not None
    )
    target = "target_score" if target_floor is None else f"target_score(floor {target_floor!r})"
    goal = f"min {target}" if kl_max is not None else f"min ({target}, kl)"
    return f"v{SEARCH_VERSION}: {goal}" + (f" s.t. {', '.join(cons)}" if cons else "")


def run_search(
    model,
    tokenizer,
    inputs: SearchInputs,
    val: ValData,
    *,
    n_trials: int,
    seed: int,
    storage: Path | None = None,
    keep_floor: float | None = None,
    kl_max: float | None = None,
    batch_size: int = 16,
    study_name: str = "steer",
    target_floor: float | None = TARGET_FLOOR,
) -> object:
    """Run (or resume) a seeded study subject to keep score >= keep_floor. Without kl_max:
    multi-objective, minimize (target score, KL). With kl_max: minimize the target score subject
    also to the KL 95% upper bound <= kl_max, so every trial after the random start goes to the
    region the final choice is made in (a two-objective TPE spreads its trials along the whole
    front, most of them at low KL and weak edits; measured, docs/targeted.md). Returns the
    optuna Study; trial user attrs hold the metrics and "violation" (> 0: infeasible). The target
    score is the mean refusal score on target prompts clamped below at target_floor (see TARGET_FLOOR)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n_layers = next(iter(inputs.directions.values())).shape[0]
    contrasts = sorted({name.split("/")[0] for name in inputs.directions})
    study = _open_study(
        storage, study_name, seed, kl_max, fingerprint(inputs, val), objective_name(keep_floor, kl_max, target_floor)
    )
    if "optimized" in contrasts and not study.trials:  # first: the optimized edit as trained, then OPTIMIZED_SEEDS
        for attn, mlp in OPTIMIZED_SEEDS[:n_trials]:  # no queued trial left waiting past the last one run
            study.enqueue_trial(full_strength(n_layers, attn, mlp=mlp, embed=1.0))
    objective = _objective(model, tokenizer, inputs, val, keep_floor, kl_max, batch_size, target_floor)
    remaining = n_trials - len([t for t in study.trials if t.state.is_finished()])
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, show_progress_bar=True)
    return study


def _open_study(storage: Path | None, name: str, seed: int, kl_max: float | None, fp: str, goal: str):
    """A new or resumed Optuna study (journal file at storage; in memory for None). A journal run
    with other inputs (fingerprint) or another objective is refused: resuming would mix stale scores in."""
    import optuna

    store = None
    if storage is not None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        store = JournalStorage(JournalFileBackend(str(storage)))
    study = optuna.create_study(
        study_name=name,
        storage=store,
        sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True),
        load_if_exists=True,
        directions=["minimize"] if kl_max is not None else ["minimize", "minimize"],
    )
    if study.trials and study.user_attrs.get("inputs_fingerprint") != fp:  # scores of other directions
        raise SteerError(
            f"study {storage} was run with other directions or validation prompts (or by an older "
            "steer); resuming would mix stale scores in: use another study file or delete it"
        )
    if study.trials and study.user_attrs.get("objective") != goal:  # other objectives or constraints
        raise SteerError(
            f"study {storage} was run for another objective ({study.user_attrs.get('objective', 'unrecorded')}, "
            f"not {goal}); use another study file or delete it"
        )
    study.set_user_attr("inputs_fingerprint", fp)
    study.set_user_attr("objective", goal)
    return study


def _objective(
    model,
    tokenizer,
    inputs: SearchInputs,
    val: ValData,
    keep_floor: float | None,
    kl_max: float | None,
    batch_size: int,
    target_floor: float | None,
):
    """The trial function: suggest EditParams, score the edit, record metrics and constraints."""
    import optuna

    n_layers, n_pos, _ = next(iter(inputs.directions.values())).shape
    contrasts = sorted({name.split("/")[0] for name in inputs.directions})
    k_max = 1 if inputs.components is None else 1 + inputs.components.shape[2]

    def objective(trial) -> float | tuple[float, float]:
        p = suggest(trial, n_layers, n_pos, k_max, contrasts)
        try:
            basis = edit_basis(inputs, p)
        except ValueError:  # no direction left at this layer/position (e.g. identical template tokens)
            raise optuna.TrialPruned() from None
        m = score(model, tokenizer, basis, p, val, batch_size, target_floor)
        for key, value in m.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("params", p.to_dict())
        # each feasible when <= 0: harmful prompts still score as refused; KL within the bound
        limits = {}
        if keep_floor is not None:
            limits["keep_floor"] = keep_floor - m["keep_score"]
        if kl_max is not None:
            limits["kl_max"] = m["kl_ucb"] - kl_max
        for key, value in limits.items():
            trial.set_constraint(key, value)
        if limits:
            trial.set_user_attr("violation", max(limits.values()))
        return m["target_score"] if kl_max is not None else (m["target_score"], m["kl"])

    return objective


def trial_rows(study) -> list[dict]:
    """Every finished trial's number, metrics and params."""
    return [
        {
            "trial": t.number,
            **{k: v for k, v in t.user_attrs.items() if k != "params"},
            "params": t.user_attrs["params"],
        }
        for t in study.trials
        if t.state.is_finished() and "params" in t.user_attrs
    ]


def pareto(study) -> list[dict]:
    """Feasible trials not dominated in (target score, KL), lowest KL first: their params and
    metrics (the same front whether the study minimized both or the target score alone)."""
    rows = [r for r in trial_rows(study) if r.get("violation", 0.0) <= 0]
    beats = lambda a, b: (
        a["target_score"] <= b["target_score"]
        and a["kl"] <= b["kl"]  # noqa: E731
        and (a["target_score"] < b["target_score"] or a["kl"] < b["kl"])
    )
    return sorted([r for r in rows if not any(beats(o, r) for o in rows)], key=lambda r: (r["kl"], r["trial"]))
