"""MMLU scored by the next-token log-probability of the answer letter (no decoding).

Prompt (documented choice): with `chat=True` (default) the question goes into the user turn
of the model's chat template and the letter is read at the first assistant token, scoring
the tokens "A".."D"; with `chat=False` the raw text ends in "Answer:" and " A".." D" are
scored. Few-shot examples come from the dev split of the same subject, answered as
"Answer: X" in the same message.
"""

from __future__ import annotations

import torch

from steer.errors import SteerError
from steer.eval.benchmarks import Item
from steer.model.collect import batched_last_logits
from steer.prompts import chat_texts

LETTERS = ("A", "B", "C", "D")


def format_question(item: Item, with_answer: bool = False) -> str:
    """The question and its lettered choices, ending in "Answer:" (and " X", the gold letter, with with_answer)."""
    lines = [item.question.strip()] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, item.choices)]
    return "\n".join(lines) + "\nAnswer:" + (f" {item.answer}" if with_answer else "")


def build_prompt(item: Item, shots: list[Item]) -> str:
    """The MMLU prompt: a line naming the subject, the answered shots, then the question."""
    subject = item.group.replace("_", " ")
    head = f"The following are multiple choice questions (with answers) about {subject}."
    body = "\n\n".join([format_question(s, True) for s in shots] + [format_question(item)])
    return f"{head}\n\n{body}"


def letter_ids(tokenizer, chat: bool) -> list[int]:
    """Token ids of the letters A-D as scored: "A" after the chat template, " A" after raw text; each must be
    one token."""
    ids = []
    for letter in LETTERS:
        toks = tokenizer(letter if chat else f" {letter}", add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise SteerError(
                f"the tokenizer splits answer letter {letter!r} into {len(toks)} tokens; MMLU scoring needs one"
            )
        ids.append(toks[0])
    return ids


def model_inputs(tokenizer, items: list[Item], dev: dict[str, list[Item]] | None, shots: int, chat: bool = True):
    """The exact texts the model reads, one per item (the prompt in the chat template when chat): an outside
    re-scorer needs only these and the scored continuations ("A".."D", or " A".." D" after raw text)."""
    dev = dev or {}
    prompts = [build_prompt(item, dev.get(item.group, [])[:shots]) for item in items]
    return chat_texts(tokenizer, prompts) if chat else prompts


@torch.inference_mode()
def score_mmlu(
    model,
    tokenizer,
    items: list[Item],
    dev: dict[str, list[Item]] | None = None,
    shots: int = 0,
    chat: bool = True,
    batch_size: int = 16,
    desc: str | None = None,
) -> list[dict]:
    """Per-item results: predicted letter, log-probs of A-D (normalized over the four), correct."""
    texts = model_inputs(tokenizer, items, dev, shots, chat)
    groups = [item.group for item in items] if shots else None  # a subject's prompts share its shots: run them once
    logits = batched_last_logits(model, tokenizer, texts, batch_size, desc=desc, groups=groups)
    choice = torch.log_softmax(logits[:, letter_ids(tokenizer, chat)].double(), dim=-1)
    out = []
    for item, row in zip(items, choice):
        pred = LETTERS[int(row.argmax())]
        out.append(
            {
                "id": item.id,
                "subject": item.group,
                "answer": item.answer,
                "pred": pred,
                "logprobs": [round(float(x), 6) for x in row],
                "correct": pred == item.answer,
            }
        )
    return out


def summarize(results: list[dict]) -> dict:
    """Micro accuracy (over items), macro accuracy (mean over subjects) and per-subject accuracy."""
    by_subject: dict[str, list[bool]] = {}
    for r in results:
        by_subject.setdefault(r["subject"], []).append(r["correct"])
    per_subject = {s: sum(v) / len(v) for s, v in sorted(by_subject.items())}
    return {
        "n": len(results),
        "micro": sum(r["correct"] for r in results) / len(results) if results else float("nan"),
        "macro": sum(per_subject.values()) / len(per_subject) if per_subject else float("nan"),
        "per_subject": per_subject,
    }
