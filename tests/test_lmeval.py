"""steer.eval.lmeval: steer's MMLU prompts as an lm-eval task give the same choice as steer's scorer, item by item
(tiny random model, in-process; lm-eval templates, tokenises and batches on its own)."""

from __future__ import annotations

import pytest
from conftest import make_model

from steer.cli.main import main
from steer.errors import SteerError
from steer.eval.benchmarks import Item
from steer.eval.lmeval import agreement, lm_eval_choice, mmlu_task, run_lm_eval
from steer.eval.mmlu import score_mmlu

pytest.importorskip("lm_eval")

ITEMS = [
    Item(f"astronomy-{i}", q, "ABCD"[i % 4], tuple(f"{q[:6]} option {k}" for k in range(4)), "astronomy")
    for i, q in enumerate(
        ["Which planet is largest?", "What is a comet made of?", "How old is the Sun?", "What orbits Mars?",
         "Where is the Kuiper belt?", "What is a light year?"]
    )
]  # fmt: skip


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_lm_eval_agrees_with_steer_item_by_item(arch, tokenizer, tmp_path):
    model = make_model(arch)
    ours = score_mmlu(model, tokenizer, ITEMS)
    steer_items = [{"id": r["id"], "extracted": r["pred"], "correct": r["correct"]} for r in ours]
    out = run_lm_eval(model, tokenizer, [mmlu_task(ITEMS, {}, 0, tmp_path / "task")], batch_size=4)
    samples = out["samples"]["steer_mmlu"]
    assert len(samples) == len(ITEMS)
    assert samples[0]["arguments"][0][0].startswith("<|im_start|>user\nThe following are multiple choice")
    got = agreement(steer_items, samples)
    assert got["items"] == len(ITEMS) and got["agreement"] == 1.0, got
    acc = out["results"]["steer_mmlu"]["acc,none"]
    assert acc == pytest.approx(got["lm_eval_accuracy"]) == pytest.approx(got["steer_accuracy"])


def test_agreement_counts_a_disagreement():
    sample = {
        "doc": {"id": "a", "gold": 1},
        "resps": [[(-3.0, False)], [(-1.0, False)], [(-2.0, False)], [(-4.0, False)]],
    }
    assert lm_eval_choice(sample) == 1
    got = agreement([{"id": "a", "extracted": "C", "correct": False}], [sample])
    assert got["agreement"] == 0.0 and got["disagreements"] == ["a"] and got["lm_eval_accuracy"] == 1.0
    with pytest.raises(SteerError, match="no item is shared"):
        agreement([{"id": "b", "extracted": "C", "correct": False}], [sample])


def test_backend_flag_rejects_a_bad_limit(tmp_path, capsys):
    argv = ["eval", "x", "--backend", "lm-eval", "--suite", "mmlu", "--limit", "mmlu=3", "--out", str(tmp_path / "o")]
    assert main(argv) == 2  # bad usage
    err = capsys.readouterr().err.strip()
    assert "--limit is one number" in err and "\n" not in err
