"""Edit: remove directions from the residual stream, in the weights or with hooks.

All weight edits compute `project_out` (in place, through its fast twin `kernels.project`);
hook ablation applies the very same projection to the outputs of the same modules, so the two
agree up to float rounding (tested).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import einops
import torch

from steer.edit.kernels import Side, project
from steer.locate.directions import orthonormalize
from steer.model.adapters import Resolved, resolve


def orthonormal_basis(directions: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis [d_model, k] (float32) spanning directions [k, d_model] or [d_model]
    (steer.locate.directions.orthonormalize, transposed; dependent directions are an error)."""
    return orthonormalize(directions).T.to(torch.float32)


def project_out(
    weight: torch.Tensor, basis: torch.Tensor, side: Side, strength: float = 1.0, preserve_norm: bool = False
) -> torch.Tensor:
    """Return `weight` with span(basis) removed from its residual-stream side.

    basis: [d_model, k], orthonormal columns (B^T B = I).
    side="out": weight is [d_model, d_in], a map that writes into the residual stream
        (nn.Linear.weight of o_proj/down_proj; a bias [d_model] is treated as d_in = 1):
        W <- W - s B (B^T W).  With s = 1 every output has no component in span(B).
    side="in": weight is [n, d_model], rows living in the residual stream (embedding rows):
        W <- W - s (W B) B^T.
    strength s scales the removal (0 = unchanged, 1 = full projection).
    preserve_norm: afterwards rescale every residual-space vector (a column of an "out" weight,
    a row of an "in" weight) back to its original norm; directions stay as projected, only
    magnitudes are restored (norm-preserving abliteration).
    The maths runs in float32 (float64 for float64 weights); the result has weight's dtype.
    With s = 1: idempotent, project_out(project_out(W)) == project_out(W) up to rounding.
    """
    compute = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.to(compute)
    b = basis.to(device=w.device, dtype=compute)
    if side == "out":
        w2 = w.unsqueeze(-1) if w.dim() == 1 else w
        coeff = einops.einsum(b, w2, "d k, d n -> k n")
        new = w2 - strength * einops.einsum(b, coeff, "d k, k n -> d n")
        if preserve_norm:
            new = new * (w2.norm(dim=0) / new.norm(dim=0).clamp_min(1e-12))[None, :]
        w = new.squeeze(-1) if w.dim() == 1 else new
    elif side == "in":
        coeff = einops.einsum(w, b, "n d, d k -> n k")
        new = w - strength * einops.einsum(coeff, b, "n k, d k -> n d")
        if preserve_norm:
            new = new * (w.norm(dim=1) / new.norm(dim=1).clamp_min(1e-12))[:, None]
        w = new
    else:
        raise ValueError(f"side must be 'out' or 'in', not {side!r}")
    return w.to(weight.dtype)


def writer_basis(resolved: Resolved, basis: torch.Tensor, norm: torch.nn.Module | None) -> torch.Tensor:
    """Basis to project a writer's output against so the *residual update* avoids span(basis).

    Without a post-norm the update is the output itself. With an RMSNorm y = s * x / rms(x)
    (s = norm_offset + weight, Gemma 2/3), r.y = (s*r).x / rms(x), so removing s*r from x
    removes r from y exactly: the basis is the orthonormalized s-scaled directions.
    """
    if norm is None:
        return basis
    scale = resolved.adapter.norm_offset + norm.weight.detach().to(torch.float32).cpu()
    return orthonormal_basis((basis * scale[:, None]).T)


@dataclass(frozen=True)
class Profile:
    """Edit strength per layer for one component (attention or MLP output): `peak` at the
    fractional layer `center`, falling linearly to `floor` at `width` layers away and staying
    there. The default, Profile(), is strength 1 at every layer (plain abliteration)."""

    peak: float = 1.0
    center: float = 0.0
    width: float = math.inf
    floor: float = 1.0

    def weights(self, n_layers: int) -> list[float]:
        return [
            self.floor + (self.peak - self.floor) * max(0.0, 1 - abs(i - self.center) / self.width)
            for i in range(n_layers)
        ]


def _strengths(res: Resolved, profiles: dict[str, Profile] | None) -> list[list[float]]:
    """Per layer, per writer: the strength its component's profile gives at that layer."""
    profiles = profiles or {}
    unknown = set(profiles) - {w.component for w in res.adapter.writers}
    if unknown:
        raise ValueError(
            f"no writer component {sorted(unknown)}; have {sorted({w.component for w in res.adapter.writers})}"
        )
    n = len(res.layers)
    per = {w.component: profiles.get(w.component, Profile()).weights(n) for w in res.adapter.writers}
    return [[per[b.writer.component][i] for b in res.writers[i]] for i in range(n)]


@torch.no_grad()
def orthogonalize(
    model: torch.nn.Module,
    directions: torch.Tensor,
    *,
    profiles: dict[str, Profile] | None = None,
    embed: float = 1.0,
    preserve_norm: bool = False,
) -> int:
    """Orthogonalize the model's residual writers against directions [d_model] or [k, d_model], in place.

    Edits the embedding (strength `embed`) and every writer (weight and bias; each expert's
    matrix of a mixture of experts) listed by the adapter, with the strength its component's
    profile gives at its layer (default 1 everywhere); `preserve_norm` keeps every written
    vector's norm (see project_out). A tied unembedding is untied first so the readout stays as
    it was. Returns the number of tensors edited.
    """
    res = resolve(model)
    basis = orthonormal_basis(directions)
    strengths = _strengths(res, profiles)
    _untie(model, res)
    # kernels.project: same maths as project_out, in place, without full-size float32 copies
    project(res.embed.weight, basis, "in", embed, preserve_norm, out=res.embed.weight)
    edited = 1
    for layer_writers, layer_strengths in zip(res.writers, strengths):
        for writer, s in zip(layer_writers, layer_strengths):
            wb = writer_basis(res, basis, writer.norm)
            for matrix, side in writer.matrices():  # 2-D views: fused experts one slice at a time
                project(matrix, wb, side, s, preserve_norm, out=matrix)
            edited += 1 + (writer.bias is not None)
    return edited


def _untie(model: torch.nn.Module, res: Resolved) -> None:
    if res.lm_head.weight is res.embed.weight or res.lm_head.weight.data_ptr() == res.embed.weight.data_ptr():
        res.lm_head.weight = torch.nn.Parameter(res.embed.weight.detach().clone())
        for config in (model.config, getattr(model.config, "text_config", None)):
            if config is not None and hasattr(config, "tie_word_embeddings"):
                config.tie_word_embeddings = False


def _project_output_hook(basis: torch.Tensor, strength: float = 1.0):
    def hook(module, args, output):
        b = basis.to(device=output.device, dtype=output.dtype)
        return output - strength * (output @ b) @ b.T

    return hook


def ablation_hooks(
    model: torch.nn.Module, directions: torch.Tensor, *, profiles: dict[str, Profile] | None = None, embed: float = 1.0
) -> list[torch.utils.hooks.RemovableHandle]:
    """Register hooks that project the embedding's and every writer's output like the weight edit
    (same strengths; the norm-preserving variant has no hook form). The caller removes the
    returned handles; `ablated` does so on exit.
    """
    res = resolve(model)
    basis = orthonormal_basis(directions)
    handles = [res.embed.register_forward_hook(_project_output_hook(basis, embed))]
    for layer_writers, layer_strengths in zip(res.writers, _strengths(res, profiles)):
        for writer, s in zip(layer_writers, layer_strengths):  # a fused experts module outputs their weighted sum
            handles.append(
                writer.module.register_forward_hook(_project_output_hook(writer_basis(res, basis, writer.norm), s))
            )
    return handles


@contextmanager
def added(model: torch.nn.Module, layer: int, vector: torch.Tensor) -> Iterator[None]:
    """Activation addition: add `vector` [d_model] to the residual stream entering `layer`, all positions."""
    target = resolve(model).layers[layer]

    def hook(module, args, kwargs):
        key = "hidden_states"
        h = args[0] if args else kwargs[key]
        h = h + vector.to(device=h.device, dtype=h.dtype)
        return ((h,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, key: h})

    handle = target.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
