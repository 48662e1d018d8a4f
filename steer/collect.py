"""Collect: batched forward passes with hooks on the residual stream.

Activations are read at the input of every decoder layer (the residual stream before layer
l, `hidden_states[l]` of `output_hidden_states`) at the last `n_positions` tokens of each
prompt. With left padding these are the post-instruction template tokens of every row.
Means are accumulated as float64 sums, so memory does not grow with the number of prompts.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from .adapters import resolve
from .errors import SteerError


def encode_batches(tokenizer, texts: list[str], batch_size: int) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Yield (original indices, left-padded batch) in order of token length (less padding)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: (len(ids[i]), i))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, left_pad([ids[i] for i in idx], tokenizer.pad_token_id)


def left_pad(ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of token id lists, left-padded (so every row ends at the last column)."""
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids}


def input_device(model: torch.nn.Module) -> torch.device:
    """Where input ids go: the embedding's device. An embedding offloaded by accelerate has its
    weight on "meta"; its hooks then take CPU inputs and move them where the weight is loaded."""
    device = model.get_input_embeddings().weight.device
    return torch.device("cpu") if device.type == "meta" else device


def last_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float32 logits [batch, vocab] at the last position (the model's first answer token)."""
    device = input_device(model)
    out = model(**{k: v.to(device) for k, v in batch.items()}, logits_to_keep=1, use_cache=False)
    return out.logits[:, -1].float().cpu()


@torch.inference_mode()
def batched_last_logits(model, tokenizer, texts: list[str], batch_size: int = 16, desc: str | None = None) -> torch.Tensor:
    """Last-position logits [len(texts), vocab] for chat-formatted texts, in input order."""
    out: list[torch.Tensor | None] = [None] * len(texts)
    with tqdm(total=len(texts), desc=desc, disable=desc is None, leave=False) as bar:
        for idx, batch in encode_batches(tokenizer, texts, batch_size):
            for i, row in zip(idx, last_logits(model, batch)):
                out[i] = row
            bar.update(len(idx))
    return torch.stack(out)  # type: ignore[arg-type]


def _read_residuals(model, tokenizer, texts: list[str], n_positions: int, batch_size: int, desc: str | None, sink) -> None:
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
def residual_means(model, tokenizer, texts: list[str], n_positions: int, batch_size: int = 16, desc: str | None = None) -> torch.Tensor:
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
def residual_stack(model, tokenizer, texts: list[str], n_positions: int, batch_size: int = 16, desc: str | None = None) -> torch.Tensor:
    """Per-prompt residual stream [n_prompts, n_layers, n_positions, d_model] (float32), in input
    order: what principal components of per-prompt differences are computed from."""
    n_layers, d_model = len(resolve(model).layers), model.get_input_embeddings().weight.shape[1]
    out = torch.zeros(len(texts), n_layers, n_positions, d_model, dtype=torch.float32)

    def sink(layer, rows, h):
        out[rows, layer] = h.to(torch.float32)

    _read_residuals(model, tokenizer, texts, n_positions, batch_size, desc, sink)
    _check_finite(out, 1)
    return out
