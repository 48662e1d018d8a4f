"""Prompt sets: the shipped JSONL sets and user files (.txt, .jsonl, .csv), plus chat formatting.

Shipped sets live in steer/data/prompts/<name>.jsonl with fields id, text, lang, topic, split (sensitive and
controls also concept).
A user file is one prompt per line (.txt), JSON lines with a `text`/`prompt`/`instruction`
field (.jsonl), or a CSV whose column is named with `file.csv:column` (default: the first of
text/prompt/instruction/goal/question present).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from steer.errors import SteerError
from steer.jsonl import jsonl_lines

SHIPPED_DIR = Path(__file__).parent / "data" / "prompts"
SHIPPED = ("sensitive", "controls", "harmless", "harmful", "critique")
TEXT_KEYS = ("text", "prompt", "instruction", "goal", "question")


@dataclass(frozen=True)
class Prompt:
    """One prompt: id, text, and the language, topic, split and concept its file records ("?" where it records
    none). A concept is one question: the English and Chinese prompts asking it share the concept and the split."""

    id: str
    text: str
    lang: str = "?"
    topic: str = "?"
    split: str = "?"
    concept: str = "?"


def load_prompts(source: str, split: str | None = None, lang: str | None = None) -> list[Prompt]:
    """Prompts from a shipped set name or a file path, filtered by split and language.

    Splits and languages filter only what the file records; a user file without a
    `split` field is used whole.
    """
    if source in SHIPPED:
        prompts = _read_jsonl(SHIPPED_DIR / f"{source}.jsonl")
    else:
        path, column = Path(source), None
        if not path.exists() and ":" in source:  # file.csv:column
            head, _, column = source.rpartition(":")
            path = Path(head)
        if not path.is_file():
            raise SteerError(f"no such prompt file: {path} (or a shipped set: {', '.join(SHIPPED)})")
        prompts = _read_file(path, column)
    if not prompts:
        raise SteerError(f"prompt file {source} is empty")
    if split and any(p.split != "?" for p in prompts):
        prompts = [p for p in prompts if p.split == split]
    if lang:
        prompts = [p for p in prompts if p.lang == lang]
    if not prompts:
        raise SteerError(f"prompt set {source} has no prompts with split={split} lang={lang}")
    return prompts


def _read_file(path: Path, column: str | None) -> list[Prompt]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".csv":
        return _read_csv(path, column)
    if suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [Prompt(f"{path.stem}-{i}", line.strip()) for i, line in enumerate(lines, 1) if line.strip()]
    raise SteerError(f"unsupported prompt file type {path.suffix!r} for {path}: use .txt, .jsonl or .csv")


def _read_jsonl(path: Path) -> list[Prompt]:
    prompts = []
    for i, line in enumerate(jsonl_lines(path.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = next(row[k] for k in TEXT_KEYS if k in row)
        except (ValueError, StopIteration, TypeError):
            raise SteerError(
                f"{path}:{i}: expected a JSON object with one of the fields {', '.join(TEXT_KEYS)}"
            ) from None
        if not isinstance(text, str) or not text.strip():
            raise SteerError(f"{path}:{i}: empty prompt text")
        prompts.append(
            Prompt(
                str(row.get("id", f"{path.stem}-{i}")),
                text.strip(),
                row.get("lang", "?"),
                row.get("topic", "?"),
                row.get("split", "?"),
                row.get("concept", "?"),
            )
        )
    return prompts


def _read_csv(path: Path, column: str | None) -> list[Prompt]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        col = column or next((k for k in TEXT_KEYS if k in fields), None)
        if col is None or col not in fields:
            raise SteerError(
                f"{path}: no column {column or '/'.join(TEXT_KEYS)} (columns: {', '.join(fields) or 'none'}); "
                f"name one with {path}:COLUMN"
            )
        return [
            Prompt(f"{path.stem}-{i}", row[col].strip()) for i, row in enumerate(reader, 1) if (row[col] or "").strip()
        ]


def seeded_sample(items: list, n: int, seed: int) -> list:
    """n items drawn with a seeded RNG, kept in their original order (all of them if n >= len)."""
    if len(items) <= n:
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def prompts_hash(prompts: list[Prompt]) -> str:
    """sha256 of the prompt texts in order: recorded in manifests so a run can be rebuilt."""
    return hashlib.sha256("\n".join(p.text for p in prompts).encode()).hexdigest()


def chat_texts(tokenizer, texts: list[str], system: str | None = None) -> list[str]:
    """Wrap instructions in the model's chat template, ending where the assistant would speak."""
    if getattr(tokenizer, "chat_template", None) is None:
        return list(texts)
    head = [{"role": "system", "content": system}] if system else []
    return [
        tokenizer.apply_chat_template(
            head + [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]


def post_instruction_length(tokenizer) -> int:
    """Number of template tokens after the user's instruction (e.g. '<|im_end|>\\n<|im_start|>assistant\\n').

    These positions (plus the last token) are where refusal directions are read, as in
    Arditi et al.; with left padding they are the last n tokens of every row.
    """
    sentinel = "Zebra quartz sentinel"
    full = chat_texts(tokenizer, [sentinel])[0]
    if sentinel not in full:
        return 1
    suffix = full[full.rindex(sentinel) + len(sentinel) :]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    n = len(tokenizer(suffix, add_special_tokens=False)["input_ids"])
    if n == 0 or ids[-n:] != tokenizer(suffix, add_special_tokens=False)["input_ids"]:
        return 1  # suffix does not tokenize on its own boundary: fall back to the last token
    return n
