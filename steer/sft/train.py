"""The LoRA training loop: seeded, resumable bit for bit from its last saved step, with validation loss per epoch.

State saved every `save_every` steps and at each epoch's end (one file, written then renamed): the LoRA weights,
the optimizer and schedule, torch's RNG and the losses so far. The batches of epoch e are seeded by
(seed, e), so a resumed run sees the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

from steer.sft.data import IGNORE, Encoded
from steer.sft.settings import SFTSettings

STATE = "state.pt"
HEAD_ROWS = 1024  # answer tokens per output-head chunk (head_loss)


@dataclass
class Progress:
    """What the loop has done: optimizer steps, mean training loss per epoch, validation loss per epoch."""

    step: int = 0
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)  # this epoch's step losses


def batch(rows: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels [B, T] (padding labelled IGNORE); distill [B] (bool) and
    ce_first [B] (float32) when a row sets them."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
        mask[i, : len(r.input_ids)] = 1
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if any(r.distill for r in rows):
        out["distill"] = torch.tensor([r.distill for r in rows])
    if any(r.ce_first != 1.0 for r in rows):
        out["ce_first"] = torch.tensor([r.ce_first for r in rows], dtype=torch.float32)
    return out


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, window: int = 16) -> list[list[int]]:
    """The seeded batches of one epoch (row indices): a seeded shuffle, rows sorted by length within windows of
    `window` batches (less padding: a third of the tokens on the shipped set), then the batches shuffled."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * window
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


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


def answer_loss(model, b: dict[str, torch.Tensor], bf16: bool = False, kl_first: float = 1.0) -> torch.Tensor:
    """Mean loss over the answer tokens of batch b (labels != IGNORE), in float32: next-token cross-entropy, or on
    the rows b["distill"] marks (a peft model only), KL(base || model) of the whole next-token distribution, the
    base being the same model with its adapter off (no gradient); kl_first: the weight of each such row's first
    answer position (the one that starts the answer) in that sum, the others' being 1; b["ce_first"] [B] (when
    present): the same, per row, for the cross-entropy rows. Weighted terms are summed and divided by the
    unweighted count of answer tokens.

    The output head runs on the answer positions only ([N, D] -> [N, V]), not on every position of [B, T]: the
    logits over the vocabulary are the largest tensor of a step. bf16: matmuls under autocast (weights stay
    float32); about twice as fast on CPUs with bf16 instructions and on GPUs.
    """
    device = "cuda" if b["input_ids"].is_cuda else "cpu"
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if getattr(base.config, "final_logit_softcapping", None):  # the head is not a plain linear map
            return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss.float()
        decoder, head = base.get_decoder(), base.get_output_embeddings()
        hidden = decoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"])[0][:, :-1]
        targets = b["labels"][:, 1:]
        keep = targets != IGNORE
        first = (keep & (keep.cumsum(1) == 1)).float()  # [B, T]: 1 at each row's first answer position
        rows_w = b.get("ce_first")
        ce_w = None if rows_w is None else 1.0 + (rows_w[:, None] - 1.0) * first  # [B, T]
        weight = lambda mask: None if ce_w is None else ce_w[mask]  # noqa: E731
        distill = b.get("distill")
        if distill is None or not bool(distill.any()):
            return head_loss(head, hidden[keep], targets[keep], weight(keep))
        rows = distill[:, None].expand_as(keep)
        with torch.no_grad(), model.disable_adapter():
            ref = decoder(input_ids=b["input_ids"][distill], attention_mask=b["attention_mask"][distill])[0][:, :-1]
        ce, kl = keep & ~rows, keep & rows
        total = 0.0
        if bool(ce.any()):
            total = head_loss(head, hidden[ce], targets[ce], weight(ce)) * int(ce.sum())
        total = total + head_kl(head, hidden[kl], ref[keep[distill]], 1.0 + (kl_first - 1.0) * first[kl])
        return total / int(keep.sum())


def head_kl(head: torch.nn.Module, hidden: torch.Tensor, ref: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Sum over rows [N, D] of weight [N] x KL(softmax(head(ref)) || softmax(head(hidden))), HEAD_ROWS rows at a
    time (each chunk recomputed in the backward pass, as in head_loss); ref carries no gradient."""
    grad = torch.is_grad_enabled()
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, hidden.shape[0], HEAD_ROWS):
        args = head, hidden[i : i + HEAD_ROWS], ref[i : i + HEAD_ROWS], weight[i : i + HEAD_ROWS]
        total = total + (checkpoint(_chunk_kl, *args, use_reentrant=False) if grad else _chunk_kl(*args))
    return total


def _chunk_kl(head: torch.nn.Module, hidden: torch.Tensor, ref: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        target = torch.log_softmax(head(ref).float(), -1)
    own = torch.log_softmax(head(hidden).float(), -1)
    kl = torch.nn.functional.kl_div(own, target, log_target=True, reduction="none").sum(-1)
    return (kl * weight).sum()


def head_loss(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of head(hidden) [N, D] -> [N, V] against targets [N] (each row's times weight [N] when
    given, still divided by N), HEAD_ROWS rows at a time.

    Each chunk's logits are recomputed in the backward pass (activation checkpointing) instead of kept: a step then
    holds one chunk's [HEAD_ROWS, V] float32 logits and their gradient, not [N, V] of each (2.4 GB per copy for
    4,000 answer tokens and Qwen's 152k vocabulary), for one extra head matmul per chunk.
    """
    if weight is None:
        weight = hidden.new_ones(hidden.shape[0], dtype=torch.float32)
    if hidden.shape[0] <= HEAD_ROWS:
        return _chunk_loss(head, hidden, targets, weight) / hidden.shape[0]
    grad = torch.is_grad_enabled()
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, hidden.shape[0], HEAD_ROWS):
        args = head, hidden[i : i + HEAD_ROWS], targets[i : i + HEAD_ROWS], weight[i : i + HEAD_ROWS]
        total = total + (checkpoint(_chunk_loss, *args, use_reentrant=False) if grad else _chunk_loss(*args))
    return total / hidden.shape[0]


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor):
    ce = torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="none")
    return (ce * weight).sum()


@torch.no_grad()
def mean_loss(model, rows: list[Encoded], pad_id: int, batch_size: int) -> float:
    """Token-weighted mean loss over rows (eval mode: no dropout; float32)."""
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    for i in range(0, len(rows), batch_size):
        b = batch(rows[i : i + batch_size], pad_id)
        n = int((b["labels"][:, 1:] != IGNORE).sum())
        total += float(answer_loss(model, b)) * n
        count += n
    model.train(was_training)
    return total / max(1, count)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one pass over n rows."""
    return math.ceil(n / batch_size)
