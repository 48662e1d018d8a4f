"""One edit object and one preview context for every kind of edit.

An `Edit` is what steer writes into weights: span(basis) projected out of the embedding and every
residual writer (strength per layer from the component profiles; optionally norm-preserving), and
optionally a learned rank-1 readout along basis[0] (steer.edit.rank1). `preview(model, edit)`
applies it for the duration of a block without keeping it; `edit.apply(model)` keeps it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from steer.edit.project import Profile, ablation_hooks, orthogonalize
from steer.edit.rank1 import Readout, bake, readout_hooks
from steer.model.adapters import resolve


@dataclass(frozen=True)
class Edit:
    """basis: [k, d_model] or [d_model] directions (orthonormalized where applied); profiles:
    {"attn" | "mlp": Profile} strengths per layer (default 1 everywhere); embed: the embedding's
    strength; preserve_norm: keep every written vector's norm; readout: a rank-1 readout along
    basis[0], added after the projection; project=False: the readout alone."""

    basis: torch.Tensor
    profiles: dict[str, Profile] | None = None
    embed: float = 1.0
    preserve_norm: bool = False
    readout: Readout | None = None
    project: bool = True

    @property
    def r(self) -> torch.Tensor:
        """The readout's direction [d_model] (float32): the basis' first row."""
        return self.basis.reshape(-1, self.basis.shape[-1])[0].float()

    def apply(self, model: torch.nn.Module) -> int:
        """Write the edit into the weights, in place; returns the number of tensors changed."""
        n = 0
        if self.project:
            n = orthogonalize(
                model, self.basis.float(), profiles=self.profiles, embed=self.embed, preserve_norm=self.preserve_norm
            )
        if self.readout:
            n += bake(model, self.r, self.readout)
        return n


@contextmanager
def preview(model: torch.nn.Module, edit: Edit | torch.Tensor, *, in_weights: bool = False) -> Iterator[None]:
    """The edit in effect inside the block, the model as it was after it. A tensor means
    Edit(tensor): full-strength removal of those directions. By default hooks on the embedding and
    the writers (the same projection, then the readout, as `apply` writes; tested equal up to
    float rounding); for the norm-preserving variant (no hook form) or in_weights=True, the edit is
    written into the weights and every changed tensor restored exactly on exit (no per-pass hook
    cost, and gradients see exactly the saved weights)."""
    edit = edit if isinstance(edit, Edit) else Edit(edit)
    if edit.preserve_norm or in_weights:
        with _restored(model):
            edit.apply(model)
            yield
        return
    handles = []
    try:
        if edit.project:
            handles += ablation_hooks(model, edit.basis.float(), profiles=edit.profiles, embed=edit.embed)
        if edit.readout:
            handles += readout_hooks(model, edit.r, edit.readout)
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _restored(model: torch.nn.Module) -> Iterator[None]:
    """Every tensor an edit may write (embedding, writers' weights and biases, the tie of the
    unembedding) restored exactly on exit, from a spill file rather than RAM clones: the copy
    would otherwise sit beside the weights at the readout's peak (1.0 GB on the 0.5B)."""
    res = resolve(model)
    params = [res.embed.weight] + [
        t for layer in res.writers for w in layer for t in (w.weight, w.bias) if t is not None
    ]
    head, tied = res.lm_head.weight, getattr(model.config, "tie_word_embeddings", None)
    with tempfile.TemporaryFile(prefix="steer-preview-") as spill:
        for t in params:
            spill.write(_raw(t.detach().cpu()))
        try:
            yield
        finally:
            spill.seek(0)
            with torch.no_grad():
                for t in params:
                    _read_into(spill, t)
            res.lm_head.weight = head
            if tied is not None:
                model.config.tie_word_embeddings = tied


def _raw(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, shared with it (bfloat16 included)."""
    return memoryview(t.contiguous().view(-1).view(torch.uint8).numpy())


def _read_into(spill, t: torch.Tensor) -> None:
    """Fill t with the next t.nbytes bytes of spill, in place (through a CPU buffer off the CPU)."""
    direct = t.device.type == "cpu" and t.is_contiguous()
    buf = t.detach() if direct else torch.empty(t.shape, dtype=t.dtype)
    view, done = _raw(buf), 0
    while done < len(view):
        n = spill.readinto(view[done:])
        if not n:
            raise OSError(f"preview spill file ended early restoring a {tuple(t.shape)} tensor")
        done += n
    if not direct:
        t.copy_(buf)
