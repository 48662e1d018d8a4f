"""The plain pipeline, `steer abliterate`: locate and select a direction, measure the edit, write it, save.

from steer import abliterate, Settings
report = abliterate(None, "out/qwen-abliterated", Settings())
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from steer.checkpoint import manifest
from steer.checkpoint.save import atomic_dir, check_output, save_checkpoint
from steer.checkpoint.stream import edit_checkpoint
from steer.edit.kernels import kernel_name
from steer.edit.preview import Edit, preview
from steer.errors import SteerError
from steer.eval.before_after import before_after, eval_config
from steer.locate.directions import DirectionSet
from steer.locate.run import Settings, check_prompts, directions, log
from steer.model.load import COMPUTE_DTYPES, Loaded, checkpoint_hash, load_model
from steer.report.cost import count_tokens, n_params
from steer.report.memory import Peaks, peak_rss_gb
from steer.report.tables import before_after_table, plot_selection, selection_table, write_report


def abliterate(model: str | None, out: Path, settings: Settings | None = None, force: bool = False) -> dict:
    """Find the refusal direction, orthogonalize it out, evaluate before/after, save to `out`."""
    settings, out = settings or Settings(), Path(out)
    # 1. fail on bad output paths or prompt files before the model loads
    check_output(out, force, (Path(model) if model else None,))
    check_prompts(settings)
    started = time.time()
    loaded = load_model(model, dtype=compute_dtype(settings))
    log(f"loaded {loaded.source} ({type(loaded.model).__name__}, {loaded.model.config.num_hidden_layers} layers)")
    # 2. directions and the selected one (steer.locate); the tokens they cost (steer.report.cost)
    peaks, seconds, lap = Peaks(), {"load": round(time.time() - started, 1)}, time.time()
    peaks.mark("load")
    with count_tokens(loaded.model) as tokens:
        dirs = directions(loaded, settings)
    seconds["directions"], lap = round(time.time() - lap, 1), time.time()
    peaks.mark("directions")
    edit = Edit(dirs.vector())
    # 3. before/after: the base model, KL against the previewed edit, the edit written, the edited model
    measured = before_after(
        loaded, eval_config(settings), lambda: preview(loaded.model, edit), lambda: _apply(loaded, edit, dirs)
    )
    seconds["evaluate"] = round(time.time() - lap, 1)
    report = {
        "model": loaded.source,
        "settings": asdict(settings),
        "selection": dirs.meta["selection"],
        "before": measured.before,
        "after": measured.after,
        "cost": tokens.summary(n_params(loaded.model)),
        "peak_rss_gb_by_stage": peaks,
    }
    peaks.mark("evaluate")
    # 4. checkpoint, directions, plot, report and manifest, appearing together
    with atomic_dir(out, force) as tmp:
        save_weights(loaded, settings, edit, tmp)
        dirs.save(tmp / "directions.safetensors")
        plot_selection(dirs.meta["selection"], loaded.model.config.num_hidden_layers, tmp / "selection.png")
        report["elapsed_s"] = round(time.time() - started, 1)
        report["seconds"] = {**seconds, "save": round(report["elapsed_s"] - sum(seconds.values()), 1)}
        report["peak_rss_gb"] = peak_rss_gb()
        write_report(tmp, report)
        write_manifest(tmp, loaded, dirs, report)
    print(selection_table(dirs.meta["selection"]) + "\n")
    print(before_after_table(measured.before, measured.after))
    return report


def compute_dtype(settings: Settings) -> torch.dtype:
    """The dtype the model is loaded in for the forward passes (Settings.dtype)."""
    return COMPUTE_DTYPES[settings.dtype]


def save_weights(loaded: Loaded, settings: Settings, edit: Edit, tmp: Path) -> None:
    """float32: the edited model in memory. bfloat16: the input checkpoint edited tensor by tensor in its own
    dtype (as `steer edit` writes it), not the rounded copy the measurements ran on."""
    if settings.dtype == "float32":
        save_checkpoint(loaded.model, loaded.tokenizer, tmp)
        return
    if not edit.project:
        raise SteerError("a readout-only edit has no streamed form; save it with --dtype float32")
    readout = (edit.r, edit.readout) if edit.readout else None
    src = loaded.path or Path(loaded.source)  # a .gguf has no folder
    edit_checkpoint(
        src,
        tmp / "weights",
        edit.basis.float(),
        profiles=edit.profiles,
        embed=edit.embed,
        preserve_norm=edit.preserve_norm,
        readout=readout,
    )
    for f in (tmp / "weights").iterdir():
        os.replace(f, tmp / f.name)
    (tmp / "weights").rmdir()


def _apply(loaded: Loaded, edit: Edit, dirs: DirectionSet) -> None:
    n = edit.apply(loaded.model)
    log(f"orthogonalized {n} tensors against layer {dirs.selected[0]}, position {dirs.selected[1]}")


def write_manifest(folder: Path, loaded: Loaded, dirs: DirectionSet, report: dict | None) -> dict:
    """The plain run's manifest: what is needed to rebuild (and verify) the output weights."""
    metrics = (
        None
        if report is None
        else {
            side: {
                f"{suite}/{name}": m["value"] for suite, r in report[side].items() for name, m in r["metrics"].items()
            }
            for side in ("before", "after")
        }
    )
    direction = {
        "layer": dirs.selected[0],
        "position": dirs.selected[1],
        "method": dirs.meta.get("method"),
        "refusal_tokens": dirs.meta.get("selection", {}).get("refusal_token_strings"),
    }
    return manifest.write(
        folder,
        kernel=kernel_name(next(loaded.model.parameters()).device),  # which projection kernel wrote the weights
        input={"model": loaded.source, "sha256": checkpoint_hash(loaded.path) if loaded.path else None},
        prompts=dirs.meta.get("prompts"),
        settings=dirs.meta.get("settings"),
        direction=direction,
        metrics=metrics,
        output_sha256=checkpoint_hash(folder),
    )
