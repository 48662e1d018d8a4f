"""What a route costs: tokens counted on the model while the edit (or fine-tune) is made, and FLOPs estimated from
them at any model size, so a 0.5B run on a laptop says what the same route costs on a 7B or 70B model.

FLOPs per token (Kaplan et al.'s 2N rule, N = parameters; attention's quadratic term ignored, small for chat-length
sequences): a forward pass 2N; a pass with gradients adds a backward of 2N for the activation gradients (the
frozen weights need no weight gradients; LoRA's and a direction's are negligible) and, under gradient
checkpointing, a recomputed forward of 2N. Token counts do not depend on model size (same prompts, same steps), so
the estimate at size N' is the same counts times N'.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

SIZES = {"7B": 7e9, "70B": 70e9}


@dataclass
class TokenCount:
    """Tokens through the model: forward (no gradients), train (with gradients, a backward follows) and recompute
    (forwards repeated by gradient checkpointing)."""

    forward: int = 0
    train: int = 0
    recompute: int = 0

    def flops(self, n_params: float) -> float:
        """Estimated floating-point operations of these tokens on a model of n_params parameters."""
        return 2 * n_params * (self.forward + self.train + self.recompute) + 2 * n_params * self.train

    def summary(self, n_params: int) -> dict:
        """Counts, this model's FLOPs and the estimate at each of SIZES."""
        return {
            "tokens": asdict(self),
            "params": n_params,
            "flops": self.flops(n_params),
            **{f"flops_{name}": self.flops(n) for name, n in SIZES.items()},
        }


@contextmanager
def count_tokens(model: torch.nn.Module, count: TokenCount | None = None) -> Iterator[TokenCount]:
    """Count the tokens of every forward call of `model` inside the block: non-padding positions (attention_mask)
    or all input positions; a KV-cached decoding step counts its new tokens only. A call whose logits carry a
    gradient (weights that train, or an edit's direction optimized through the model) counts as training."""
    count = count or TokenCount()
    pending: list[int] = []

    def before(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask")
        n = 0 if ids is None else int(ids.shape[0] * ids.shape[1])
        if ids is not None and mask is not None and mask.shape[-1] == ids.shape[1]:
            n = int(mask.sum())
        pending.append(n)

    def after(module, args, kwargs, output):
        n = pending.pop()
        logits = getattr(output, "logits", output)
        if isinstance(logits, torch.Tensor) and logits.requires_grad:  # a backward can follow: a training pass
            count.train += n
            if _checkpointing(module) and module.training:
                count.recompute += n
        else:
            count.forward += n

    handles = [
        model.register_forward_pre_hook(before, with_kwargs=True),
        model.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        yield count
    finally:
        for h in handles:
            h.remove()


def n_params(model: torch.nn.Module) -> int:
    """All parameters (frozen and trainable)."""
    return sum(p.numel() for p in model.parameters())


def _checkpointing(module) -> bool:
    """Whether the model recomputes activations in its backward (transformers' new name first: the old one warns)."""
    if hasattr(module, "is_activation_checkpointing"):
        return bool(module.is_activation_checkpointing)
    return bool(getattr(module, "is_gradient_checkpointing", False))
