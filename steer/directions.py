"""Directions: difference in means per layer and position, the projected variant, save/load.

Layout throughout: [n_layers, n_positions, d_model], float64; layer l is the residual
stream entering decoder layer l, position p counts the last n_positions prompt tokens.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import SteerError


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
            raise SteerError(f"no direction at layer {layer}, position {position}: have layers 0..{n_layers - 1}, positions -{n_pos}..-1")
        v = self.directions[layer, position]
        return (v / v.norm()).float()

    def save(self, path: Path) -> None:
        """Write PATH (.safetensors) and its JSON sidecar PATH.json, each atomically."""
        path = Path(path)
        tensors = {"directions": self.directions, "target_mean": self.target_mean, "baseline_mean": self.baseline_mean}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.detach().clone() for k, v in tensors.items()}, str(tmp), metadata={"format": "steer-directions"})
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
    return path.with_suffix(".json")
