"""Directions: difference in means per layer and position, the projected variant, save/load.

Layout throughout: [n_layers, n_positions, d_model], float64; layer l is the residual
stream entering decoder layer l, position p counts the last n_positions prompt tokens.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import einops
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from steer.errors import SteerError


def diff_in_means(target: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """mean(target) - mean(baseline) per layer and position (not normalized)."""
    if target.shape != baseline.shape:
        raise ValueError(f"mean shapes differ: {tuple(target.shape)} vs {tuple(baseline.shape)}")
    return target.double() - baseline.double()


def project_off(directions: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The "projected" variant: remove from each direction its component along `reference`.

    Both [..., d_model]; with reference = the harmless mean this keeps only the part of the
    refusal direction that is not just "more of the usual activation" (grimjim).
    """
    unit = reference.double() / reference.double().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return directions.double() - (directions.double() * unit).sum(-1, keepdim=True) * unit


def remove_span(directions: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Remove from each direction its component in span(others): the part left is orthogonal to all.

    directions: [..., d]; others: [..., d] (one vector per leading index), [..., m, d] (m vectors
    per leading index) or [d] (one vector for all). Float64.
    Used to make the censorship direction orthogonal to the harmful-refusal direction (and the
    harmless mean), so removing it leaves safety refusals in place.
    """
    d = directions.double()
    o = others.double()
    if o.dim() == 1 or o.dim() == d.dim():
        o = o.unsqueeze(-2)
    if o.dim() != d.dim() + 1:
        raise ValueError(f"others {tuple(others.shape)} does not match directions {tuple(directions.shape)}")
    # Orthonormal basis of span(others) by SVD, keeping only directions with a non-zero singular
    # value: a zero or dependent row (layer 0's harmful direction is zero) spans nothing. (A QR
    # basis would give such a row an arbitrary unit column, and remove that too.)
    u, sv, _ = torch.linalg.svd(o.transpose(-1, -2), full_matrices=False)  # [..., d, m]
    q = u * (sv > 1e-9 * sv.amax(-1, keepdim=True)).unsqueeze(-2)
    coeff = einops.einsum(d, q, "... d, ... d m -> ... m")
    return d - einops.einsum(coeff, q, "... m, ... d m -> ... d")


def orthonormalize(vectors: torch.Tensor, *, drop_dependent: bool = False, rtol: float = 1e-12) -> torch.Tensor:
    """The one orthonormalisation: rows [k', d] (float64) spanning vectors [k, d] (or [d]), in order.

    Row i is vectors[i] minus its components along the earlier rows, normalized, with its sign
    (QR of vectors^T, columns signed by R's diagonal). A row left with a norm below rtol x the
    largest input norm is dependent: dropped with drop_dependent (a later row then takes its
    place), else ValueError. Used for edit bases (steer.edit), searched subspaces
    (steer.targeted.search) and optimized subspaces (steer.targeted.optimize).
    """
    v = vectors.reshape(-1, vectors.shape[-1]).double()
    scale, keep = float(v.detach().norm(dim=1).max()), list(range(v.shape[0]))
    while keep:
        q, r = torch.linalg.qr(v[keep].T)
        small = (r.diagonal().abs() < rtol * scale).nonzero().flatten().tolist()
        if not small:
            return (q * torch.sign(r.diagonal())).T
        if not drop_dependent:
            raise ValueError("directions are linearly dependent or zero")
        del keep[small[0]]
    raise ValueError("no direction left: every one lies in the span of those before it (or is zero)")


def principal_directions(diffs: torch.Tensor, k: int, mean_direction: torch.Tensor | None = None) -> torch.Tensor:
    """Top-k principal directions [k, d] (unit, float64) of per-prompt differences diffs [n, d].

    diffs are target activations minus the baseline mean (one row per target prompt), so the
    first component is close to the diff-in-means direction and the next ones span the rest of
    the refusal "cone". Signs are fixed so each component points along mean_direction (default:
    the mean of diffs) where it has a component, making the result deterministic.
    """
    if not 1 <= k <= min(diffs.shape):
        raise ValueError(f"k must be between 1 and {min(diffs.shape)}, got {k}")
    x = diffs.double()
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # uncentred: the mean shift is the signal
    comps = vh[:k]
    ref = x.mean(0) if mean_direction is None else mean_direction.double()
    signs = torch.sign(comps @ ref)
    signs[signs == 0] = 1
    return comps * signs[:, None]


def interpolate(directions: torch.Tensor, index: float, position: int = -1) -> torch.Tensor:
    """Unit direction [d] at a fractional layer index: linear blend of the two neighbouring
    layers' unit directions at `position` (index 10.25 = 0.75 * layer 10 + 0.25 * layer 11)."""
    n = directions.shape[0]
    if not 0 <= index <= n - 1:
        raise ValueError(f"direction index {index} outside 0..{n - 1}")
    lo = int(index)
    hi = min(lo + 1, n - 1)
    unit = lambda v: v.double() / v.double().norm().clamp_min(1e-12)  # noqa: E731
    v = (1 - (index - lo)) * unit(directions[lo, position]) + (index - lo) * unit(directions[hi, position])
    return unit(v)


@dataclass
class DirectionSet:
    """Candidate directions for every (layer, position), and optionally the chosen one."""

    directions: torch.Tensor  # [L, P, d] float64, unnormalized
    target_mean: torch.Tensor  # [L, P, d] float64
    baseline_mean: torch.Tensor  # [L, P, d] float64
    meta: dict = field(default_factory=dict)  # model, prompt hashes, method, selection ...

    @property
    def selected(self) -> tuple[int, int] | None:
        sel = self.meta.get("selected")
        return (sel["layer"], sel["position"]) if sel else None

    def vector(self, layer: int | None = None, position: int | None = None) -> torch.Tensor:
        """Unit direction [d] at (layer, position); layer None means the selected candidate.

        position counts from the end of the prompt: -1 is the last token.
        """
        if layer is None:
            if self.selected is None:
                raise SteerError("no direction selected in this file: pass --layer (and --position)")
            layer, chosen = self.selected
            position = chosen if position is None else position
        position = -1 if position is None else position
        n_layers, n_pos, _ = self.directions.shape
        if not (0 <= layer < n_layers and -n_pos <= position < 0):
            raise SteerError(
                f"no direction at layer {layer}, position {position}: "
                f"have layers 0..{n_layers - 1}, positions -{n_pos}..-1"
            )
        v = self.directions[layer, position]
        return (v / v.norm()).float()

    def save(self, path: Path) -> None:
        """Write PATH (.safetensors) and its JSON sidecar PATH.json, each atomically."""
        path = Path(path)
        tensors = {"directions": self.directions, "target_mean": self.target_mean, "baseline_mean": self.baseline_mean}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(
            {k: v.detach().clone() for k, v in tensors.items()}, str(tmp), metadata={"format": "steer-directions"}
        )
        os.replace(tmp, path)
        side = sidecar(path)
        tmp_json = side.with_name(f".{side.name}.tmp")
        tmp_json.write_text(json.dumps(self.meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp_json, side)

    @classmethod
    def load(cls, path: Path) -> DirectionSet:
        path = Path(path)
        if path.is_dir():
            path = path / "directions.safetensors"
        if not path.is_file():
            raise SteerError(f"no such directions file: {path}")
        try:
            t = load_file(str(path))
            meta = json.loads(sidecar(path).read_text()) if sidecar(path).is_file() else {}
            ds = cls(t["directions"], t["target_mean"], t["baseline_mean"], meta)
        except (KeyError, ValueError, OSError, SafetensorError) as exc:
            raise SteerError(f"corrupt directions file {path}: {exc}") from None
        if ds.directions.dim() != 3 or not torch.isfinite(ds.directions).all():
            raise SteerError(f"corrupt directions file {path}: expected finite [layers, positions, d_model]")
        return ds


def sidecar(path: Path) -> Path:
    """The JSON file beside a directions file: the same path with the suffix .json."""
    return path.with_suffix(".json")


def is_contrasts_file(path: Path) -> bool:
    """Whether path is the contrasts file of a --keep-safety run (steer.targeted.contrasts.Contrasts)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            return (fh.metadata() or {}).get("format") == "steer-contrasts"
    except Exception:
        return False
