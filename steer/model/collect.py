"""Collect: batched forward passes with hooks on the residual stream.

Activations are read at the input of every decoder layer (the residual stream before layer
l, `hidden_states[l]` of `output_hidden_states`) at the last `n_positions` tokens of each
prompt. With left padding these are the post-instruction template tokens of every row.
Means are accumulated as float64 sums, so memory does not grow with the number of prompts.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext

import torch
from tqdm.auto import tqdm

from steer.errors import SteerError
from steer.model.adapters import resolve

# A common prefix shorter than this is run with the rest (a second forward call costs more than it saves).
MIN_SHARED = 4


def encode_batches(
    tokenizer, texts: list[str], batch_size: int, share_prefix: bool = False, groups: list[str] | None = None
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Yield (original indices, left-padded batch) in order of token length (less padding); with
    share_prefix, each batch's common prefix is split off (left_pad): for forward(), not generate.
    groups: a label per text (e.g. the MMLU subject, whose few-shot examples every prompt repeats); a batch
    then never mixes labels, so texts that share a long prefix run it once."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    label = groups if groups is not None else [""] * len(texts)
    if len(label) != len(texts):
        raise ValueError(f"{len(label)} group labels for {len(texts)} texts")
    order = sorted(range(len(texts)), key=lambda i: (label[i], len(ids[i]), i))
    for _, members in itertools.groupby(order, key=label.__getitem__):
        members = list(members)
        for start in range(0, len(members), batch_size):
            idx = members[start : start + batch_size]
            yield idx, left_pad([ids[i] for i in idx], tokenizer.pad_token_id, share_prefix)


def shared_prefix_length(ids: list[list[int]]) -> int:
    """Tokens every row starts with (chat prompts share the system prompt and the user header),
    leaving each row at least one token of its own; 0 for a single row."""
    if len(ids) < 2:
        return 0
    n, first, p = min(len(row) for row in ids) - 1, ids[0], 0
    while p < n and all(row[p] == first[p] for row in ids):
        p += 1
    return p


def left_pad(ids: list[list[int]], pad_id: int, share_prefix: bool = False) -> dict[str, torch.Tensor]:
    """One batch of token id lists, left-padded (so every row ends at the last column).

    With share_prefix and a common prefix of at least MIN_SHARED tokens, the prefix is run once
    instead of once per row: the batch gets "prefix_ids" [1, p], input_ids / position_ids [B, w]
    hold each row's remaining tokens (left-padded, positions continuing from p), and
    attention_mask [B, p + w] covers prefix and rest. Only forward() takes such a batch. On chat
    prompts with a system prompt the prefix is about half the tokens (26 of ~45 on Qwen2.5)."""
    p = shared_prefix_length(ids) if share_prefix else 0
    p = p if p >= MIN_SHARED else 0
    rows = [row[p:] for row in ids]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0) + p
    if not p:
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids}
    return {
        "prefix_ids": torch.tensor([ids[0][:p]]),
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": torch.cat([torch.ones(len(rows), p, dtype=torch.long), mask], 1),
    }


def input_device(model: torch.nn.Module) -> torch.device:
    """Where input ids go: the embedding's device. An embedding offloaded by accelerate has its
    weight on "meta"; its hooks then take CPU inputs and move them where the weight is loaded."""
    device = model.get_input_embeddings().weight.device
    return torch.device("cpu") if device.type == "meta" else device


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name the model's forward takes a KV cache under (transformers 5.x renamed past_key_values)."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def forward(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    logits_to_keep: int = 1,
    rest_hooks: Callable[[], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """Logits [B, logits_to_keep, vocab] (model dtype, model device) at each row's last positions.

    A batch with "prefix_ids" (left_pad(share_prefix=True)) runs the prefix once, repeats its KV
    cache over the rows and runs the rest against it: the same logits up to float rounding (every
    hook on the model sees the prefix as one row, then the rest), differentiable through both.
    rest_hooks: a context entered for the second call only (hooks that must see just the rows)."""
    device = input_device(model)
    inputs = {k: v.to(device) for k, v in batch.items() if k != "prefix_ids"}
    prefix = prefix_cache(model, batch)  # outside rest_hooks: they must see the rows only
    with rest_hooks() if rest_hooks is not None else nullcontext():
        return model(**inputs, **prefix, logits_to_keep=logits_to_keep, use_cache=False).logits


def prefix_cache(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict:
    """For a left_pad(share_prefix=True) batch: {cache keyword: the prefix's KV cache repeated over the rows},
    ready to pass to the model with the rest of the batch; {} for a batch without a shared prefix."""
    if "prefix_ids" not in batch:
        return {}
    out = model(input_ids=batch["prefix_ids"].to(input_device(model)), logits_to_keep=1, use_cache=True)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cache.batch_repeat_interleave(batch["input_ids"].shape[0])
    return {cache_kwarg(model): cache}


def last_logits(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    rest_hooks: Callable[[], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """Float32 logits [batch, vocab] at the last position (the model's first answer token)."""
    return forward(model, batch, 1, rest_hooks)[:, -1].float().cpu()


@torch.inference_mode()
def batched_last_logits(
    model, tokenizer, texts: list[str], batch_size: int = 16, desc: str | None = None, groups: list[str] | None = None
) -> torch.Tensor:
    """Last-position logits [len(texts), vocab] for chat-formatted texts, in input order; groups as in
    encode_batches (batches that share a long prefix, e.g. few-shot examples, run it once)."""
    out: list[torch.Tensor | None] = [None] * len(texts)
    with tqdm(total=len(texts), desc=desc, disable=desc is None, leave=False) as bar:
        for idx, batch in encode_batches(tokenizer, texts, batch_size, share_prefix=True, groups=groups):
            for i, row in zip(idx, last_logits(model, batch)):
                out[i] = row
            bar.update(len(idx))
    return torch.stack(out)  # type: ignore[arg-type]


def _read_residuals(
    model, tokenizer, texts: list[str], n_positions: int, batch_size: int, desc: str | None, sink
) -> None:
    """Run every batch with pre-hooks on all decoder layers; sink(layer, row_indices, h) gets the
    residual stream h [batch, n_positions, d_model] entering each layer."""
    if not texts:
        raise SteerError("no prompts to collect activations from")
    layers = resolve(model).layers
    rows: list[int] = []

    def hook(i: int):
        def read(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            sink(i, rows, h[:, -n_positions:, :].detach().to("cpu"))

        return read

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with tqdm(total=len(texts), desc=desc, disable=desc is None, leave=False) as bar:
            for idx, batch in encode_batches(tokenizer, texts, batch_size):
                rows[:] = idx
                last_logits(model, batch)
                bar.update(len(idx))
    finally:
        for h in handles:
            h.remove()


def _check_finite(x: torch.Tensor, layer_dim: int) -> None:
    bad = torch.nonzero(~torch.isfinite(x).movedim(layer_dim, 0).flatten(1).all(-1)).flatten().tolist()
    if bad:
        raise SteerError(f"non-finite activations (NaN/inf) at layers {bad}: check the checkpoint's weights and dtype")


@torch.inference_mode()
def residual_means(
    model, tokenizer, texts: list[str], n_positions: int, batch_size: int = 16, desc: str | None = None
) -> torch.Tensor:
    """Mean residual stream [n_layers, n_positions, d_model] (float64) before each decoder layer.

    Position p indexes the last n_positions tokens (p = n_positions - 1 is the last token).
    Sums are accumulated in float64, so memory does not grow with the number of prompts.
    """
    n_layers, d_model = len(resolve(model).layers), model.get_input_embeddings().weight.shape[1]
    sums = torch.zeros(n_layers, n_positions, d_model, dtype=torch.float64)

    def sink(layer, rows, h):
        sums[layer] += h.to(torch.float64).sum(0)

    _read_residuals(model, tokenizer, texts, n_positions, batch_size, desc, sink)
    means = sums / len(texts)
    _check_finite(means, 0)
    return means


@torch.inference_mode()
def residual_stack(
    model, tokenizer, texts: list[str], n_positions: int, batch_size: int = 16, desc: str | None = None
) -> torch.Tensor:
    """Per-prompt residual stream [n_prompts, n_layers, n_positions, d_model] (float32), in input
    order: what principal components of per-prompt differences are computed from."""
    n_layers, d_model = len(resolve(model).layers), model.get_input_embeddings().weight.shape[1]
    out = torch.zeros(len(texts), n_layers, n_positions, d_model, dtype=torch.float32)

    def sink(layer, rows, h):
        out[rows, layer] = h.to(torch.float32)

    _read_residuals(model, tokenizer, texts, n_positions, batch_size, desc, sink)
    _check_finite(out, 1)
    return out
