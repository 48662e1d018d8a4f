"""The kl suite: KL(base || model) on harmless prompts, first-token and along the base's own continuation.

The base side is a `Reference`: the base model's greedy continuations and a function giving its logits. `live`
computes those logits from a loaded base model (`steer abliterate`'s before/after, where the edit is a preview on
the same weights); `spilled` computes them once, writes them to a temporary folder and lets the base model go, so
`steer compare` and `steer eval --reference` never hold two models (peak W + activations instead of 2W).
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from steer.errors import SteerError
from steer.eval.benchmarks import sample
from steer.eval.engine import GenSpec, generate_cached
from steer.eval.stats import mean
from steer.model.collect import input_device
from steer.prompts import Prompt, chat_texts, load_prompts

KL_TOKENS = 32  # tokens of the base model's greedy continuation used for multi-token KL
KL_ROWS = 8  # rows per KL forward: 2 x [8, 33, 152k] float32 logits = 0.3 GB, not 1.3 GB at batch 32

Logits = Callable[[dict, int], torch.Tensor]  # (left-padded batch, keep) -> logits of the last keep positions


@dataclass
class Part:
    """KL_ROWS rows of one batch: the sequences' indices, the left-padded inputs, the positions kept."""

    idx: list[int]
    batch: dict[str, torch.Tensor]
    keep: int
    n_cont: list[int]


def parts(pad_id: int, seqs: list[list[int]], n_prompt: list[int], batch_size: int, desc: str | None) -> Iterator[Part]:
    """The forward passes of token_kl, in order: batches of similar length, split into KL_ROWS-row parts."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=desc is None, leave=False):
        idx = order[start : start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, width - len(seqs[i]) :], mask[r, width - len(seqs[i]) :] = torch.tensor(seqs[i]), 1
        batch = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        n_cont = [len(seqs[i]) - n_prompt[i] for i in idx]
        keep = max(n_cont) + 1  # the last prompt position predicts the first answer token
        for r in range(0, len(idx), KL_ROWS):
            part = {k: v[r : r + KL_ROWS] for k, v in batch.items()}
            yield Part(idx[r : r + KL_ROWS], part, keep, n_cont[r : r + KL_ROWS])


@torch.inference_mode()
def token_kl(
    base_fn: Logits,
    new_fn: Logits,
    pad_id: int,
    seqs: list[list[int]],
    n_prompt: list[int],
    batch_size: int = 16,
    desc: str | None = None,
) -> list[list[float]]:
    """Per-token KL(base || new) along teacher-forced sequences.

    seqs[i] = prompt ids + the base model's greedy continuation; n_prompt[i] = prompt length.
    base_fn/new_fn map (left-padded batch {input_ids, attention_mask, position_ids}, keep) to the
    logits of the last `keep` positions [B, keep, vocab]: only positions that predict answer
    tokens are computed, so memory grows with the continuation, not the prompt. Returns, per
    sequence, the KL at each predicted continuation token: entry 0 is the first answer token
    (first-token KL), entry j the (j+1)-th.
    """
    out: list[list[float]] = [[] for _ in seqs]
    for p in parts(pad_id, seqs, n_prompt, batch_size, desc):
        base, new = base_fn(p.batch, p.keep), new_fn(p.batch, p.keep)
        if base.shape != new.shape:
            raise SteerError(f"kl: the models' logits differ in shape ({tuple(base.shape)} vs {tuple(new.shape)})")
        for r, i in enumerate(p.idx):  # row by row: [keep, vocab] in float64 stays small
            lp, lq = torch.log_softmax(base[r].double(), -1), torch.log_softmax(new[r].double(), -1)
            kl = (lp.exp() * (lp - lq)).sum(-1)  # [keep]; the last position predicts past the answer
            first, n = p.keep - 1 - p.n_cont[r], p.n_cont[r]
            out[i] = kl[first : p.keep - 1].tolist() if n > 0 else kl[first : first + 1].tolist()
    return out


def logits_fn(model: torch.nn.Module) -> Logits:
    """(batch, keep) -> float32 logits of the last `keep` positions [B, keep, vocab] (on CPU)."""
    device = input_device(model)
    return lambda b, keep: (
        model(**{k: v.to(device) for k, v in b.items()}, logits_to_keep=keep, use_cache=False).logits.float().cpu()
    )


@dataclass
class Reference:
    """The base side of the kl suite: the prompts, the base's greedy continuations (dicts with "ids", "text"), the
    teacher-forced sequences and the base's logits function; `folder` holds spilled logits while this lives."""

    prompts: list[Prompt]
    cont: list[dict]
    seqs: list[list[int]]
    n_prompt: list[int]
    pad_id: int
    logits: Logits
    folder: tempfile.TemporaryDirectory | None = field(default=None, repr=False)


def live(ctx) -> Reference:
    """The base side from a loaded base model (ctx: its steer.eval.suites.Ctx): continuations from the per-item
    cache or generated, logits computed when asked."""
    prompts = sample(load_prompts("harmless", ctx.config.split), ctx.config.limit("kl"), ctx.config.seed)
    texts = chat_texts(ctx.tokenizer, [p.text for p in prompts])
    spec = GenSpec(KL_TOKENS)
    cont = generate_cached(
        ctx.model, ctx.tokenizer, texts, spec, ctx.cache, ctx.model_id, ctx.config.batch_size, "kl: base"
    )
    prompt_ids = ctx.tokenizer(texts, add_special_tokens=False)["input_ids"]
    seqs = [p + c["ids"] for p, c in zip(prompt_ids, cont)]
    return Reference(
        prompts, cont, seqs, [len(p) for p in prompt_ids], ctx.tokenizer.pad_token_id, logits_fn(ctx.model)
    )


def _key(batch: dict[str, torch.Tensor], keep: int) -> str:
    return hashlib.sha256(batch["input_ids"].numpy().tobytes() + str(keep).encode()).hexdigest()[:32]


@torch.inference_mode()
def spilled(ctx) -> Reference:
    """live(ctx) with every logits tensor token_kl will ask for computed now and written to a temporary folder
    (about KL prompts x (KL_TOKENS + 1) x vocab x 4 bytes: 3 GB for 150 prompts of a Qwen model); the returned
    Reference reads them back, so the base model can be freed before the other one loads."""
    ref = live(ctx)
    folder = tempfile.TemporaryDirectory(prefix="steer-kl-")
    shapes: dict[str, tuple[int, ...]] = {}
    for p in parts(ref.pad_id, ref.seqs, ref.n_prompt, ctx.config.batch_size, "kl: base logits"):
        t = ref.logits(p.batch, p.keep).contiguous()
        key = _key(p.batch, p.keep)
        t.numpy().tofile(Path(folder.name) / key)
        shapes[key] = tuple(t.shape)

    def stored(batch: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
        key = _key(batch, keep)
        if key not in shapes:
            raise SteerError(
                "kl: the model's tokenizer gives other sequences than the base's; compare models that share one"
            )
        size = math.prod(shapes[key])
        return torch.from_file(str(Path(folder.name) / key), size=size, dtype=torch.float32).reshape(shapes[key])

    return Reference(ref.prompts, ref.cont, ref.seqs, ref.n_prompt, ref.pad_id, stored, folder)


def suite_kl(ctx, new_fn: Logits | None = None) -> dict:
    """First-token and multi-token KL(base || model) on harmless prompts of the configured split.

    ctx.reference is the base side (live or spilled). Multi-token KL is teacher-forced on the base model's own
    greedy continuation (KL_TOKENS tokens, cached) and averaged over its tokens per prompt. First-token KL is also
    reported over the prompts whose base continuation the judge does not label a denial.
    """
    ref: Reference | None = ctx.reference
    if ref is None:
        raise SteerError(
            "suite kl needs a reference model: `steer eval MODEL --reference BASE`, or use `steer compare`"
        )
    per_token = token_kl(
        ref.logits, new_fn or logits_fn(ctx.model), ref.pad_id, ref.seqs, ref.n_prompt, ctx.config.batch_size, "kl"
    )
    labels = ctx.judge.classify([p.text for p in ref.prompts], [c["text"] for c in ref.cont])
    items = [_kl_item(p, c, k, lab) for p, c, k, lab in zip(ref.prompts, ref.cont, per_token, labels)]
    s = ctx.config.seed
    answered = [i["kl_first"] for i in items if i["base_label"] != "denial"]
    # the few harmless prompts the base model refuses weigh heavily: an edit that answers one moves
    # its first token from "I'm sorry" to an answer (KL ~1); the split shows that apart from damage
    return {
        "metrics": {
            "kl/first_token": mean([i["kl_first"] for i in items], s),
            "kl/first_token_base_answered": mean(answered, s),
            "kl/multi_token": mean([i["kl_mean"] for i in items], s),
        },
        "items": items,
        "paired": [],
    }


def _kl_item(p: Prompt, c: dict, k: list[float], label: str) -> dict:
    """One harmless prompt's KL record: the base continuation, its label, first-token and mean KL."""
    return {
        "id": p.id,
        "prompt": p.text,
        "base_continuation": c["text"],
        "base_label": label,
        "kl_first": k[0],
        "kl_mean": sum(k) / len(k),
        "kl_tokens": [round(x, 6) for x in k],
    }
