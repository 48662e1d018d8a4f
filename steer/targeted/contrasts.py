"""Targeted de-censoring: the censorship direction, separated from the harmful-refusal direction.

Contrasts, all per layer and post-instruction position ([L, P, d], float64):
  censorship      = mean(sensitive) - mean(controls)   topic-matched: China questions that are answered
  versus_harmless = mean(sensitive) - mean(harmless)   the plain-abliteration contrast
  harmful         = mean(harmful)   - mean(harmless)   the safety-refusal direction to keep
  components      = principal components 2..K+1 of the per-prompt differences
                    sensitive_i - mean(controls) (the first is ~ the censorship direction)
An edit built from these is made orthogonal to `harmful` (keep_safety) and, in the projected
variant, to the harmless mean, so removing it leaves safety refusals in place.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from steer.model.collect import batched_last_logits, residual_means, residual_stack
from steer.locate.directions import principal_directions, remove_span
from steer.errors import SteerError
from steer.model.generation import generate
from steer.eval.judge import MarkerJudge
from steer.targeted.optimize import Group, OptimizeSettings, optimize_direction
from steer.prompts import Prompt, chat_texts, load_prompts, post_instruction_length, prompts_hash, seeded_sample
from steer.targeted.search import TARGET_FLOOR, EditParams, SearchInputs, ValData, edit_basis, edited
from steer.locate.select import find_refusal_tokens, refusal_score, split_by_score


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


@dataclass
class Contrasts:
    censorship: torch.Tensor
    versus_harmless: torch.Tensor
    harmful: torch.Tensor
    harmless_mean: torch.Tensor
    components: torch.Tensor  # [L, P, K, d]
    optimized: torch.Tensor | None = None  # [d] steer.targeted.optimize's direction, when it ran
    readout: dict[str, torch.Tensor] | None = None  # steer.targeted.readout's "<layer>.<component>" -> a [d_in], as baked

    def cosines(self, position: int = -1) -> dict[str, list[float]]:
        """Per-layer cosine similarities at one position (for the plot and the report)."""
        at = lambda t: t[:, position]  # noqa: E731
        out = {
            "censorship vs harmful": _cos(at(self.censorship), at(self.harmful)).tolist(),
            "censorship vs (sensitive - harmless)": _cos(at(self.censorship), at(self.versus_harmless)).tolist(),
            "(sensitive - harmless) vs harmful": _cos(at(self.versus_harmless), at(self.harmful)).tolist(),
        }
        if self.optimized is not None:  # how far the optimized direction moved from the contrasts
            opt = self.optimized.double().expand_as(at(self.censorship))
            out["optimized vs censorship"] = _cos(opt, at(self.censorship)).tolist()
            out["optimized vs (sensitive - harmless)"] = _cos(opt, at(self.versus_harmless)).tolist()
        return out

    def save(self, path: Path, meta: dict) -> None:
        """Tensors as safetensors (what an edit is rebuilt from) and meta as a JSON sidecar."""
        names = ("censorship", "versus_harmless", "harmful", "harmless_mean", "components", "optimized")
        tensors = {k: getattr(self, k).detach().contiguous() for k in names if getattr(self, k) is not None}
        tensors.update({f"readout.{k}": a.detach().contiguous() for k, a in (self.readout or {}).items()})
        save_file(tensors, str(path), metadata={"format": "steer-contrasts"})
        Path(path).with_suffix(".json").write_text(json.dumps(meta, indent=2, ensure_ascii=False, default=str) + "\n")

    @classmethod
    def load(cls, path: Path) -> Contrasts:
        t = load_file(str(path))
        readout = {k[len("readout."):]: a for k, a in t.items() if k.startswith("readout.")} or None
        return cls(t["censorship"], t["versus_harmless"], t["harmful"], t["harmless_mean"], t["components"], t.get("optimized"),
                   readout)

    def search_inputs(self, keep_safety: bool = True, keep_layers: str = "same", contrasts: str = "all") -> SearchInputs:
        """Directions for steer.targeted.search: the censorship and the sensitive-vs-harmless contrasts, each
        projected (off the harmless mean) and plain, and the optimized direction when there is one;
        contrasts="optimized" offers only the optimized one (when present), so every trial explores
        its strengths and subspaces instead of directions it dominates. With keep_safety every edit direction is made
        orthogonal to the harmful direction: of its own layer (keep_layers="same"), or of every
        layer at its position ("all"): the edit removes its direction from the residual stream
        at every layer, so it must avoid the harmful direction wherever that is read."""
        if contrasts not in ("all", "optimized"):
            raise ValueError(f"contrasts must be 'all' or 'optimized', not {contrasts!r}")
        dirs = {}
        for name, d in (("censorship", self.censorship), ("versus_harmless", self.versus_harmless)):
            if contrasts == "all" or self.optimized is None:
                dirs[f"{name}/projected"], dirs[f"{name}/plain"] = remove_span(d, self.harmless_mean), d.double()
        if self.optimized is not None:  # one vector for every layer and position; its KL term did the projecting
            dirs["optimized/projected"] = dirs["optimized/plain"] = self.optimized.double().expand_as(self.censorship)
        keep = None
        if keep_safety:
            h = self.harmful.double()  # [L, P, d]
            if keep_layers == "same":
                keep = h.unsqueeze(-2)
            elif keep_layers == "all":
                keep = h.transpose(0, 1).unsqueeze(0).expand(h.shape[0], -1, -1, -1)  # [L, P, L, d]
            else:
                raise ValueError(f"keep_layers must be 'same' or 'all', not {keep_layers!r}")
        return SearchInputs(directions=dirs, components=self.components, keep=keep)


@torch.inference_mode()
def compute_contrasts(model, tokenizer, texts: dict[str, list[str]], n_positions: int, k: int = 3, batch_size: int = 16) -> Contrasts:
    """texts: chat-formatted prompts for "sensitive", "controls", "harmful" and "harmless"."""
    means = {name: residual_means(model, tokenizer, texts[name], n_positions, batch_size, desc=name)
             for name in ("controls", "harmful", "harmless")}
    stack = residual_stack(model, tokenizer, texts["sensitive"], n_positions, batch_size, desc="sensitive").double()
    sensitive = stack.mean(0)
    diffs = stack - means["controls"]  # [N, L, P, d]
    n_layers, n_pos, d = sensitive.shape
    k = min(k, diffs.shape[0] - 1)
    components = torch.zeros(n_layers, n_pos, max(k, 0), d, dtype=torch.float64)
    for layer in range(n_layers):
        for pos in range(n_pos):
            if k > 0 and diffs[:, layer, pos].norm() > 0:
                components[layer, pos] = principal_directions(diffs[:, layer, pos], k + 1)[1:]
    return Contrasts(sensitive - means["controls"], sensitive - means["harmless"], means["harmful"] - means["harmless"],
                     means["harmless"], components)


@dataclass
class TargetedSettings:
    n_val: int = 32  # sensitive and harmful validation prompts (twice as many harmless ones)
    # Optuna trials (each: one forward pass over the validation prompts, ~7 s on the embedded model with the shared prefix); with
    # 16 (4 seeded, 6 random, 6 TPE) the best edit hinged on the random draws (session 7)
    trials: int = 32
    k_max: int = 3  # largest subspace searched
    keep_safety: bool = True  # edit directions orthogonal to the harmful-refusal direction
    keep_layers: str = "all"  # ... of every layer ("all") or of the edit's own layer ("same")
    keep_fraction: float = 0.9  # harmful refusal must stay >= this fraction of the base model's
    kl_max: float = 0.05  # first-token KL bound (95% upper bound) for confirmed candidates
    # Pareto candidates confirmed with generation and the judge (each ~50 s on the embedded model; 4 until
    # session 11, whose readout needed the time: session 8's choice was the second by target score)
    confirm: int = 2
    # Score (and contrast) only sensitive prompts the model refuses: with all of them the search
    # found low-KL edits whose answers did not change (a first real-model run, session 2).
    only_refused: bool = True
    batch_size: int = 32
    max_new_tokens: int = 48
    seed: int = 0
    optimize_steps: int = 48  # steps of steer.targeted.optimize for the "optimized" direction (0: contrasts only)
    # search only the optimized direction when there is one ("all": the contrasts too; in sessions
    # 5 and 6 a third of the trials went to contrast directions the optimized one dominated)
    search_contrasts: str = "optimized"
    # target scores below this count as done in the search's objective (steer.targeted.search.TARGET_FLOOR; None: plain mean)
    target_floor: float | None = TARGET_FLOOR
    # steer.targeted.readout on top of the chosen edit (0: none): Adam steps, the KL term's answer tokens, and what
    # fit_scale holds validation first-token KL to ("kl": mean <= kl_max; "kl_ucb": 95% bound <= kl_max;
    # "edit": mean <= the chosen edit's own mean)
    # ReadoutSettings' 32 steps at 3e-4 (8 min on the embedded model; 10 before the shared prefix), held to the
    # edit's own KL ("edit"): session 10's readout, the one whose test split met the KL bound. Shorter schedules
    # that fit session 11's 30-minute budget (results/targeted-readout/run1, run2) either spent KL (0.062 on the test split, held to mean <= 0.05)
    # or were held back to a quarter (English 5.7%)
    readout_steps: int = 32
    readout_lr: float = 3e-4
    readout_kl_tokens: int = 8
    readout_kl: str = "edit"


@dataclass
class Prepared:
    contrasts: Contrasts
    val: ValData
    val_prompts: dict[str, list[Prompt]]  # sensitive/en, sensitive/zh, harmful: confirmed by the judge
    keep_floor: float
    meta: dict
    groups: dict[str, Group]  # train prompts with base logits (what steer.targeted.optimize trains on)


def recorded_edit(contrasts_file: Path) -> tuple[torch.Tensor, EditParams]:
    """The edit recorded beside a contrasts file (its JSON sidecar holds the chosen EditParams
    and keep_safety): the basis [k, d_model] (float64, orthonormal rows) and the parameters.
    Needs no model, so the streaming editor can apply it to a checkpoint on disk."""
    side = Path(contrasts_file).with_suffix(".json")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        params = EditParams.from_dict(meta.get("edit") or meta["chosen"])
        basis = edit_basis(Contrasts.load(contrasts_file).search_inputs(meta.get("keep_safety", True),
                                                                      meta.get("keep_layers", "same")), params)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SteerError(f"cannot rebuild the edit recorded in {contrasts_file} and {side.name}: {exc}") from None
    return basis, params


def recorded_readout(contrasts_file: Path) -> dict[str, torch.Tensor] | None:
    """The learned readout saved in a contrasts file (None when the run trained none); it is
    baked along the recorded edit's first basis row, after the projection (steer.targeted.readout.bake)."""
    return Contrasts.load(contrasts_file).readout


def rebuild(model: torch.nn.Module, contrasts_file: Path) -> EditParams:
    """Apply the edit recorded beside a contrasts file, and its readout if any: the same weights
    `steer abliterate --keep-safety` saved."""
    basis, params = recorded_edit(contrasts_file)
    apply_edit(model, basis, params, recorded_readout(contrasts_file))
    return params


def prepare(model, tokenizer, s: TargetedSettings) -> Prepared:
    """Refusal tokens, contrasts on the train splits, validation prompts with base logits."""
    texts = lambda ps: chat_texts(tokenizer, [p.text for p in ps])  # noqa: E731
    logits = lambda ps: batched_last_logits(model, tokenizer, texts(ps), s.batch_size)  # noqa: E731
    train = {name: load_prompts(name, "train") for name in ("sensitive", "controls", "harmful", "harmless")}
    lg = {name: logits(ps) for name, ps in train.items() if name != "controls"}
    probe = sorted(random.Random(s.seed).sample(range(len(train["sensitive"])), min(64, len(train["sensitive"]))))
    ref = find_refusal_tokens(model, tokenizer, texts([train["sensitive"][i] for i in probe]), lg["sensitive"][probe],
                              lg["harmless"], s.batch_size)
    idx = {"sensitive": split_by_score(lg["sensitive"], ref, True) if s.only_refused else list(range(len(train["sensitive"]))),
           "harmful": split_by_score(lg["harmful"], ref, True), "harmless": split_by_score(lg["harmless"], ref, False)}
    for name, keep in idx.items():
        train[name], lg[name] = [train[name][i] for i in keep], lg[name][keep]
    contrasts = compute_contrasts(model, tokenizer, {k: texts(v) for k, v in train.items()},
                                  post_instruction_length(tokenizer), k=s.k_max - 1, batch_size=s.batch_size)
    optimized = None  # what the report records about the optimization
    groups = {n: Group(texts(train[n]), lg[n]) for n in idx}
    if s.optimize_steps > 0:
        optimized = _optimize(model, tokenizer, contrasts, groups, ref, s)
    val = {name: load_prompts(name, "val") for name in ("sensitive", "harmful", "harmless")}
    vlg = {name: logits(ps) for name, ps in val.items()}
    keep_idx = lambda name, refused, n: seeded_sample(split_by_score(vlg[name], ref, refused), n, s.seed)  # noqa: E731
    t_idx = keep_idx("sensitive", True, s.n_val) if s.only_refused else seeded_sample(list(range(len(val["sensitive"]))), s.n_val, s.seed)
    k_idx, h_idx = keep_idx("harmful", True, s.n_val), keep_idx("harmless", False, 2 * s.n_val)
    data = ValData(texts([val["sensitive"][i] for i in t_idx]), texts([val["harmful"][i] for i in k_idx]),
                   texts([val["harmless"][i] for i in h_idx]), vlg["sensitive"][t_idx], vlg["harmful"][k_idx],
                   vlg["harmless"][h_idx], ref)
    base_keep = float(refusal_score(data.base_keep, ref).mean())
    floor = s.keep_fraction * base_keep if base_keep > 0 else base_keep - 1.0
    confirm = {"sensitive/en": [p for p in val["sensitive"] if p.lang == "en"],
               "sensitive/zh": [p for p in val["sensitive"] if p.lang == "zh"], "harmful": val["harmful"]}
    meta = {"refusal_tokens": [tokenizer.decode([t]) for t in ref], "base_keep_score": base_keep, "keep_floor": floor,
            "prompts": {f"{k}_train": {"n": len(v), "sha256": prompts_hash(v)} for k, v in train.items()}}
    if optimized is not None:
        meta["optimize"] = optimized
    return Prepared(contrasts, data, confirm, floor, meta, groups)


def _optimize(model, tokenizer, contrasts: Contrasts, groups: dict[str, Group], ref: list[int], s: TargetedSettings) -> dict:
    """steer.targeted.optimize on the train splits, from the projected censorship direction at 60% depth
    (last position), orthogonal to every layer's harmful direction when keep_safety; stores the
    result in contrasts.optimized and returns what the report records."""
    layer = round(0.6 * (contrasts.censorship.shape[0] - 1))
    init = remove_span(contrasts.censorship, contrasts.harmless_mean)[layer, -1]
    span = contrasts.harmful[:, -1] if s.keep_safety else None
    o = OptimizeSettings(steps=s.optimize_steps, seed=s.seed)
    contrasts.optimized, history = optimize_direction(model, tokenizer, groups["sensitive"], groups["harmful"],
                                                      groups["harmless"], init, ref, span, o)
    return {"init": {"contrast": "censorship/projected", "layer": layer, "position": -1},
            "settings": asdict(o), "history": history}


def judged_rates(model, tokenizer, prompts: dict[str, list[Prompt]], s: TargetedSettings, judge=None) -> dict[str, float]:
    """Censorship rate per sensitive group and refusal rate on harmful prompts, from greedy answers."""
    judge = judge or MarkerJudge()
    flat = [(g, p) for g, ps in prompts.items() for p in ps]
    answers = generate(model, tokenizer, chat_texts(tokenizer, [p.text for _, p in flat]), s.max_new_tokens, s.batch_size)
    labels = judge.classify([p.text for _, p in flat], answers)
    out = {}
    for g in prompts:
        got = [lab for (gg, _), lab in zip(flat, labels) if gg == g]
        key = "refusal" if g == "harmful" else "censorship"
        bad = [lab == "denial" if key == "refusal" else lab != "complete" for lab in got]
        out[f"{key}/{g}"] = sum(bad) / len(bad)
    return out


def confirm(model, tokenizer, prep: Prepared, inputs: SearchInputs, front: list[dict], s: TargetedSettings) -> dict:
    """Judge the Pareto candidates' answers on validation prompts; choose the one with the lowest
    censorship (EN + ZH) among those keeping harmful refusals (>= keep_fraction of base) and KL."""
    base = judged_rates(model, tokenizer, prep.val_prompts, s)
    shortlist = [r for r in front if r["kl_ucb"] <= s.kl_max] or front[:1]
    shortlist = sorted(shortlist, key=lambda r: r["target_score"])[: s.confirm]
    for row in shortlist:
        p = EditParams.from_dict(row["params"])
        with edited(model, edit_basis(inputs, p), p):
            row["judged"] = judged_rates(model, tokenizer, prep.val_prompts, s)
    keeps = lambda r: r["judged"]["refusal/harmful"] >= s.keep_fraction * base["refusal/harmful"]  # noqa: E731
    censor = lambda r: r["judged"]["censorship/sensitive/en"] + r["judged"]["censorship/sensitive/zh"]  # noqa: E731
    ok = [r for r in shortlist if keeps(r)]
    chosen = min(ok or shortlist, key=lambda r: (censor(r), r["kl"]))
    note = None if ok else "no confirmed candidate kept harmful refusals at the floor; took the lowest censorship"
    return {"base": base, "candidates": shortlist, "chosen": chosen, "note": note}


def fit_readout(model, tokenizer, prep: Prepared, basis: torch.Tensor, params: EditParams,
                s: TargetedSettings, edit_kl: float | None = None) -> tuple[dict[str, torch.Tensor] | None, dict]:
    """steer.targeted.readout on top of the chosen edit, the model's weights as they were on return:
    trained on the train splits along r = basis[0], then backed off to the largest fraction that
    keeps the harmful floor and first-token KL on the validation prompts within its bound:
    s.readout_kl "kl" (mean <= s.kl_max), "kl_ucb" (95% bound <= s.kl_max) or "edit" (mean <=
    edit_kl, the chosen edit's own validation mean: the readout spends no KL). The edit is
    written into the weights for the duration (restored after), so the readout is trained on
    exactly the edited weights. Returns that scaled readout (None when no fraction qualifies:
    the edit stays as chosen) and what the report records. An architecture whose writers cannot
    take a readout (post-norm, mixture of experts) gets none, and the report says why."""
    from steer.targeted.readout import SCALES, ReadoutSettings, continuations, fit_scale, scaled, train_readout, zeros

    rs = ReadoutSettings(steps=s.readout_steps, lr=s.readout_lr, kl_tokens=s.readout_kl_tokens,
                         loss=replace(ReadoutSettings().loss, seed=s.seed))
    try:
        zeros(model, rs.components)
    except SteerError as exc:
        return None, {"skipped": str(exc)}
    if s.readout_kl not in ("kl", "kl_ucb", "edit") or (s.readout_kl == "edit" and edit_kl is None):
        raise ValueError(f"readout_kl {s.readout_kl!r} needs to be 'kl', 'kl_ucb' or 'edit' (with edit_kl)")
    stat, bound = ("kl", edit_kl) if s.readout_kl == "edit" else (s.readout_kl, s.kl_max)
    g = prep.groups
    cont = continuations(model, tokenizer, g["harmless"].texts, rs.kl_tokens, s.batch_size) if rs.kl_tokens > 1 else None
    r = basis[0].float()
    with edited(model, basis, params, in_weights=True):  # the weights apply_edit writes, then the readout's hooks
        readout, history = train_readout(model, tokenizer, g["sensitive"], g["harmful"], g["harmless"], r,
                                         prep.val.refusal_tokens, rs, cont)
        scale, fits = fit_scale(model, tokenizer, r, readout, prep.val, prep.keep_floor, bound, SCALES,
                                s.batch_size, kl_stat=stat)
    info = {"settings": asdict(rs), "kl_stat": stat, "kl_max": bound, "criterion": s.readout_kl, "scale": scale,
            "fits": fits, "history": history, "writers": len(readout)}
    return (scaled(readout, scale) if scale > 0 else None), info


@contextmanager
def previewed(model, basis: torch.Tensor, params: EditParams, readout: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """The chosen edit and its readout as hooks (what apply_edit writes into the weights)."""
    from steer.targeted.readout import applied

    with ExitStack() as stack:
        stack.enter_context(edited(model, basis, params))
        if readout:
            stack.enter_context(applied(model, basis[0].float(), readout))
        yield


def apply_edit(model, basis: torch.Tensor, params: EditParams, readout: dict[str, torch.Tensor] | None) -> None:
    """Write the chosen edit, then its readout, into the weights (what rebuild() repeats from the contrasts file)."""
    from steer.edit.project import orthogonalize
    from steer.targeted.readout import bake

    orthogonalize(model, basis.float(), profiles={"attn": params.attn, "mlp": params.mlp}, embed=params.embed,
                  preserve_norm=params.preserve_norm)
    if readout:
        bake(model, basis[0].float(), readout)
