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
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

from steer.errors import SteerError
from steer.locate.directions import principal_directions, remove_span
from steer.model.collect import residual_means, residual_stack
from steer.targeted.search import EditParams, SearchInputs, edit_basis


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


@dataclass
class Contrasts:
    """A targeted run's contrasts ([L, P, d] per layer and post-instruction position; components [L, P, K, d]),
    with steer.targeted.optimize's direction and steer.targeted.readout's vectors where those ran."""

    censorship: torch.Tensor
    versus_harmless: torch.Tensor
    harmful: torch.Tensor
    harmless_mean: torch.Tensor
    components: torch.Tensor  # [L, P, K, d]
    optimized: torch.Tensor | None = None  # [d] steer.targeted.optimize's direction, when it ran
    # steer.targeted.readout's "<layer>.<component>" -> a [d_in], as baked
    readout: dict[str, torch.Tensor] | None = None
    # [m, d] optimized directions of target sets trained on their own (--own-direction): every edit removes them too
    extra: torch.Tensor | None = None

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
        names = ("censorship", "versus_harmless", "harmful", "harmless_mean", "components", "optimized", "extra")
        tensors = {k: getattr(self, k).detach().contiguous() for k in names if getattr(self, k) is not None}
        tensors.update({f"readout.{k}": a.detach().contiguous() for k, a in (self.readout or {}).items()})
        save_file(tensors, str(path), metadata={"format": "steer-contrasts"})
        Path(path).with_suffix(".json").write_text(json.dumps(meta, indent=2, ensure_ascii=False, default=str) + "\n")

    @classmethod
    def load(cls, path: Path) -> Contrasts:
        t = load_file(str(path))
        readout = {k[len("readout.") :]: a for k, a in t.items() if k.startswith("readout.")} or None
        return cls(
            t["censorship"],
            t["versus_harmless"],
            t["harmful"],
            t["harmless_mean"],
            t["components"],
            t.get("optimized"),
            readout,
            t.get("extra"),
        )

    def search_inputs(
        self, keep_safety: bool = True, keep_layers: str = "same", contrasts: str = "all"
    ) -> SearchInputs:
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
        extra = None if self.extra is None else self.extra.double()
        return SearchInputs(directions=dirs, components=self.components, keep=keep, extra=extra)


@torch.inference_mode()
def compute_contrasts(
    model, tokenizer, texts: dict[str, list[str]], n_positions: int, k: int = 3, batch_size: int = 16
) -> Contrasts:
    """texts: chat-formatted prompts for "sensitive", "controls", "harmful" and "harmless"."""
    means = {
        name: residual_means(model, tokenizer, texts[name], n_positions, batch_size, desc=name)
        for name in ("controls", "harmful", "harmless")
    }
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
    return Contrasts(
        sensitive - means["controls"],
        sensitive - means["harmless"],
        means["harmful"] - means["harmless"],
        means["harmless"],
        components,
    )


class RecordedEdit(NamedTuple):
    """recorded_edit's result: the basis [k, d_model] (float64, orthonormal rows) and the parameters."""

    basis: torch.Tensor
    params: EditParams


def recorded_edit(contrasts_file: Path) -> RecordedEdit:
    """The edit recorded beside a contrasts file (its JSON sidecar holds the chosen EditParams
    and keep_safety): the basis [k, d_model] (float64, orthonormal rows) and the parameters.
    Needs no model, so the streaming editor can apply it to a checkpoint on disk."""
    side = Path(contrasts_file).with_suffix(".json")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        params = EditParams.from_dict(meta.get("edit") or meta["chosen"])
        basis = edit_basis(
            Contrasts.load(contrasts_file).search_inputs(
                meta.get("keep_safety", True), meta.get("keep_layers", "same")
            ),
            params,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SteerError(f"cannot rebuild the edit recorded in {contrasts_file} and {side.name}: {exc}") from None
    return RecordedEdit(basis, params)


def recorded_readout(contrasts_file: Path) -> dict[str, torch.Tensor] | None:
    """The learned readout saved in a contrasts file (None when the run trained none); it is
    baked along the recorded edit's first basis row, after the projection (steer.targeted.readout.bake)."""
    return Contrasts.load(contrasts_file).readout


def rebuild(model: torch.nn.Module, contrasts_file: Path) -> EditParams:
    """Apply the edit recorded beside a contrasts file, and its readout if any: the same weights
    `steer abliterate --keep-safety` saved."""
    basis, params = recorded_edit(contrasts_file)
    params.edit(basis, recorded_readout(contrasts_file)).apply(model)
    return params
