"""Knowledge check: batched answer log-probabilities equal one-at-a-time ones; pairs and the suite's metrics."""

import pytest
import torch
from conftest import make_model
from test_facts import KEY

from steer.eval.engine import ItemCache, fingerprint
from steer.eval.keys import KeySet
from steer.eval.knowledge import answer_logprobs, choice_logprobs, fact_pairs, knowledge_items
from steer.eval.suites import Ctx, EvalConfig, run_suites
from steer.model.collect import left_pad
from steer.prompts import Prompt, chat_texts


@torch.no_grad()
def one_at_a_time(model, tokenizer, prompt: str, answer: str) -> float:
    head = tokenizer(chat_texts(tokenizer, [prompt])[0], add_special_tokens=False)["input_ids"]
    tail = tokenizer(answer, add_special_tokens=False)["input_ids"]
    logp = torch.log_softmax(model(input_ids=torch.tensor([head + tail])).logits[0].float(), -1)
    return sum(logp[len(head) + j - 1, t].item() for j, t in enumerate(tail))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_batched_log_probabilities_equal_one_at_a_time(tokenizer, arch):
    model = make_model(arch)
    prompts = ["What happened?", "A much longer question about the events of that night?", "Why?"]
    answers = ["Troops opened fire.", "No.", "军队开枪。"]
    got = answer_logprobs(model, tokenizer, prompts, answers, batch_size=2)
    want = [one_at_a_time(model, tokenizer, p, a) for p, a in zip(prompts, answers)]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma2", "mistral"])
def test_prompt_read_once_scores_equal_one_at_a_time(tokenizer, arch):
    model = make_model(arch)
    prompts = ["What happened?", "A much longer question about the events of that night?", "Why?"]
    choices = [["Troops opened fire.", "No."], ["Y", "军队开枪。", "Nothing at all happened there."], ["No.", "Yes"]]
    heads = tokenizer(chat_texts(tokenizer, prompts[:2]), add_special_tokens=False)["input_ids"]
    assert "prefix_ids" in left_pad(heads, tokenizer.pad_token_id, share_prefix=True)  # the shared-prefix path runs
    got = choice_logprobs(model, tokenizer, prompts, choices, batch_size=2)
    want = [[one_at_a_time(model, tokenizer, p, a) for a in c] for p, c in zip(prompts, choices)]
    assert [len(g) for g in got] == [2, 3, 2]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, rel=1e-4, abs=1e-3)


def test_pairs_follow_the_prompt_language_and_items_compare_true_with_false(tokenizer):
    prompts = [Prompt("q-en", "What happened?", "en"), Prompt("q-zh", "发生了什么？", "zh"), Prompt("x", "Other", "en")]
    pairs = fact_pairs(prompts, KeySet([KEY]))
    assert [p["id"] for p in pairs] == ["q-en:fired", "q-en:toll", "q-zh:fired", "q-zh:toll"]
    assert pairs[2]["true"] == "军队向平民开枪。" and pairs[2]["false"] == "军队没有向平民开枪。"
    items = knowledge_items(make_model("qwen2"), tokenizer, pairs, batch_size=3)
    for it in items:
        assert it["margin"] == pytest.approx(it["logp_true"] - it["logp_false"])
        assert it["prefers_true"] is (it["logp_true"] > it["logp_false"])


def test_knowledge_suite_reports_per_set_and_language(tokenizer, tmp_path):
    model = make_model("qwen2")
    config = EvalConfig(["knowledge"], None, {"knowledge": 2}, split="val")
    ctx = Ctx(model, tokenizer, fingerprint(model), ItemCache(tmp_path / "c.jsonl"), config)
    res = run_suites(ctx)["knowledge"]
    groups = {i["group"] for i in res["items"]}
    assert groups == {"sensitive/en", "sensitive/zh", "controls/en", "controls/zh"}
    for g in groups:
        rows = [i for i in res["items"] if i["group"] == g]
        assert res["metrics"][f"knowledge/{g}"]["n"] == len(rows)
        assert res["metrics"][f"knowledge/{g}"]["value"] == sum(r["prefers_true"] for r in rows) / len(rows)
    assert res["paired"] == ["prefers_true"]


def test_knowledge_suite_resumes_from_its_cache_with_the_uncached_scores(tokenizer, tmp_path):
    model = make_model("qwen2")
    config = EvalConfig(["knowledge"], None, {"knowledge": 2}, split="val", batch_size=2)
    path = tmp_path / "c.jsonl"
    first = run_suites(Ctx(model, tokenizer, fingerprint(model), ItemCache(path), config))["knowledge"]
    pairs = [{k: v for k, v in it.items() if k not in ("logp_true", "logp_false", "margin", "prefers_true")}
             for it in first["items"]]  # fmt: skip
    by_group = {g: [p for p in pairs if p["group"] == g] for g in dict.fromkeys(p["group"] for p in pairs)}
    plain = [it for rows in by_group.values() for it in knowledge_items(model, tokenizer, rows, batch_size=2)]
    assert first["items"] == plain  # the cache changes no score: same batches as without it
    lines = path.read_text().splitlines()
    assert len(lines) == len(pairs) > 8
    path.write_text("\n".join(lines[:8]) + "\n")  # a killed run keeps whole chunks: here the first (4 batches of 2)
    calls = []
    forward = model.forward
    model.forward = lambda *a, **kw: calls.append(1) or forward(*a, **kw)
    again = run_suites(Ctx(model, tokenizer, fingerprint(model), ItemCache(path), config))["knowledge"]
    assert again["items"] == first["items"] and calls  # the rest recomputed, the same result
    calls.clear()
    run_suites(Ctx(model, tokenizer, fingerprint(model), ItemCache(path), config))
    assert not calls  # every item cached now
