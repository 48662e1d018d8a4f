"""The MMLU scorer against a straightforward independent implementation on a tiny model."""

import pytest
import torch
from conftest import make_model

from steer.errors import SteerError
from steer.eval.benchmarks import Item
from steer.eval.mmlu import score_mmlu, summarize

ITEMS = [
    Item("a-1", "What is 2 + 2?", "B", ("3", "4", "5", "6"), "elementary_mathematics"),
    Item("a-2", "Which is a colour?", "C", ("dog", "run", "red", "seven"), "miscellaneous"),
    Item("a-3", "Capital of France?", "A", ("Paris", "Rome", "Oslo", "Bern"), "geography"),
    Item("a-4", "Longest river?", "D", ("Thames", "Seine", "Rhine", "Nile"), "geography"),
]
DEV = {"geography": [Item("d-1", "Capital of Spain?", "C", ("Lyon", "Porto", "Madrid", "Bonn"), "geography")]}


def reference(model, tokenizer, item, shots, chat):
    """One prompt at a time, no padding, full forward, compare the four letter logits."""
    subject = item.group.replace("_", " ")

    def q(it, ans):
        opts = "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", it.choices))
        return f"{it.question.strip()}{opts}\nAnswer:" + (f" {it.answer}" if ans else "")

    parts = [q(s, True) for s in shots] + [q(item, False)]
    text = f"The following are multiple choice questions (with answers) about {subject}.\n\n" + "\n\n".join(parts)
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        last = model(**ids).logits[0, -1]
    letters = [tokenizer(("" if chat else " ") + letter, add_special_tokens=False)["input_ids"][0] for letter in "ABCD"]
    return "ABCD"[int(last[letters].argmax())]


def test_scorer_matches_independent_implementation(tokenizer):
    model = make_model("llama")
    for chat in (True,):  # raw mode needs " A" as one token; the byte-level test tokenizer splits it
        for shots in (0, 1):
            results = score_mmlu(model, tokenizer, ITEMS, DEV, shots=shots, chat=chat, batch_size=3)
            expected = [reference(model, tokenizer, it, DEV.get(it.group, [])[:shots], chat) for it in ITEMS]
            assert [r["pred"] for r in results] == expected
            assert all(abs(sum(torch.tensor(r["logprobs"]).exp()) - 1) < 1e-6 for r in results)


def test_summary_micro_and_macro():
    results = [{"subject": s, "correct": c} for s, c in [("x", True), ("x", True), ("x", False), ("y", False)]]
    s = summarize(results)
    assert (
        s["micro"] == 0.5 and abs(s["macro"] - (2 / 3 + 0) / 2) < 1e-12 and s["per_subject"] == {"x": 2 / 3, "y": 0.0}
    )


def test_raw_mode_needs_single_token_letters(tokenizer):
    with pytest.raises(SteerError, match="splits answer letter 'A' into 2 tokens"):
        score_mmlu(make_model("qwen2"), tokenizer, ITEMS, chat=False)
