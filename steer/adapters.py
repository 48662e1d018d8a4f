"""Declarative per-architecture table: where each model family writes into the residual stream.

An edit removes a direction r from everything that is *added* to the residual stream: the
token embedding and, in every decoder layer, the attention and MLP output projections (and
their biases). Most families add the projection output directly. Gemma 2/3 first pass it
through an RMSNorm (`post_attention_layernorm`, `post_feedforward_layernorm`), so the edit
has to act on the projection against the norm-scaled direction instead (see
`steer.edit.writer_directions`). Anything not in the table fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SteerError


@dataclass(frozen=True)
class Writer:
    """A linear map in each decoder layer whose output is added to the residual stream."""

    module: str  # path relative to the decoder layer, e.g. "self_attn.o_proj"
    component: str  # "attn" or "mlp": edit-strength profiles are set per component
    post_norm: str | None = None  # RMSNorm applied to the output before the residual add


@dataclass(frozen=True)
class Adapter:
    layers: str  # ModuleList of decoder layers
    embed: str  # token embedding, weight [vocab, d_model]
    lm_head: str  # unembedding, weight [vocab, d_model]
    writers: tuple[Writer, ...]
    norm_offset: float = 0.0  # RMSNorm scale is (norm_offset + weight); Gemma uses 1 + w

    def tensor_names(self, n_layers: int) -> list[str]:
        """Checkpoint tensor names an edit rewrites (weights, plus biases where present)."""
        names = [f"{self.embed}.weight"]
        for i in range(n_layers):
            names += [f"{self.layers}.{i}.{w.module}.{p}" for w in self.writers for p in ("weight", "bias")]
        return names


_PRE_NORM = Adapter(
    layers="model.layers",
    embed="model.embed_tokens",
    lm_head="lm_head",
    writers=(Writer("self_attn.o_proj", "attn"), Writer("mlp.down_proj", "mlp")),
)
_GEMMA = Adapter(
    layers="model.layers",
    embed="model.embed_tokens",
    lm_head="lm_head",
    writers=(
        Writer("self_attn.o_proj", "attn", post_norm="post_attention_layernorm"),
        Writer("mlp.down_proj", "mlp", post_norm="post_feedforward_layernorm"),
    ),
    norm_offset=1.0,
)

ADAPTERS: dict[str, Adapter] = {
    "Qwen2ForCausalLM": _PRE_NORM,
    "Qwen3ForCausalLM": _PRE_NORM,
    "LlamaForCausalLM": _PRE_NORM,
    "MistralForCausalLM": _PRE_NORM,
    "Phi3ForCausalLM": _PRE_NORM,
    "Gemma2ForCausalLM": _GEMMA,
    "Gemma3ForCausalLM": _GEMMA,
}


def adapter_for(architecture: str) -> Adapter:
    """The adapter for a Hugging Face class name, or a SteerError listing what is supported."""
    try:
        return ADAPTERS[architecture]
    except KeyError:
        supported = ", ".join(sorted(ADAPTERS))
        raise SteerError(f"unsupported architecture {architecture!r}; supported: {supported}") from None


def get_module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise SteerError(f"{type(model).__name__} has no module {path!r} (adapter table out of date?)") from None


@dataclass
class Resolved:
    """An adapter bound to a live model: the actual modules, checked to exist."""

    adapter: Adapter
    layers: list[torch.nn.Module]
    embed: torch.nn.Embedding
    lm_head: torch.nn.Linear
    # per layer, per writer: (linear module, post-norm module or None)
    writers: list[list[tuple[torch.nn.Linear, torch.nn.Module | None]]]


def resolve(model: torch.nn.Module) -> Resolved:
    adapter = adapter_for(type(model).__name__)
    layers = list(get_module(model, adapter.layers))
    writers = [
        [
            (get_module(layer, w.module), get_module(layer, w.post_norm) if w.post_norm else None)
            for w in adapter.writers
        ]
        for layer in layers
    ]
    return Resolved(adapter, layers, get_module(model, adapter.embed), get_module(model, adapter.lm_head), writers)
