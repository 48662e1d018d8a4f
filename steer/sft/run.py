"""`steer sft`: LoRA supervised fine-tuning with peft, the R1 1776 route done in the open.

    from steer.sft import SFTSettings, train_sft
    result = train_sft(None, "runs/qwen-sft", SFTSettings())     # the embedded model on the shipped open set

Writes a merged Hugging Face checkpoint (loads like any other), the LoRA adapter in adapter/, and
steer_manifest.json (data hash, settings, seed, versions, losses, wall time, peak memory).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from steer.checkpoint import manifest
from steer.checkpoint.save import atomic_dir, check_output, save_checkpoint, write_json
from steer.errors import SteerError
from steer.model.load import Loaded, cache_dir, checkpoint_hash, load_model
from steer.report.cost import TokenCount, n_params
from steer.report.memory import peak_rss_gb
from steer.sft.data import (
    IGNORE,
    REFUSAL_KINDS,
    Pair,
    check_heldout,
    data_hash,
    encode,
    keep_share,
    load_pairs,
    split_by_concept,
)
from steer.sft.own import own_answers
from steer.sft.settings import SFTSettings
from steer.sft.train import (
    Progress,
    answer_loss,
    batch,
    epoch_batches,
    load_state,
    mean_loss,
    save_state,
    schedule,
    steps_per_epoch,
    trainable,
)


@dataclass
class SFTResult:
    """A finished run: where it went, its losses and its cost."""

    out: Path
    steps: int
    train_loss: list[float]
    val_loss: list[float]
    train_pairs: int
    val_pairs: int
    answer_tokens: int
    trainable_params: int
    wall_s: float
    peak_rss_gb: float
    data_sha256: str
    cost: dict  # steer.report.cost: tokens through the model, FLOPs here and estimated for 7B / 70B models
    own_answers: dict | None = None  # --general-answers model: general pairs replaced / dropped


def log(msg: str) -> None:
    """Progress lines on stderr (stdout carries the results)."""
    print(f"[steer sft] {msg}", file=sys.stderr, flush=True)


def train_sft(
    model: str | None, out: Path, settings: SFTSettings | None = None, data: Path | None = None, force: bool = False
) -> SFTResult:
    """Fine-tune MODEL (None: the embedded model) on `data` (None: the shipped open SFT set), save to `out`."""
    settings, out, started = settings or SFTSettings(), Path(out), time.time()
    # 1. fail on a bad output path or bad data before the model loads
    check_output(out, force, (Path(model) if model else None,))
    pairs = load_pairs(data)
    check_heldout(pairs)
    train_pairs, val_pairs = split_by_concept(pairs, settings.val_share, settings.seed)
    _check_kinds(settings, train_pairs)
    loaded = load_model(model)
    log(f"loaded {loaded.source}; {len(train_pairs)} training pairs, {len(val_pairs)} validation pairs")
    own = None
    if settings.general_answers == "model":  # before LoRA wraps the model: the base model's own answers
        own = own_answers(loaded, pairs)
        train_pairs, val_pairs = _same_split(own.pairs, train_pairs, val_pairs)
        pairs = own.pairs
        log(f"general pairs: {own.replaced} answered by the base model, {own.dropped} dropped (unfinished)")
    if settings.refusal_share < 1:  # training pairs only: the validation loss stays comparable across shares
        train_pairs = keep_share(train_pairs, REFUSAL_KINDS, settings.refusal_share, settings.seed)
        used = {p.id for p in train_pairs + val_pairs}
        pairs = [p for p in pairs if p.id in used]
        log(f"--refusal-share {settings.refusal_share}: {len(train_pairs)} training pairs kept")
    # 2. tokenise: the chat template, loss on the answer tokens only
    train_rows = _encode(loaded, train_pairs, settings, training=True)
    val_rows = _encode(loaded, val_pairs, settings)
    # 3. LoRA adapters (peft), then the seeded, resumable loop
    params = n_params(loaded.model)
    peft_model = _lora(loaded.model, settings)
    work = cache_dir() / "sft" / _run_key(loaded, pairs, settings)
    work.mkdir(parents=True, exist_ok=True)
    progress = _fit(peft_model, train_rows, val_rows, loaded.tokenizer.pad_token_id, settings, work)
    # 4. adapter + merged checkpoint + manifest, appearing together
    result = SFTResult(
        out=out,
        steps=progress.step,
        train_loss=progress.train_loss,
        val_loss=progress.val_loss,
        train_pairs=len(train_pairs),
        val_pairs=len(val_pairs),
        answer_tokens=sum(sum(x != IGNORE for x in r.labels) for r in train_rows),
        trainable_params=sum(p.numel() for p in trainable(peft_model).values()),
        wall_s=0.0,
        peak_rss_gb=0.0,
        data_sha256=data_hash(pairs),
        own_answers=None if own is None else {"replaced": own.replaced, "dropped": own.dropped},
        cost=_cost(train_rows, val_rows, settings).summary(params),
    )
    with atomic_dir(out, force) as tmp:
        peft_model.save_pretrained(tmp / "adapter")
        merged = peft_model.merge_and_unload()
        merged.eval()
        save_checkpoint(merged, loaded.tokenizer, tmp)
        result.wall_s = round(time.time() - started, 1)
        result.peak_rss_gb = peak_rss_gb()
        _manifest(tmp, loaded, settings, data, result)
    log(f"saved {out} ({result.steps} steps, validation loss by epoch {result.val_loss})")
    return result


def _check_kinds(settings: SFTSettings, train: list[Pair]) -> None:
    """A kind named in --ce-first-kinds that no training pair has is a typo (and naming none weighs nothing): fail
    before the model loads."""
    kinds = settings.first_kinds()
    if kinds == set():
        raise SteerError("--ce-first-kinds: no kind named (all, or a comma-separated list of kinds)")
    missing = (kinds or set()) - {p.kind for p in train}
    if missing:
        raise SteerError(f"--ce-first-kinds: no training pair of kind {', '.join(sorted(missing))}")


def _same_split(pairs: list[Pair], train: list[Pair], val: list[Pair]) -> tuple[list[Pair], list[Pair]]:
    """pairs (answers replaced, some dropped) divided as the original split divided them, by id."""
    held = {p.id for p in val}
    return [p for p in pairs if p.id not in held], [p for p in pairs if p.id in held]


def _encode(loaded: Loaded, pairs: list[Pair], settings: SFTSettings, training: bool = False) -> list:
    rows = [encode(loaded.tokenizer, p, settings.max_length) for p in pairs]
    if training:  # training rows only: the validation loss stays the plain cross-entropy
        kinds = settings.first_kinds()
        w = lambda p: settings.ce_first_weight if kinds is None or p.kind in kinds else 1.0  # noqa: E731
        distill = lambda p: settings.general_loss == "kl" and p.kind == "general"  # noqa: E731
        rows = [replace(r, distill=distill(p), ce_first=w(p)) for r, p in zip(rows, pairs, strict=True)]
    kept = [r for r in rows if any(x != IGNORE for x in r.labels[1:])]
    if len(kept) < len(rows):
        log(f"skipped {len(rows) - len(kept)} pairs whose prompt fills --max-length {settings.max_length}")
    if pairs and not kept:
        raise SteerError(f"every SFT pair's prompt is longer than --max-length {settings.max_length}")
    return kept


def _lora(model, settings: SFTSettings):
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in settings.modules() if m not in names]
    if missing:
        raise SteerError(f"--target-modules: the model has no module named {', '.join(missing)}")
    torch.manual_seed(settings.seed)  # LoRA A matrices are drawn at random
    config = LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.modules(), task_type="CAUSAL_LM",
    )  # fmt: skip
    peft_model = get_peft_model(model, config)
    if settings.gradient_checkpointing:
        enable = getattr(peft_model, "activation_checkpointing_enable", None)  # current name; the old one warns
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.config.use_cache = False
    return peft_model


def _fit(model, train_rows, val_rows, pad_id: int, settings: SFTSettings, work: Path) -> Progress:
    """Optimizer steps until settings.epochs passes are done, resuming from work/state.pt when it exists."""
    per_epoch = steps_per_epoch(len(train_rows), settings.batch_size)
    lengths = [len(r.input_ids) for r in train_rows]
    total = per_epoch * settings.epochs
    params = list(trainable(model).values())
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(settings, total))
    progress = load_state(work, model, optimizer, scheduler)
    if progress is None:
        torch.manual_seed(settings.seed)
        progress = Progress()
    elif progress.step:
        log(f"resuming at step {progress.step} of {total} from {work}")
    model.train()
    bar = tqdm(total=total, initial=progress.step, desc="sft", unit="step", file=sys.stderr)
    start = progress.step
    while progress.step < total:
        epoch, k = divmod(progress.step, per_epoch)
        if k == 0 or progress.step == start:  # one epoch's batches, drawn once (also on resume mid-epoch)
            batches = epoch_batches(lengths, settings.batch_size, settings.seed, epoch)
        rows = [train_rows[i] for i in batches[k]]
        loss = answer_loss(model, batch(rows, pad_id), settings.bf16, settings.kl_first_weight)
        if not torch.isfinite(loss):
            raise SteerError(f"training loss is {float(loss)} at step {progress.step}: lower --lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        progress.running.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{progress.running[-1]:.3f}", epoch=epoch + 1)
        if progress.step % per_epoch == 0:
            progress.train_loss.append(sum(progress.running) / len(progress.running))
            progress.running = []
            val = mean_loss(model, val_rows, pad_id, settings.batch_size) if val_rows else float("nan")
            progress.val_loss.append(round(val, 5))
            log(f"epoch {epoch + 1}: training loss {progress.train_loss[-1]:.4f}, validation loss {val:.4f}")
        if progress.step % settings.save_every == 0 or progress.step % per_epoch == 0:
            save_state(work, model, optimizer, scheduler, progress)
    bar.close()
    return progress


def _cost(train_rows, val_rows, settings: SFTSettings) -> TokenCount:
    """Tokens of the whole run, from the data (a resumed run costs what an uninterrupted one does): every epoch
    trains on every training row (recomputed under gradient checkpointing) and scores every validation row; a row
    trained towards the base's distribution costs one more forward pass."""
    train = settings.epochs * sum(len(r.input_ids) for r in train_rows)
    # the validation rows, and the base model's pass over the rows trained towards its distribution
    forward = settings.epochs * sum(len(r.input_ids) for r in val_rows + [r for r in train_rows if r.distill])
    return TokenCount(forward=forward, train=train, recompute=train if settings.gradient_checkpointing else 0)


def _run_key(loaded: Loaded, pairs: list[Pair], settings: SFTSettings) -> str:
    """The resumable state's folder name: the model, the data and every setting."""
    model_id = checkpoint_hash(loaded.path) if loaded.path else loaded.source
    text = json.dumps([model_id, data_hash(pairs), asdict(settings)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _manifest(folder: Path, loaded: Loaded, settings: SFTSettings, data: Path | None, result: SFTResult) -> None:
    summary = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
    write_json(folder / "sft.json", summary)
    manifest.write(
        folder,
        kind="sft",
        settings=asdict(settings),
        data={"source": str(data) if data else "shipped", "sha256": result.data_sha256},
        training=summary,
        input={"model": loaded.source, "sha256": checkpoint_hash(loaded.path) if loaded.path else None},
        output_sha256=checkpoint_hash(folder),
    )
