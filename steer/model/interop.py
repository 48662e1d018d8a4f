"""Research interop: the same model, read with nnsight or TransformerLens (the `research` extra).

steer edits in Hugging Face weight space; these helpers wrap a steer-loaded (or edited)
model so its activations can be read with the research tools, and cross-check steer's own
collection against them (tests/test_interop.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from steer.model.adapters import resolve
from steer.model.collect import encode_batches


def nnsight_model(model: torch.nn.Module, tokenizer):
    """An nnsight LanguageModel over the in-memory model (no copy, no reload)."""
    from nnsight import LanguageModel

    return LanguageModel(model, tokenizer=tokenizer)


def nnsight_residual_means(
    model: torch.nn.Module, tokenizer, texts: list[str], n_positions: int, batch_size: int = 16
) -> torch.Tensor:
    """Mean residual stream entering each decoder layer at the last n_positions tokens, read
    with nnsight: the same quantity and layout as steer.model.collect.residual_means."""
    lm = nnsight_model(model, tokenizer)
    layers = lm
    for part in resolve(model).adapter.layers.split("."):
        layers = getattr(layers, part)
    sums = None
    for _, batch in encode_batches(tokenizer, texts, batch_size):
        saved = []
        with lm.trace(batch):
            for layer in layers:
                saved.append(layer.input.save())
        stacked = torch.stack([s[:, -n_positions:, :].double().sum(0) for s in saved])
        sums = stacked if sums is None else sums + stacked
    return sums / len(texts)


def transformer_lens_bridge(model: torch.nn.Module, checkpoint: Path, device: str = "cpu"):
    """A TransformerLens 4 TransformerBridge over the in-memory model; `checkpoint` gives the config.

    Use `bridge.run_with_cache(ids)` and read `blocks.{l}.hook_resid_pre`.
    """
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(checkpoint), hf_model=model, device=device)
