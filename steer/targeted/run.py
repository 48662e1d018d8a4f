"""The targeted run, `steer abliterate --keep-safety` and `steer search`: remove censorship, keep safety refusals.

from steer import targeted_abliterate, TargetedSettings
report = targeted_abliterate(None, "out/qwen-decensored", TargetedSettings())
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from steer.checkpoint import manifest
from steer.checkpoint.save import atomic_dir, check_output, write_json
from steer.edit.kernels import kernel_name
from steer.edit.preview import Edit, preview
from steer.edit.rank1 import Readout
from steer.errors import SteerError
from steer.eval.before_after import before_after, eval_config
from steer.locate.run import Settings, log
from steer.model.load import Loaded, cache_dir, checkpoint_hash, load_model
from steer.pipeline import compute_dtype, save_weights
from steer.report import tables
from steer.report.cost import count_tokens, n_params
from steer.report.memory import Peaks, peak_rss_gb
from steer.targeted.confirm import confirm
from steer.targeted.prepare import Prepared, prepare
from steer.targeted.readout import fit_readout
from steer.targeted.search import (
    SEARCH_VERSION,
    EditParams,
    SearchInputs,
    edit_basis,
    fingerprint,
    pareto,
    run_search,
    trial_rows,
)
from steer.targeted.settings import TargetedSettings, search_settings


@dataclass
class SearchResult:
    """What `search` found: the prepared inputs, the Optuna study and its journal, the Pareto front,
    and the judge's confirmation (its "chosen" candidate is the edit)."""

    prepared: Prepared
    inputs: SearchInputs
    study: object  # optuna.Study
    journal: Path
    front: list[dict]
    confirmation: dict

    @property
    def params(self) -> EditParams:
        """The chosen edit's parameters."""
        return EditParams.from_dict(self.confirmation["chosen"]["params"])


def journal_path(loaded: Loaded, ts: TargetedSettings, inputs: SearchInputs, prep: Prepared) -> Path:
    """$STEER_CACHE/search/<model hash>-<key>.journal, keyed by the settings that decide the trials
    and the inputs themselves: a journal never resumes with directions that changed, nor in another dtype."""
    keyed = {**search_settings(ts), "search_version": SEARCH_VERSION}
    if loaded.model.dtype != torch.float32:  # float32 journals keep the keys they were written under
        keyed["dtype"] = str(loaded.model.dtype)
    key = hashlib.sha256(
        json.dumps(keyed, sort_keys=True).encode() + fingerprint(inputs, prep.val).encode()
    ).hexdigest()[:16]
    model = checkpoint_hash(loaded.path)[:16] if loaded.path else "model"
    return cache_dir() / "search" / f"{model}-{key}.journal"


def search(loaded: Loaded, ts: TargetedSettings, journal: Path | None = None) -> SearchResult:
    """Contrasts, the seeded resumable Optuna search, and the judge-confirmed choice among the Pareto candidates."""
    m, tok = loaded.model, loaded.tokenizer
    torch.manual_seed(ts.seed)
    # 1. refusal tokens, contrasts, the optimized direction, validation prompts with base logits
    log(f"loaded {loaded.source}; measuring censorship and harmful-refusal contrasts")
    lap = time.time()
    prep = prepare(m, tok, ts)
    seconds = {"prepare": round(time.time() - lap, 1)}
    peaks = Peaks()
    peaks.mark("prepare")
    inputs = prep.contrasts.search_inputs(ts.keep_safety, ts.keep_layers, ts.search_contrasts)
    # 2. the search, scored without decoding, resumable from its journal
    journal = journal or journal_path(loaded, ts, inputs, prep)
    journal.parent.mkdir(parents=True, exist_ok=True)
    log(f"searching {ts.trials} trials (study {journal}; resumes if interrupted)")
    lap = time.time()
    study = run_search(
        m,
        tok,
        inputs,
        prep.val,
        n_trials=ts.trials,
        seed=ts.seed,
        storage=journal,
        keep_floor=prep.keep_floor,
        kl_max=ts.kl_max,
        batch_size=ts.batch_size,
        target_floor=ts.target_floor,
    )
    seconds["search"] = round(time.time() - lap, 1)
    peaks.mark("search")
    front = pareto(study)
    if not front:
        raise SteerError(
            f"no search trial kept harmful refusals above the floor {prep.keep_floor:.2f} with first-token KL "
            f"(95% bound) <= {ts.kl_max}; try more --trials or a larger --search-kl-max"
        )
    # 3. the shortlist confirmed with generation and the judge
    log(f"confirming up to {ts.confirm} of {len(front)} Pareto candidates with generation and the judge")
    lap = time.time()
    conf = confirm(m, tok, prep, inputs, front, ts)
    prep.meta["seconds"] = {**seconds, "confirm": round(time.time() - lap, 1)}  # the stages' wall time
    peaks.mark("confirm")
    prep.meta["peak_rss_gb"] = peaks  # peak RSS so far at each stage's end
    return SearchResult(prep, inputs, study, journal, front, conf)


def write_search(out: Path, result: SearchResult, ts: TargetedSettings, force: bool = False) -> str:
    """`steer search`'s folder: pareto.json, contrasts.safetensors (+ .json), plots and search.md; returns the table."""
    prep, conf = result.prepared, result.confirmation
    with atomic_dir(out, force) as tmp:
        write_json(
            tmp / "pareto.json",
            {
                "front": result.front,
                "confirm": conf,
                "trials": trial_rows(result.study),
                "prepare": prep.meta,
                "settings": asdict(ts),
                "study": str(result.journal),
            },
        )
        prep.contrasts.save(
            tmp / "contrasts.safetensors",
            {"chosen": conf["chosen"]["params"], "keep_safety": ts.keep_safety, "keep_layers": ts.keep_layers},
        )
        _plots(tmp, result)
        md = tables.pareto_table(result.front, conf["candidates"], conf["chosen"])
        opt = tables.optimize_summary(prep.meta.get("optimize"))
        (tmp / "search.md").write_text(f"# steer search\n\n{md}\n\n{opt}\n\n{conf['note'] or ''}\n", encoding="utf-8")
    return md


def _plots(folder: Path, result: SearchResult) -> None:
    tables.plot_cosines(
        result.prepared.contrasts.cosines(), folder / "cosines.png", "cosine similarity per layer (last position)"
    )
    tables.plot_pareto(trial_rows(result.study), result.front, result.confirmation["chosen"], folder / "pareto.png")


def _readout(
    loaded: Loaded, result: SearchResult, basis: torch.Tensor, ts: TargetedSettings, seconds: dict
) -> tuple[Readout | None, dict | None]:
    """The readout on top of the chosen edit (steer.targeted.readout), or none with --readout-steps 0."""
    if ts.readout_steps <= 0:
        return None, None
    log(f"training a readout on top of the chosen edit ({ts.readout_steps} steps)")
    lap = time.time()
    fit = fit_readout(
        loaded.model, loaded.tokenizer, result.prepared, basis, result.params, ts, result.confirmation["chosen"]["kl"]
    )
    info = fit.info
    seconds["readout"] = round(time.time() - lap, 1)
    result.prepared.meta["peak_rss_gb"].mark("readout")
    log(
        f"no readout: {info['skipped']}"
        if "skipped" in info
        else f"readout kept at scale {info['scale']} (validation: harmful floor, first-token {info['kl_stat']} <= "
        f"{info['kl_max']:.4f})"
    )
    return fit.readout, info


def targeted_abliterate(
    model: str | None,
    out: Path,
    ts: TargetedSettings | None = None,
    settings: Settings | None = None,
    force: bool = False,
    study: Path | None = None,
) -> dict:
    """Remove censorship but keep safety refusals: contrasts (sensitive vs controls, harmful vs
    harmless), an Optuna search scored without decoding, judge-confirmed Pareto candidates, a
    readout, then the same evaluate-and-save path as `abliterate`. `study` (a journal file) makes
    the search resumable; by default it lives in $STEER_CACHE/search/."""
    ts, settings, out = ts or TargetedSettings(), settings or Settings(), Path(out)
    check_output(out, force, (Path(model) if model else None,))
    started = time.time()
    loaded = load_model(model, dtype=compute_dtype(settings))
    # 1. the search and its confirmed choice (steer.targeted.search, .confirm); tokens counted (steer.report.cost)
    with count_tokens(loaded.model) as tokens:
        result = search(loaded, ts, study)
        basis = edit_basis(result.inputs, result.params)
        seconds = result.prepared.meta.pop("seconds")
        # 2. the readout on top of it (steer.targeted.readout)
        readout, rinfo = _readout(loaded, result, basis, ts, seconds)
    edit = result.params.edit(basis, readout)
    # 3. before/after with the edit previewed for KL, then written into the weights
    lap = time.time()
    measured = before_after(
        loaded, eval_config(settings), lambda: preview(loaded.model, edit), lambda: edit.apply(loaded.model)
    )
    seconds["evaluate"] = round(time.time() - lap, 1)
    peaks = result.prepared.meta.pop("peak_rss_gb")
    peaks.mark("evaluate")
    report = {
        "model": loaded.source,
        "mode": "targeted",
        "targeted_settings": asdict(ts),
        "settings": asdict(settings),
        "edit": result.params.to_dict(),
        "prepare": result.prepared.meta,
        "confirm": result.confirmation,
        "readout": rinfo,
        "pareto": result.front,
        "cosines": result.prepared.contrasts.cosines(),
        "before": measured.before,
        "after": measured.after,
        "cost": tokens.summary(n_params(loaded.model)),
        "peak_rss_gb_by_stage": peaks,
    }
    # 4. checkpoint, contrasts (+ readout), plots, report and manifest, appearing together
    md = _save(out, force, loaded, result, edit, (ts, settings), report, seconds, started)
    print(md)
    return report


def _save(
    out: Path,
    force: bool,
    loaded: Loaded,
    result: SearchResult,
    edit: Edit,
    both: tuple[TargetedSettings, Settings],
    report: dict,
    seconds: dict,
    started: float,
) -> str:
    """The output folder, atomically: checkpoint (as save_weights writes it for the --dtype), contrasts, plots,
    report.json/.md, manifest; returns report.md."""
    ts, settings = both
    with atomic_dir(out, force) as tmp:
        save_weights(loaded, settings, edit, tmp)
        _save_contrasts(tmp, result, edit, ts, report["readout"])
        _plots(tmp, result)
        report["elapsed_s"] = round(time.time() - started, 1)
        report["seconds"] = {**seconds, "load_save": round(time.time() - started - sum(seconds.values()), 1)}
        report["peak_rss_gb"] = peak_rss_gb()
        write_json(tmp / "report.json", report)
        md = _markdown(loaded, report, result, report["readout"])
        (tmp / "report.md").write_text(md + "\n", encoding="utf-8")
        manifest.write(
            tmp,
            kernel=kernel_name(next(loaded.model.parameters()).device),
            input={"model": loaded.source, "sha256": checkpoint_hash(loaded.path) if loaded.path else None},
            edit=result.params.to_dict(),
            targeted_settings=asdict(ts),
            prompts=result.prepared.meta["prompts"],
            study=str(result.journal),
            output_sha256=checkpoint_hash(tmp),
        )
    return md


def _save_contrasts(folder: Path, result: SearchResult, edit: Edit, ts: TargetedSettings, rinfo: dict | None) -> None:
    """contrasts.safetensors with the readout, and the sidecar `steer edit` rebuilds the edit from."""
    contrasts = result.prepared.contrasts
    contrasts.readout = edit.readout
    contrasts.save(
        folder / "contrasts.safetensors",
        {
            "edit": result.params.to_dict(),
            "keep_safety": ts.keep_safety,
            "keep_layers": ts.keep_layers,
            "readout": {k: rinfo[k] for k in ("settings", "kl_stat", "kl_max", "scale")} if edit.readout else None,
        },
    )


def _markdown(loaded: Loaded, report: dict, result: SearchResult, rinfo: dict | None) -> str:
    conf = result.confirmation
    return "\n".join(
        [
            f"# steer abliterate --keep-safety: {loaded.source}\n",
            tables.before_after_table(report["before"], report["after"]),
            "",
            f"Edit: {report['edit']}",
            "",
            tables.optimize_summary(result.prepared.meta.get("optimize")),
            "",
            tables.readout_summary(rinfo),
            "",
            tables.stage_times(report["seconds"], report["elapsed_s"]),
            "",
            "## Pareto front (validation split)\n",
            tables.pareto_table(result.front, conf["candidates"], conf["chosen"]),
            "",
            conf["note"] or "",
        ]
    )
