"""The library API: compute directions, abliterate (directions + edit + before/after), edit.

    from steer.pipeline import Settings, abliterate
    report = abliterate(None, "out/qwen-abliterated", Settings())
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from steer import __version__
from steer.model.collect import batched_last_logits, residual_means
from steer.locate.directions import DirectionSet, diff_in_means, project_off
from steer.edit.project import ablated, orthogonalize
from steer.errors import SteerError
from steer.eval.suites import EvalConfig, logits_fn, run_suites, suite_kl
from steer.edit.kernels import kernel_name
from steer.model.load import Loaded, checkpoint_hash, load_model
from steer.prompts import Prompt, chat_texts, load_prompts, post_instruction_length, prompts_hash, seeded_sample
from steer.report.tables import before_after_table, plot_selection, selection_table, write_report
from steer.checkpoint.save import atomic_dir, check_output, save_checkpoint, write_json
from steer.locate.select import find_refusal_tokens, select_direction, split_by_score


@dataclass
class Settings:
    target: str = "sensitive"  # prompts whose refusals are removed (shipped set name or file)
    baseline: str = "harmless"  # prompts the model answers
    n_val: int = 32  # target validation prompts for selection (twice as many baseline prompts for KL)
    projected: bool = True  # remove the baseline-mean component from each direction (grimjim)
    kl_max: float = 0.1
    screen: int = 8  # candidates scored in full after the bypass screen
    screen_prompts: int = 8  # target prompts used to screen every candidate
    eval_limit: int = 80  # held-out prompts per evaluation group (seeded sample)
    max_new_tokens: int = 48
    batch_size: int = 32
    seed: int = 0


def _log(msg: str) -> None:
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


def _kept_sample(prompts: list[Prompt], logits: torch.Tensor, ref_tokens: list[int], refused: bool, n: int,
                 seed: int) -> tuple[list[Prompt], torch.Tensor]:
    """Prompts the model refuses (or answers), a seeded sample of n of them, and their logits."""
    idx = seeded_sample(split_by_score(logits, ref_tokens, refused), n, seed)
    return [prompts[i] for i in idx], logits[idx]


def check_prompts(settings: Settings) -> None:
    """Read every prompt source up front, so bad input fails before the model loads."""
    train_val(settings.target, settings.seed)
    train_val(settings.baseline, settings.seed)


def compute_directions(loaded: Loaded, settings: Settings) -> DirectionSet:
    """Collect means on the train splits, take differences, select on the validation splits."""
    model, tok = loaded.model, loaded.tokenizer
    torch.manual_seed(settings.seed)
    t_train, t_val = train_val(settings.target, settings.seed)
    b_train, b_val = train_val(settings.baseline, settings.seed)
    # Sample twice what selection needs: filtering by refusal below drops some.
    t_val, b_val = seeded_sample(t_val, 2 * settings.n_val, settings.seed), seeded_sample(b_val, 3 * settings.n_val, settings.seed)
    n_pos = post_instruction_length(tok)
    texts = lambda ps: chat_texts(tok, [p.text for p in ps])  # noqa: E731
    logits = lambda ps: batched_last_logits(model, tok, texts(ps), settings.batch_size)  # noqa: E731
    _log(f"finding refusal tokens from the model's own refusals ({len(t_train)} target, {len(b_train)} baseline train prompts)")
    t_logits, b_logits = logits(t_train), logits(b_train)
    probe = sorted(random.Random(settings.seed).sample(range(len(t_train)), min(64, len(t_train))))
    ref_tokens = find_refusal_tokens(model, tok, texts([t_train[i] for i in probe]), t_logits[probe], b_logits, settings.batch_size)
    keep = lambda ps, lg, refused: [ps[i] for i in split_by_score(lg, ref_tokens, refused)]  # noqa: E731
    t_train, b_train = keep(t_train, t_logits, True), keep(b_train, b_logits, False)
    # Validation prompts keep their base logits: selection reuses them instead of a second pass.
    t_val, t_val_logits = _kept_sample(t_val, logits(t_val), ref_tokens, True, settings.n_val, settings.seed)
    b_val, b_val_logits = _kept_sample(b_val, logits(b_val), ref_tokens, False, 2 * settings.n_val, settings.seed)
    _log(f"refusal tokens {[tok.decode([t]) for t in ref_tokens]}; kept {len(t_train)} refused target and "
         f"{len(b_train)} answered baseline train prompts; collecting activations at {n_pos} positions")
    mean_t = residual_means(model, tok, texts(t_train), n_pos, settings.batch_size, desc="target")
    mean_b = residual_means(model, tok, texts(b_train), n_pos, settings.batch_size, desc="baseline")
    directions = diff_in_means(mean_t, mean_b)
    if settings.projected:
        directions = project_off(directions, mean_b)
    dirs = DirectionSet(directions, mean_t, mean_b)
    _log(f"selecting among {directions.shape[0]} layers x {n_pos} positions on {len(t_val)} + {len(b_val)} validation prompts")
    sel = select_direction(model, tok, dirs, texts(t_val), texts(b_val), ref_tokens, kl_max=settings.kl_max,
                           screen=settings.screen, screen_prompts=settings.screen_prompts, batch_size=settings.batch_size,
                           base_logits=(t_val_logits, b_val_logits))
    selection = sel.to_dict() | {"refusal_token_strings": [tok.decode([t]) for t in ref_tokens]}
    dirs.meta = {
        "steer_version": __version__,
        "model": loaded.source,
        "hidden_size": int(directions.shape[-1]),
        "method": "diff-in-means" + (" (projected)" if settings.projected else ""),
        "layout": "[layer, position, d_model]; layer l = residual stream entering decoder layer l; position -1 = last token",
        "prompts": {name: {"n": len(ps), "sha256": prompts_hash(ps)} for name, ps in
                    {"target_train": t_train, "baseline_train": b_train, "target_val": t_val, "baseline_val": b_val}.items()},
        "settings": asdict(settings),
        "selected": {"layer": sel.layer, "position": sel.position},
        "selection": selection,
    }
    return dirs


def eval_config(settings: Settings) -> EvalConfig:
    """The before/after evaluation: held-out sensitive (EN, ZH), harmful and harmless prompts."""
    return EvalConfig(["censorship", "refusal"], limits={"*": settings.eval_limit}, seed=settings.seed,
                      batch_size=settings.batch_size,
                      max_new_tokens={"censorship": settings.max_new_tokens, "refusal": settings.max_new_tokens})


def _kl(ctx, preview) -> dict:
    """KL(base || edited) on harmless test prompts, the edit previewed by `preview()` (a context
    manager: hooks, or a reversible weight edit), so the base weights are the reference. The suite
    also reports it over the prompts the base model answers: where it over-refused a harmless
    prompt, a change is the point of the edit; damage is the change on the others."""
    ctx.reference = ctx
    base_fn = logits_fn(ctx.model)

    def edited_fn(batch, keep):
        with preview():
            return base_fn(batch, keep)

    kl = suite_kl(ctx, edited_fn)
    ctx.reference = None
    return kl


def before_after(loaded: Loaded, config: EvalConfig, preview, apply) -> tuple[dict, dict]:
    """Evaluate the base model, measure KL against the previewed edit, apply the edit to the
    weights (apply()), evaluate again. The same engine and suites as `steer eval`."""
    from steer.eval.compare import context

    _log("evaluating the base model on held-out prompts")
    ctx = context(loaded, config)
    before = run_suites(ctx)
    kl = _kl(ctx, preview)
    apply()
    _log("evaluating the edited model")
    after = run_suites(context(loaded, config))
    after["kl"] = kl
    return before, after


def abliterate(model: str | None, out: Path, settings: Settings | None = None, force: bool = False) -> dict:
    """Find the refusal direction, orthogonalize it out, evaluate before/after, save to `out`."""
    settings = settings or Settings()
    check_output(Path(out), force, (Path(model) if model else None,))
    check_prompts(settings)
    started = time.time()
    loaded = load_model(model)
    _log(f"loaded {loaded.source} ({type(loaded.model).__name__}, {loaded.model.config.num_hidden_layers} layers)")
    dirs = compute_directions(loaded, settings)
    vector = dirs.vector()

    def apply():
        n = orthogonalize(loaded.model, vector)
        _log(f"orthogonalized {n} tensors against layer {dirs.selected[0]}, position {dirs.selected[1]}")

    before, after = before_after(loaded, eval_config(settings), lambda: ablated(loaded.model, vector), apply)
    report = {"model": loaded.source, "settings": asdict(settings), "selection": dirs.meta["selection"],
              "before": before, "after": after}
    with atomic_dir(Path(out), force) as tmp:
        save_checkpoint(loaded.model, loaded.tokenizer, tmp)
        dirs.save(tmp / "directions.safetensors")
        plot_selection(dirs.meta["selection"], loaded.model.config.num_hidden_layers, tmp / "selection.png")
        report["elapsed_s"] = round(time.time() - started, 1)
        write_report(tmp, report)
        write_json(tmp / "steer_manifest.json", manifest(loaded, dirs, report, tmp))
    print(selection_table(dirs.meta["selection"]) + "\n")
    print(before_after_table(before, after))
    return report


# TargetedSettings fields that act only after the search (confirmation, readout): a run that changes
# only these resumes the same study instead of searching again
AFTER_SEARCH = ("confirm", "max_new_tokens", "readout_steps", "readout_lr", "readout_kl_tokens", "readout_kl")


def search_settings(ts) -> dict:
    """The TargetedSettings that decide the search's trials (what its journal is keyed by)."""
    return {k: v for k, v in asdict(ts).items() if k not in AFTER_SEARCH}


def targeted_search(loaded: Loaded, ts, study: Path | None = None):
    """Contrasts, the seeded resumable Optuna search, and the judge-confirmed choice among the
    Pareto candidates. Returns (prepared, search inputs, study, front, confirmation, study path)."""
    from steer.model.load import cache_dir
    from steer.targeted.search import SEARCH_VERSION, fingerprint, pareto, run_search
    from steer.targeted.contrasts import confirm, prepare

    m, tok = loaded.model, loaded.tokenizer
    torch.manual_seed(ts.seed)
    _log(f"loaded {loaded.source}; measuring censorship and harmful-refusal contrasts")
    lap = time.time()
    prep = prepare(m, tok, ts)
    seconds = {"prepare": round(time.time() - lap, 1)}
    inputs = prep.contrasts.search_inputs(ts.keep_safety, ts.keep_layers, ts.search_contrasts)
    # the settings and the inputs themselves: a journal never resumes with directions that changed
    key = hashlib.sha256(json.dumps({**search_settings(ts), "search_version": SEARCH_VERSION}, sort_keys=True).encode()
                         + fingerprint(inputs, prep.val).encode()).hexdigest()[:16]
    study = study or cache_dir() / "search" / f"{checkpoint_hash(loaded.path)[:16] if loaded.path else 'model'}-{key}.journal"
    study.parent.mkdir(parents=True, exist_ok=True)
    _log(f"searching {ts.trials} trials (study {study}; resumes if interrupted)")
    lap = time.time()
    st = run_search(m, tok, inputs, prep.val, n_trials=ts.trials, seed=ts.seed, storage=study, keep_floor=prep.keep_floor,
                    kl_max=ts.kl_max, batch_size=ts.batch_size, target_floor=ts.target_floor)
    seconds["search"] = round(time.time() - lap, 1)
    front = pareto(st)
    if not front:
        raise SteerError(f"no search trial kept harmful refusals above the floor {prep.keep_floor:.2f} with first-token KL "
                         f"(95% bound) <= {ts.kl_max}; try more --trials or a larger --search-kl-max")
    _log(f"confirming up to {ts.confirm} of {len(front)} Pareto candidates with generation and the judge")
    lap = time.time()
    conf = confirm(m, tok, prep, inputs, front, ts)
    prep.meta["seconds"] = {**seconds, "confirm": round(time.time() - lap, 1)}  # the stages' wall time
    return prep, inputs, st, front, conf, study


def targeted_abliterate(model: str | None, out: Path, ts=None, settings: Settings | None = None, force: bool = False,
                        study: Path | None = None) -> dict:
    """Remove censorship but keep safety refusals: contrasts (sensitive vs controls, harmful vs
    harmless), an Optuna search scored without decoding, judge-confirmed Pareto candidates, then
    the same edit-evaluate-save path as `abliterate`. `study` (a journal file) makes the search
    resumable; by default it lives in $STEER_CACHE/search/."""
    from steer.report.tables import optimize_summary, pareto_table, plot_cosines, plot_pareto, readout_summary, stage_times
    from steer.targeted.search import EditParams, edit_basis, trial_rows
    from steer.targeted.contrasts import TargetedSettings, apply_edit, fit_readout, previewed

    ts, settings = ts or TargetedSettings(), settings or Settings()
    check_output(Path(out), force, (Path(model) if model else None,))
    started = time.time()
    loaded = load_model(model)
    m, tok = loaded.model, loaded.tokenizer
    prep, inputs, st, front, conf, study = targeted_search(loaded, ts, study)
    params = EditParams.from_dict(conf["chosen"]["params"])
    basis = edit_basis(inputs, params)
    seconds, readout, rinfo = prep.meta.pop("seconds"), None, None
    if ts.readout_steps > 0:
        _log(f"training a readout on top of the chosen edit ({ts.readout_steps} steps)")
        lap = time.time()
        readout, rinfo = fit_readout(m, tok, prep, basis, params, ts, conf["chosen"]["kl"])
        seconds["readout"] = round(time.time() - lap, 1)
        _log(f"no readout: {rinfo['skipped']}" if "skipped" in rinfo else
             f"readout kept at scale {rinfo['scale']} (validation: harmful floor, first-token {rinfo['kl_stat']} <= "
             f"{rinfo['kl_max']:.4f})")
    lap = time.time()
    before, after = before_after(loaded, eval_config(settings), lambda: previewed(m, basis, params, readout),
                                 lambda: apply_edit(m, basis, params, readout))
    seconds["evaluate"] = round(time.time() - lap, 1)
    report = {"model": loaded.source, "mode": "targeted", "targeted_settings": asdict(ts), "settings": asdict(settings),
              "edit": params.to_dict(), "prepare": prep.meta, "confirm": conf, "readout": rinfo, "pareto": front,
              "cosines": prep.contrasts.cosines(), "before": before, "after": after}
    with atomic_dir(Path(out), force) as tmp:
        save_checkpoint(m, tok, tmp)
        prep.contrasts.readout = readout
        prep.contrasts.save(tmp / "contrasts.safetensors", {
            "edit": params.to_dict(), "keep_safety": ts.keep_safety, "keep_layers": ts.keep_layers,
            "readout": {k: rinfo[k] for k in ("settings", "kl_stat", "kl_max", "scale")} if readout else None})
        plot_cosines(report["cosines"], tmp / "cosines.png", "cosine similarity per layer (last position)")
        plot_pareto(trial_rows(st), front, conf["chosen"], tmp / "pareto.png")
        report["elapsed_s"] = round(time.time() - started, 1)
        report["seconds"] = {**seconds, "load_save": round(time.time() - started - sum(seconds.values()), 1)}
        write_json(tmp / "report.json", report)
        md = "\n".join([f"# steer abliterate --keep-safety: {loaded.source}\n", before_after_table(before, after), "",
                        f"Edit: {params.to_dict()}", "", optimize_summary(prep.meta.get("optimize")), "",
                        readout_summary(rinfo), "", stage_times(report["seconds"], report["elapsed_s"]), "",
                        "## Pareto front (validation split)\n",
                        pareto_table(front, conf["candidates"], conf["chosen"]), "", conf["note"] or ""])
        (tmp / "report.md").write_text(md + "\n", encoding="utf-8")
        write_json(tmp / "steer_manifest.json", {
            "steer_version": __version__, "command": " ".join(sys.argv), "input": {"model": loaded.source,
            "sha256": checkpoint_hash(loaded.path) if loaded.path else None}, "edit": params.to_dict(),
            "targeted_settings": asdict(ts), "prompts": prep.meta["prompts"], "study": str(study),
            "versions": versions(), "kernel": kernel_name(next(loaded.model.parameters()).device), "output_sha256": checkpoint_hash(tmp)})
    print(md)
    return report


def versions() -> dict[str, str]:
    """Library versions recorded in every manifest."""
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}


def manifest(loaded: Loaded, dirs: DirectionSet, report: dict | None, folder: Path) -> dict:
    """What is needed to rebuild (and verify) the output weights."""
    return {
        "steer_version": __version__,
        "command": " ".join(sys.argv),
        "versions": versions(),
        "kernel": kernel_name(next(loaded.model.parameters()).device),  # which projection kernel wrote the weights
        "input": {"model": loaded.source, "sha256": checkpoint_hash(loaded.path) if loaded.path else None},
        "prompts": dirs.meta.get("prompts"),
        "settings": dirs.meta.get("settings"),
        "direction": {"layer": dirs.selected[0], "position": dirs.selected[1], "method": dirs.meta.get("method"),
                      "refusal_tokens": dirs.meta.get("selection", {}).get("refusal_token_strings")},
        "metrics": None if report is None else {
            side: {f"{suite}/{name}": m["value"] for suite, r in report[side].items() for name, m in r["metrics"].items()}
            for side in ("before", "after")
        },
        "output_sha256": checkpoint_hash(folder),
    }
