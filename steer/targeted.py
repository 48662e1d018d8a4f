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

from dataclasses import dataclass

import torch

from .collect import residual_means, residual_stack
from .directions import principal_directions, remove_span
from .search import SearchInputs


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


@dataclass
class Contrasts:
    censorship: torch.Tensor
    versus_harmless: torch.Tensor
    harmful: torch.Tensor
    harmless_mean: torch.Tensor
    components: torch.Tensor  # [L, P, K, d]

    def cosines(self, position: int = -1) -> dict[str, list[float]]:
        """Per-layer cosine similarities at one position (for the plot and the report)."""
        at = lambda t: t[:, position]  # noqa: E731
        return {
            "censorship vs harmful": _cos(at(self.censorship), at(self.harmful)).tolist(),
            "censorship vs (sensitive - harmless)": _cos(at(self.censorship), at(self.versus_harmless)).tolist(),
            "(sensitive - harmless) vs harmful": _cos(at(self.versus_harmless), at(self.harmful)).tolist(),
        }

    def search_inputs(self, keep_safety: bool = True) -> SearchInputs:
        """Directions for steer.search: projected (off the harmless mean) and plain variants;
        with keep_safety every edit direction is made orthogonal to the harmful direction."""
        return SearchInputs(
            directions={"projected": remove_span(self.censorship, self.harmless_mean), "plain": self.censorship.double()},
            components=self.components,
            keep=self.harmful.double().unsqueeze(-2) if keep_safety else None,
        )


@torch.inference_mode()
def compute_contrasts(model, tokenizer, texts: dict[str, list[str]], n_positions: int, k: int = 3, batch_size: int = 16) -> Contrasts:
    """texts: chat-formatted prompts for "sensitive", "controls", "harmful" and "harmless"."""
    means = {name: residual_means(model, tokenizer, texts[name], n_positions, batch_size, desc=name)
             for name in ("controls", "harmful", "harmless")}
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
    return Contrasts(sensitive - means["controls"], sensitive - means["harmless"], means["harmful"] - means["harmless"],
                     means["harmless"], components)
