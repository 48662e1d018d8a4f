"""The LoRA training loop: seeded, resumable bit for bit from its last saved step, with validation loss per epoch.

State saved every `save_every` steps and at each epoch's end (one file, written then renamed): the LoRA weights,
the optimizer and schedule, torch's RNG and the losses so far. The data order of epoch e is a seeded permutation
(seed, e), so a resumed run sees the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from steer.sft.data import IGNORE, Encoded
from steer.sft.settings import SFTSettings

STATE = "state.pt"


@dataclass
class Progress:
    """What the loop has done: optimizer steps, mean training loss per epoch, validation loss per epoch."""

    step: int = 0
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)  # this epoch's step losses


def batch(rows: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels [B, T] (padding labelled IGNORE)."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
        mask[i, : len(r.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded permutation of n training rows for one epoch."""
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def schedule(settings: SFTSettings, total: int):
    """LambdaLR factor: linear warm-up over warmup * total steps, then linear decay to 0."""
    warm = max(1, round(settings.warmup * total))
    return lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))


def trainable(model) -> dict[str, torch.Tensor]:
    """The parameters that train (the LoRA matrices), by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_state(work: Path, model, optimizer, scheduler, progress: Progress) -> None:
    """Everything a resumed run needs, written to a temporary file and renamed (a kill leaves the last state)."""
    state = {
        "lora": {n: p.detach().clone() for n, p in trainable(model).items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "progress": progress.__dict__,
    }
    tmp = work / f"{STATE}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, work / STATE)


def load_state(work: Path, model, optimizer, scheduler) -> Progress | None:
    """Restore a saved state into model/optimizer/scheduler and torch's RNG; None when there is none."""
    if not (work / STATE).is_file():
        return None
    state = torch.load(work / STATE, weights_only=False)
    params = trainable(model)
    with torch.no_grad():
        for name, value in state["lora"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return Progress(**state["progress"])


@torch.no_grad()
def mean_loss(model, rows: list[Encoded], pad_id: int, batch_size: int) -> float:
    """Token-weighted mean loss over rows (eval mode: no dropout)."""
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    for i in range(0, len(rows), batch_size):
        b = batch(rows[i : i + batch_size], pad_id)
        n = int((b["labels"][:, 1:] != IGNORE).sum())
        total += float(model(**b).loss) * n
        count += n
    model.train(was_training)
    return total / max(1, count)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one pass over n rows."""
    return math.ceil(n / batch_size)
