"""SFT pairs: the shipped open set (steer/data/sft/*.jsonl) or a user's JSONL file, checked and tokenised.

A pair is a user prompt and the answer the model should learn to give. Tokenised, the pair is the chat template
with the assistant's turn filled in; the loss covers the answer tokens only (prompt and template tokens get label
-100), so the model learns to answer, not to predict questions.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from steer.errors import SteerError
from steer.jsonl import read_jsonl

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "sft"
IGNORE = -100  # label of a token the loss skips (torch.nn.CrossEntropyLoss's ignore_index)


@dataclass(frozen=True)
class Pair:
    """One training pair. kind: sensitive / general / refusal / borderline (shipped set) or "?"."""

    id: str
    prompt: str
    answer: str
    lang: str = "?"
    kind: str = "?"
    concept: str = "?"


@dataclass(frozen=True)
class Encoded:
    """A tokenised pair: input_ids and labels [T] (labels = IGNORE on the prompt and template tokens)."""

    id: str
    input_ids: list[int]
    labels: list[int]
    distill: bool = False  # answer positions trained towards the base model's distribution (--general-loss kl)
    ce_first: float = 1.0  # weight of the first answer position in the cross-entropy (--ce-first-weight)


def load_pairs(path: Path | None = None) -> list[Pair]:
    """The shipped set (path None) or a JSONL file whose lines have `prompt` and `answer` (id, lang, kind, concept
    optional). Errors name the file and line."""
    files = sorted(SHIPPED_DIR.glob("*.jsonl")) if path is None else [Path(path)]
    if not files:
        raise SteerError(f"no SFT data in {SHIPPED_DIR}")
    pairs = [p for f in files for p in _read(f)]
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SteerError(f"SFT data: pair id {dup!r} appears twice")
    return pairs


def _read(path: Path) -> list[Pair]:
    pairs = []
    for line, row in read_jsonl(path, "SFT data file"):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("prompt", "answer")):
            raise SteerError(f"SFT data file {path}:{line}: expected a JSON object with text fields prompt and answer")
        if not row["prompt"].strip() or not row["answer"].strip():
            raise SteerError(f"SFT data file {path}:{line}: empty prompt or answer")
        fields = {k: str(row[k]) for k in ("lang", "kind", "concept") if k in row}
        pairs.append(Pair(str(row.get("id", f"{path.stem}-{line}")), row["prompt"], row["answer"], **fields))
    return pairs


def check_heldout(pairs: list[Pair]) -> None:
    """Fail if a pair is about a concept of the shipped validation or test split (training on it would leak)."""
    from steer.prompts import load_prompts

    heldout = {
        p.concept: p.split
        for split in ("val", "test")
        for name in ("sensitive", "controls")
        for p in load_prompts(name, split)
    }
    leak = next((p for p in pairs if p.concept in heldout), None)
    if leak is not None:
        raise SteerError(
            f"SFT pair {leak.id} is about concept {leak.concept!r} of the {heldout[leak.concept]} split; "
            "train on train-split concepts only"
        )


REFUSAL_KINDS = ("refusal", "borderline")


def keep_share(pairs: list[Pair], kinds: tuple[str, ...], share: float, seed: int) -> list[Pair]:
    """pairs with only a seeded `share` of each (kind, lang) group of the given kinds kept (rounded, order kept);
    other pairs untouched."""
    if share >= 1:
        return list(pairs)
    groups: dict[tuple[str, str], list[str]] = {}
    for p in pairs:
        if p.kind in kinds:
            groups.setdefault((p.kind, p.lang), []).append(p.id)
    rng = random.Random(seed)
    kept = {i for key in sorted(groups) for i in rng.sample(sorted(groups[key]), round(share * len(groups[key])))}
    return [p for p in pairs if p.kind not in kinds or p.id in kept]


def split_by_concept(pairs: list[Pair], share: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, validation): a seeded `share` of the concepts (every pair of a held-out concept) for validation
    loss; pairs without a concept count as their own concept."""
    concepts = sorted({p.concept if p.concept != "?" else p.id for p in pairs})
    held = set(random.Random(seed).sample(concepts, round(share * len(concepts))))
    val = [p for p in pairs if (p.concept if p.concept != "?" else p.id) in held]
    return [p for p in pairs if p not in val], val


def encode(tokenizer, pair: Pair, max_length: int) -> Encoded:
    """The pair in the chat template, cut to max_length tokens; labels copy the answer tokens (and the template's
    end-of-turn token) and are IGNORE elsewhere."""
    user = [{"role": "user", "content": pair.prompt}]
    prefix = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": pair.answer}], tokenize=False)
    if not full.startswith(prefix):
        raise SteerError(f"the chat template does not extend the prompt with the answer (pair {pair.id})")
    head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    tail = tokenizer(full[len(prefix) :], add_special_tokens=False)["input_ids"]
    ids = (head + tail)[:max_length]
    labels = ([IGNORE] * len(head) + tail)[:max_length]
    return Encoded(pair.id, ids, labels)


def data_hash(pairs: list[Pair]) -> str:
    """sha256 over the pairs' ids, prompts and answers in order (recorded in the manifest)."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(f"{p.id}\x00{p.prompt}\x00{p.answer}\x01".encode())
    return h.hexdigest()
