"""Evaluation engine: batched, length-sorted, KV-cached greedy generation with stop strings,
a per-item result cache (so interrupted or repeated runs do not recompute), and progress bars.

Cache keys are sha256(model fingerprint, task, input, settings); the cache is an append-only
JSONL file written after every batch, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from steer.jsonl import jsonl_lines
from steer.model.collect import encode_batches, input_device


def key(*parts) -> str:
    """A cache key: the sha256 hex digest of the parts as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, shapes, bytes): identifies the weights
    actually in memory, so an edited model never reuses its base model's cached answers."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")  # the buffer itself: no bytes copy
    return h.hexdigest()


class ItemCache:
    """Append-only JSONL {key: result}; None path = in memory only."""

    def __init__(self, path: Path | None):
        self.path, self.data = path, {}
        if path and path.exists():
            for line in jsonl_lines(path.read_text(encoding="utf-8")):
                try:
                    row = json.loads(line)
                    self.data[row["key"]] = row["value"]
                except (ValueError, KeyError):
                    continue  # a line cut by an interrupted write: recompute that item

    def __contains__(self, k: str) -> bool:
        return k in self.data

    def __getitem__(self, k: str):
        return self.data[k]

    def put(self, items: dict[str, object]) -> None:
        self.data.update(items)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.writelines(json.dumps({"key": k, "value": v}, ensure_ascii=False) + "\n" for k, v in items.items())


def cached_map(
    cache: ItemCache,
    keys: Sequence[str],
    compute: Callable[[list[int]], list],
    chunk: int,
    desc: str | None = None,
    order: Callable[[int], Any] | None = None,
) -> list:
    """Results for every key: cached ones are read, missing ones computed `chunk` at a time
    (compute gets indices into keys, returns one JSON-able result per index) and stored.
    `order` sorts the missing items first (e.g. by length, so each chunk batches well)."""
    todo = sorted((i for i, k in enumerate(keys) if k not in cache), key=order)
    with tqdm(total=len(keys), initial=len(keys) - len(todo), desc=desc, disable=desc is None, leave=False) as bar:
        for start in range(0, len(todo), chunk):
            idx = todo[start : start + chunk]
            cache.put({keys[i]: r for i, r in zip(idx, compute(idx), strict=True)})
            bar.update(len(idx))
    return [cache[k] for k in keys]


@dataclass(frozen=True)
class GenSpec:
    """How an answer is generated (greedy): the token budget, the stop strings and the repetition penalty."""

    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()  # cut the answer at the first of these (and stop generating)
    # HF's multiplicative penalty on every token already in the sequence (prompt included); 1.0 = plain greedy
    repetition_penalty: float = 1.0

    def cache_key(self) -> dict:
        """Settings that identify an answer; a default penalty is left out so plain-greedy keys stay as they were."""
        d = asdict(self)
        if d["repetition_penalty"] == 1.0:
            del d["repetition_penalty"]
        return d


def truncate(text: str, stop: Sequence[str]) -> str:
    """The text cut before the earliest occurrence of any stop string (whole when none occurs)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


@torch.inference_mode()
def generate_ids(
    model, tokenizer, texts: list[str], spec: GenSpec, batch_size: int = 16, desc: str | None = None
) -> list[dict]:
    """Greedy answers in input order: {"text", "ids"} (ids = generated tokens up to and incl. EOS);
    with spec.repetition_penalty != 1 the greedy choice is made on the penalized logits."""
    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    config = GenerationConfig(
        max_new_tokens=spec.max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(eos),
        stop_strings=list(spec.stop) or None,
        repetition_penalty=spec.repetition_penalty,
    )
    device = input_device(model)
    out: list[dict] = [{}] * len(texts)
    bar = tqdm(total=len(texts), desc=desc, disable=desc is None, leave=False)
    for idx, batch in encode_batches(tokenizer, texts, batch_size):
        extra = {"tokenizer": tokenizer} if spec.stop else {}
        ids = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            generation_config=config,
            **extra,
        )[:, batch["input_ids"].shape[1] :].tolist()
        for i, row in zip(idx, ids):
            end = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
            row = row[:end]
            text = truncate(tokenizer.decode(row, skip_special_tokens=True), spec.stop).strip()
            out[i] = {"text": text, "ids": row}
        bar.update(len(idx))
    bar.close()
    return out


def generate_cached(
    model,
    tokenizer,
    texts: list[str],
    spec: GenSpec,
    cache: ItemCache,
    model_id: str,
    batch_size: int = 16,
    desc: str | None = None,
) -> list[dict]:
    """generate_ids with the per-item cache; batches are formed from the uncached items only."""
    keys = [key("generate", model_id, t, spec.cache_key()) for t in texts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    compute = lambda idx: generate_ids(model, tokenizer, [texts[i] for i in idx], spec, batch_size)  # noqa: E731
    # Chunks of several batches keep length sorting effective while saving progress often.
    return cached_map(cache, keys, compute, chunk=4 * batch_size, desc=desc, order=lengths.__getitem__)
