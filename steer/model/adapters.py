"""Declarative per-architecture table: where each model family writes into the residual stream.

An edit removes a direction r from everything that is *added* to the residual stream: the
token embedding and, in every decoder layer, the attention and MLP output projections (and
their biases). Most families add the projection output directly. Gemma 2/3 first pass it
through an RMSNorm (`post_attention_layernorm`, `post_feedforward_layernorm`), so the edit
has to act on the projection against the norm-scaled direction instead (see
`steer.edit.project.writer_basis`). Mixture-of-experts layers write through every expert's down
projection (and a shared expert's, where there is one): each expert matrix is edited like a
dense one (see `Writer`). Anything not in the table fails loudly.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

import torch

from steer.errors import SteerError


@dataclass(frozen=True)
class Writer:
    """A linear map in each decoder layer whose output is added to the residual stream.

    Plain writers are nn.Linear modules: weight [d_model, d_in], bias [d_model]. A mixture of
    experts holds one matrix per expert: transformers 5 fuses them in memory into one 3-D
    parameter (`fused`: e.g. mlp.experts.down_proj [E, d_model, d_ff]) and converts the
    per-expert checkpoint names at load time (`per_expert`: e.g. mlp.experts.{j}.down_proj.weight
    [d_model, d_ff]); save_pretrained writes the per-expert form back. Checkpoints may hold either.
    """

    module: str  # path relative to the decoder layer, e.g. "self_attn.o_proj" or "mlp.experts"
    component: str  # "attn" or "mlp": edit-strength profiles are set per component
    post_norm: str | None = None  # RMSNorm applied to the output before the residual add
    param: str = "weight"  # the matrix parameter of `module` (fused experts name theirs, "down_proj")
    fused: bool = False  # param is [E, *matrix]: one matrix per expert, each edited on its own
    # Residual-stream axis of each (per-expert) matrix: 0 = [d_model, d_in] (nn.Linear, edited
    # with side "out"), 1 = [d_in, d_model] (x @ W layouts, side "in").
    d_model_axis: int = 0
    per_expert: tuple[str, ...] = ()  # checkpoint module names of the unfused form, {j} = expert
    optional: bool = False  # absent in some layers (dense/sparse mixes: Qwen MoE mlp_only_layers)

    @property
    def side(self) -> str:
        return "out" if self.d_model_axis == 0 else "in"

    def checkpoint_role(self, rest: str) -> str | None:
        """'weight' or 'bias' when `rest`, a checkpoint tensor name relative to its decoder layer
        ("self_attn.o_proj.weight", "mlp.experts.3.down_proj.weight"), belongs to this writer."""
        if self.fused and rest == f"{self.module}.{self.param}":
            return "weight"
        if not self.fused and rest in (f"{self.module}.weight", f"{self.module}.bias"):
            return rest.rsplit(".", 1)[1]
        for pattern in self.per_expert:
            m = _expert_regex(pattern).fullmatch(rest)
            if m:
                return m.group(1)
        return None


@functools.cache
def _expert_regex(pattern: str) -> re.Pattern:
    return re.compile(re.escape(pattern).replace(re.escape("{j}"), r"\d+") + r"\.(weight|bias)")


@dataclass(frozen=True)
class Adapter:
    """Where a model family keeps its decoder layers, embedding, unembedding and residual writers (module paths
    in the Hugging Face model), and its RMSNorm scale offset."""

    layers: str  # ModuleList of decoder layers
    embed: str  # token embedding, weight [vocab, d_model]
    lm_head: str  # unembedding, weight [vocab, d_model]
    writers: tuple[Writer, ...]
    norm_offset: float = 0.0  # RMSNorm scale is (norm_offset + weight); Gemma uses 1 + w

    def writer_of(self, name: str) -> tuple[int, Writer, str] | None:
        """(layer, writer, "weight" or "bias") for a checkpoint tensor name an edit rewrites as a
        writer, else None (the embedding is `f"{embed}.weight"`)."""
        prefix = f"{self.layers}."
        if not name.startswith(prefix):
            return None
        layer, _, rest = name[len(prefix) :].partition(".")
        if not layer.isdigit():
            return None
        for w in self.writers:
            role = w.checkpoint_role(rest)
            if role:
                return int(layer), w, role
        return None


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

# Mixtures of experts (transformers 5 fused layout in memory). The dense MLP and the shared
# expert are optional: Qwen MoE configs may make some layers dense (mlp_only_layers).
_EXPERTS = Writer("mlp.experts", "mlp", param="down_proj", fused=True, per_expert=("mlp.experts.{j}.down_proj",))
_QWEN_MOE = Adapter(
    layers="model.layers",
    embed="model.embed_tokens",
    lm_head="lm_head",
    writers=(
        Writer("self_attn.o_proj", "attn"),
        Writer("mlp.down_proj", "mlp", optional=True),
        Writer("mlp.shared_expert.down_proj", "mlp", optional=True),  # scaled by a sigmoid gate: still linear
        replace(_EXPERTS, optional=True),
    ),
)
_MIXTRAL = Adapter(
    layers="model.layers",
    embed="model.embed_tokens",
    lm_head="lm_head",
    # Mixtral checkpoints name the experts block_sparse_moe.experts.{j}.w2 (w2 = down projection).
    writers=(
        Writer("self_attn.o_proj", "attn"),
        Writer("mlp.experts", "mlp", param="down_proj", fused=True, per_expert=("block_sparse_moe.experts.{j}.w2",)),
    ),
)

ADAPTERS: dict[str, Adapter] = {
    "Qwen2ForCausalLM": _PRE_NORM,
    "Qwen3ForCausalLM": _PRE_NORM,
    "LlamaForCausalLM": _PRE_NORM,
    "MistralForCausalLM": _PRE_NORM,
    "Phi3ForCausalLM": _PRE_NORM,
    "Gemma2ForCausalLM": _GEMMA,
    "Gemma3ForCausalLM": _GEMMA,
    "Qwen2MoeForCausalLM": _QWEN_MOE,
    "Qwen3MoeForCausalLM": _QWEN_MOE,
    "OlmoeForCausalLM": Adapter(
        "model.layers", "model.embed_tokens", "lm_head", (Writer("self_attn.o_proj", "attn"), _EXPERTS)
    ),
    "MixtralForCausalLM": _MIXTRAL,
}


def adapter_for(architecture: str) -> Adapter:
    """The adapter for a Hugging Face class name, or a SteerError listing what is supported."""
    try:
        return ADAPTERS[architecture]
    except KeyError:
        supported = ", ".join(sorted(ADAPTERS))
        raise SteerError(f"unsupported architecture {architecture!r}; supported: {supported}") from None


def get_module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """The submodule at a dotted path, or a SteerError naming it."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise SteerError(f"{type(model).__name__} has no module {path!r} (adapter table out of date?)") from None


@dataclass
class Bound:
    """One writer of one decoder layer, bound to a live model."""

    writer: Writer
    module: torch.nn.Module  # its output is the writer's contribution (hooks attach here)
    norm: torch.nn.Module | None  # post-norm applied before the residual add, if any

    @property
    def weight(self) -> torch.nn.Parameter:
        """[d_model, d_in] (nn.Linear), or fused experts [E, d_model, d_ff] / [E, d_ff, d_model]."""
        return getattr(self.module, self.writer.param)

    @property
    def bias(self) -> torch.nn.Parameter | None:
        return None if self.writer.fused else getattr(self.module, "bias", None)

    def matrices(self) -> list[tuple[torch.Tensor, str]]:
        """(tensor, side) for every matrix to project: the weight, or each expert's slice of a
        fused weight (views, so editing them in place edits the parameter), then the bias."""
        w = self.weight
        mats = [(m, self.writer.side) for m in (w.unbind(0) if self.writer.fused else (w,))]
        return mats + ([(self.bias, "out")] if self.bias is not None else [])


@dataclass
class Resolved:
    """An adapter bound to a live model: the actual modules, checked to exist."""

    adapter: Adapter
    layers: list[torch.nn.Module]
    embed: torch.nn.Embedding
    lm_head: torch.nn.Linear
    writers: list[list[Bound]]  # per layer: the writers it has (optional ones may be missing)


def _bind(layer: torch.nn.Module, w: Writer) -> Bound | None:
    try:
        module = layer.get_submodule(w.module)
    except AttributeError:
        module = None
    if module is None or not isinstance(getattr(module, w.param, None), torch.Tensor):
        if w.optional:
            return None
        raise SteerError(f"{type(layer).__name__} has no parameter {w.module}.{w.param} (adapter table out of date?)")
    return Bound(w, module, get_module(layer, w.post_norm) if w.post_norm else None)


def resolve(model: torch.nn.Module) -> Resolved:
    """The model's adapter bound to its modules: layers, embedding, lm_head and each layer's writers (every
    layer must have a writer of each component)."""
    adapter = adapter_for(type(model).__name__)
    layers = list(get_module(model, adapter.layers))
    writers = [[b for w in adapter.writers if (b := _bind(layer, w)) is not None] for layer in layers]
    components = {w.component for w in adapter.writers}
    for i, bound in enumerate(writers):
        if missing := components - {b.writer.component for b in bound}:
            raise SteerError(
                f"layer {i} of {type(model).__name__} has no {sorted(missing)} writer (adapter table out of date?)"
            )
    return Resolved(adapter, layers, get_module(model, adapter.embed), get_module(model, adapter.lm_head), writers)
