"""A recorded edit (a directions file, or the contrasts file of a --keep-safety run) applied to a
checkpoint: streamed tensor by tensor for local folders, .gguf files and the embedded model, in
memory for a hub id. What `steer edit` and `steer verify` run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from steer.checkpoint import manifest
from steer.checkpoint.save import atomic_dir, check_output, save_checkpoint
from steer.checkpoint.stream import edit_checkpoint
from steer.edit.preview import Edit
from steer.edit.rank1 import Readout
from steer.errors import SteerError
from steer.locate.directions import DirectionSet, is_contrasts_file
from steer.model import load
from steer.targeted.contrasts import recorded_edit, recorded_readout


@dataclass
class Recorded:
    """A recorded edit: basis [k, d_model] (float32), the streaming editor's options (profiles, embed,
    preserve_norm, readout) and what the manifest records about where it came from."""

    basis: torch.Tensor
    options: dict = field(default_factory=dict)
    entries: dict = field(default_factory=dict)

    def edit(self) -> Edit:
        """The same edit as an in-memory Edit."""
        readout: tuple[torch.Tensor, Readout] | None = self.options.get("readout")
        return Edit(
            self.basis,
            profiles=self.options.get("profiles"),
            embed=self.options.get("embed", 1.0),
            preserve_norm=self.options.get("preserve_norm", False),
            readout=readout[1] if readout else None,
        )


def recorded(directions: Path, layer: int | None = None, position: int | None = None) -> Recorded:
    """A directions file (its selected or layer/position direction, full strength) or the contrasts
    file of a --keep-safety run (the recorded subspace, strength profiles, norm preservation, readout)."""
    directions = Path(directions)
    source = directions / "contrasts.safetensors" if directions.is_dir() else directions
    if is_contrasts_file(source):
        basis, params = recorded_edit(source)
        options = {
            "profiles": {"attn": params.attn, "mlp": params.mlp},
            "embed": params.embed,
            "preserve_norm": params.preserve_norm,
        }
        entries = {"edit": params.to_dict(), "contrasts": str(source)}
        if readout := recorded_readout(source):  # baked along the edit's first direction, after the projection
            options["readout"] = (basis[0].float(), readout)
            entries["readout_writers"] = len(readout)
        return Recorded(basis.float(), options, entries)
    dirs = DirectionSet.load(directions)
    vector = dirs.vector(layer, position)
    layer, position = (layer, -1 if position is None else position) if layer is not None else dirs.selected
    entries = {
        "prompts": dirs.meta.get("prompts"),
        "settings": dirs.meta.get("settings"),
        "direction": {
            "file": str(directions),
            "layer": layer,
            "position": position,
            "method": dirs.meta.get("method"),
            "refusal_tokens": dirs.meta.get("selection", {}).get("refusal_token_strings"),
        },
    }
    return Recorded(vector[None], {}, entries)


def apply_recorded(model: str | None, rec: Recorded, out: Path, *, force: bool = False, hashes: bool = False) -> dict:
    """Write `out`: the checkpoint `model` (a folder, .gguf file, None / an embedded name, or a hub id) with
    the recorded edit. Returns the streaming editor's stats, or {"tensors_edited": n} in memory."""
    check_output(Path(out), force, (Path(model) if model else None,))
    path = Path(model) if model else None
    entries = dict(rec.entries)
    embedded = load.embedded_model(model)
    if embedded is not None:
        path, entries["input"] = load.embedded_checkpoint(model), {"model": f"embedded:{embedded.name}"}
    elif not (path.is_dir() or (path.suffix == ".gguf" and path.is_file())):
        return _in_memory(model, rec, Path(out), force, hashes)
    return edit_checkpoint(path, out, rec.basis, force=force, manifest=entries, hashes=hashes, **rec.options)


def _in_memory(model: str, rec: Recorded, out: Path, force: bool, hashes: bool) -> dict:
    """A hub id: loaded, edited in memory, saved (the streaming editor needs files on disk)."""
    loaded = load.load_model(model)
    d_model = loaded.model.get_input_embeddings().weight.shape[1]
    if rec.basis.shape[-1] != d_model:
        raise SteerError(f"the recorded directions have hidden size {rec.basis.shape[-1]}, the model has {d_model}")
    n = rec.edit().apply(loaded.model)
    with atomic_dir(out, force) as tmp:
        save_checkpoint(loaded.model, loaded.tokenizer, tmp)
        in_sha = load.checkpoint_hash(loaded.path) if loaded.path and hashes else None
        manifest.write(
            tmp,
            **rec.entries,
            input={"model": loaded.source, "sha256": in_sha},
            output_sha256=load.checkpoint_hash(tmp) if hashes else None,
        )
    return {"tensors_edited": n}
