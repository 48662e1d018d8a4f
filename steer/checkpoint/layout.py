"""Layout and plan of a streamed edit: the output shards and their tensors (where each one's bytes come from), a
tied unembedding untied, and each tensor's edit set from the per-architecture adapter table, checked loudly
(shapes, dtypes, every layer's writers present). steer.checkpoint.stream executes the plan.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

import torch

from steer.checkpoint.rawio import TORCH_DTYPES, numel, read_header
from steer.edit.project import Profile
from steer.errors import SteerError
from steer.model.adapters import Adapter
from steer.model.load import weight_files


@dataclass(frozen=True)
class TensorEdit:
    """How one tensor is edited: project_out(matrix, basis, side, strength) for its matrix, or for
    each expert's slice of a fused [E, ...] tensor; `norm` names the post-norm weight whose scale
    gives the writer's basis (Gemma, see steer.edit.project.writer_basis); `readout` names the learned
    readout vector added after the projection (steer.targeted.readout: W <- W + r a^T)."""

    side: str
    strength: float
    norm: str | None = None
    fused: bool = False
    readout: str | None = None


@dataclass
class Entry:
    """One tensor of an output shard and where its bytes come from."""

    name: str
    dtype: str  # safetensors dtype ("BF16")
    shape: list[int]
    nbytes: int
    src: Path | None  # input file (None: it comes from a GGUF source's iterator)
    offset: int  # absolute offset of its bytes in src
    edit: TensorEdit | None = None
    copy_of: str | None = None  # an untied lm_head: the original bytes of this tensor


@dataclass
class Shard:
    """One output safetensors file: its name (the input shard's; for a GGUF input model.safetensors or
    model-0000i-of-0000n.safetensors), its __metadata__, and its tensors in write order."""

    file: str  # output (and input) file name
    metadata: dict | None
    entries: list[Entry] = field(default_factory=list)


# ------------------------------------------------------------------------------------ layout


def folder_shards(src: Path) -> list[Shard]:
    """The input's shards and tensors (headers validated: truncation, missing shards)."""
    shards, seen = [], set()
    for f in weight_files(src):
        infos, metadata = read_header(f)
        shard = Shard(f.name, metadata, [Entry(t.name, t.dtype, t.shape, t.nbytes, f, t.offset) for t in infos])
        if dup := seen & {e.name for e in shard.entries}:
            raise SteerError(f"tensor {sorted(dup)[0]} appears in two shards of {src}")
        seen |= {e.name for e in shard.entries}
        shards.append(shard)
    return shards


def gguf_shards(specs: list[tuple[str, tuple[int, ...]]], shard_bytes: int) -> list[Shard]:
    """float32 output shards of at most shard_bytes (a bigger tensor gets a shard of its own)."""
    groups: list[list[Entry]] = [[]]
    size = 0
    for name, shape in specs:
        n = 4 * numel(shape)
        if groups[-1] and size + n > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(Entry(name, "F32", list(shape), n, None, 0))
        size += n
    if len(groups) == 1:
        return [Shard("model.safetensors", {"format": "pt"}, groups[0])]
    return [
        Shard(f"model-{i:05d}-of-{len(groups):05d}.safetensors", {"format": "pt"}, g) for i, g in enumerate(groups, 1)
    ]


def n_layers_of(config: dict) -> int:
    """num_hidden_layers of a config.json (or of its text_config, for multimodal checkpoints)."""
    for c in (config, config.get("text_config") or {}):
        if isinstance(c.get("num_hidden_layers"), int):
            return c["num_hidden_layers"]
    raise SteerError("config.json has no num_hidden_layers")


def ties(config: dict, folder: Path) -> bool:
    """Whether the model ties lm_head to the embedding (config, else the config class default)."""
    for c in (config, config.get("text_config") or {}):
        if "tie_word_embeddings" in c:
            return bool(c["tie_word_embeddings"])
    from transformers import AutoConfig

    return bool(AutoConfig.from_pretrained(folder).get_text_config().tie_word_embeddings)


def untie(adapter: Adapter, shards: list[Shard]) -> bool:
    """Give lm_head the embedding's original bytes (what steer.edit.project._untie does in memory): replace its
    entry, or add one to the embedding's shard (where save_pretrained's sorted order puts it)."""
    emb_name, lm_name = f"{adapter.embed}.weight", f"{adapter.lm_head}.weight"
    shard, emb = next((s, e) for s in shards for e in s.entries if e.name == emb_name)
    lm = Entry(lm_name, emb.dtype, list(emb.shape), emb.nbytes, emb.src, emb.offset, copy_of=emb_name)
    for s in shards:
        for i, e in enumerate(s.entries):
            if e.name == lm_name:
                s.entries[i] = lm
                return True
    names = [e.name for e in shard.entries]
    sorted_file = names == sorted(names) and all(e.dtype == emb.dtype for e in shard.entries)
    shard.entries.insert(bisect.bisect(names, lm_name) if sorted_file else len(names), lm)
    return True


# -------------------------------------------------------------------------------------- plan


def plan(
    adapter: Adapter,
    shards: list[Shard],
    n_layers: int,
    d_model: int,
    profiles: dict[str, Profile],
    embed: float,
    src: Path,
    readout: dict[str, torch.Tensor] | None = None,
) -> set[str]:
    """Set each entry's edit from the adapter table; return the post-norm weights they need.

    The embedding [vocab, d_model] is edited on side "in" with strength `embed`; every writer
    weight and bias with its component's profile strength at its layer; the writer weights named
    in `readout` ("<layer>.<component>" -> a [d_in]) also get their readout vector.
    """
    readout = readout or {}
    components = {w.component for w in adapter.writers}
    if unknown := set(profiles) - components:
        raise SteerError(f"no writer component {sorted(unknown)}; have {sorted(components)}")
    per = {c: profiles.get(c, Profile()).weights(n_layers) for c in components}
    entries = {e.name: e for s in shards for e in s.entries}
    emb = entries.get(f"{adapter.embed}.weight")
    if emb is None or len(emb.shape) != 2:
        raise SteerError(f"{src} has no embedding {adapter.embed}.weight [vocab, d_model]")
    if emb.shape[1] != d_model:
        raise SteerError(f"the directions have hidden size {d_model}, model has {emb.shape[1]} ({src})")
    emb.edit = _checked(emb, TensorEdit("in", embed))
    found: dict[int, set] = {i: set() for i in range(n_layers)}
    for e in entries.values():
        hit = adapter.writer_of(e.name)
        if hit is None:
            continue
        layer, w, role = hit
        if layer >= n_layers:
            raise SteerError(f"{e.name}: layer {layer} but config.json has num_hidden_layers {n_layers}")
        _check_shape(e, w, role, d_model)
        norm = f"{adapter.layers}.{layer}.{w.post_norm}.weight" if w.post_norm else None
        side = "out" if role == "bias" else w.side
        key = f"{layer}.{w.component}" if role == "weight" and f"{layer}.{w.component}" in readout else None
        if key and (norm or len(e.shape) != 2 or w.d_model_axis != 0):
            raise SteerError(
                f"{e.name}: a learned readout needs a plain [d_model, d_in] writer "
                "added straight to the residual stream"
            )
        if key and list(readout[key].shape) != e.shape[1:]:
            raise SteerError(
                f"the readout vector for {key} has shape {list(readout[key].shape)}; {e.name} has {e.shape}"
            )
        e.edit = _checked(e, TensorEdit(side, per[w.component][layer], norm, fused=len(e.shape) == 3, readout=key))
        found[layer].add(w)
    _check_coverage(adapter, found)
    used = {e.edit.readout for e in entries.values() if e.edit and e.edit.readout}
    if missing := sorted(set(readout) - used):
        raise SteerError(f"the readout has a vector for writer {missing[0]}, which {src} does not have")
    norms = {e.edit.norm for e in entries.values() if e.edit and e.edit.norm}
    if missing := sorted(norms - set(entries)):
        raise SteerError(f"{src} has no post-norm weight {missing[0]} (needed to edit its writer)")
    return norms


def _checked(e: Entry, edit: TensorEdit) -> TensorEdit:
    if e.dtype not in TORCH_DTYPES:
        raise SteerError(f"cannot edit {e.name}: dtype {e.dtype} (only {', '.join(TORCH_DTYPES)}; de-quantize first)")
    return edit


def _check_shape(e: Entry, w, role: str, d: int) -> None:
    """Bias [d] ([E, d] fused); weight 2-D with d on the writer's d_model axis ([E, ...] fused)."""
    fused = w.fused and len(e.shape) == 3
    matrix = e.shape[1:] if fused else e.shape
    ok = matrix == [d] if role == "bias" else (len(matrix) == 2 and matrix[w.d_model_axis] == d)
    if not ok or (len(e.shape) == 3 and not w.fused):
        raise SteerError(f"{e.name} has shape {e.shape}; expected hidden size {d} on its residual-stream axis")


def _check_coverage(adapter: Adapter, found: dict[int, set]) -> None:
    components = {w.component for w in adapter.writers}
    for layer, writers in found.items():
        missing = [w for w in adapter.writers if not w.optional and w not in writers]
        missing_components = components - {w.component for w in writers}
        if missing or missing_components:
            what = missing[0].module if missing else f"{sorted(missing_components)[0]} writer"
            raise SteerError(f"layer {layer} has no {what} weight in the checkpoint (adapter table out of date?)")
