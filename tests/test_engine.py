"""The evaluation engine: item cache, resumable mapping, batched greedy generation, stop strings."""

import json

import pytest
import torch
from conftest import make_model

from steer.eval import engine
from steer.eval.engine import GenSpec, ItemCache, cached_map, fingerprint, generate_cached, generate_ids, truncate
from steer.prompts import chat_texts

PROMPTS = ["Hi", "Tell me a long story about a dragon.", "2+2?", "Name three rivers in Europe, please."]


def test_item_cache_survives_reload_and_a_cut_last_line(tmp_path):
    path = tmp_path / "c.jsonl"
    ItemCache(path).put({"a": {"x": 1}, "b": [1, 2]})
    with open(path, "a") as fh:
        fh.write('{"key": "c", "val')  # an interrupted write
    cache = ItemCache(path)
    assert cache["a"] == {"x": 1} and cache["b"] == [1, 2] and "c" not in cache


def test_cached_map_computes_only_missing_items(tmp_path):
    cache, calls = ItemCache(tmp_path / "c.jsonl"), []

    def compute(idx):
        calls.append(list(idx))
        return [i * 10 for i in idx]

    keys = [f"k{i}" for i in range(5)]
    assert cached_map(cache, keys[:3], compute, chunk=2) == [0, 10, 20]
    assert cached_map(cache, keys, compute, chunk=2, order=lambda i: -i) == [0, 10, 20, 30, 40]
    assert calls == [[0, 1], [2], [4, 3]]  # the second call computed 3 and 4 only (longest first)
    reloaded = ItemCache(tmp_path / "c.jsonl")
    assert cached_map(reloaded, keys, lambda idx: pytest.fail("recomputed"), chunk=2) == [0, 10, 20, 30, 40]


def test_batched_generation_matches_one_at_a_time(tokenizer):
    model = make_model("qwen2")
    texts = chat_texts(tokenizer, PROMPTS)
    batched = generate_ids(model, tokenizer, texts, GenSpec(12), batch_size=4)
    single = [generate_ids(model, tokenizer, [t], GenSpec(12), batch_size=1)[0] for t in texts]
    assert [b["ids"] for b in batched] == [s["ids"] for s in single]
    assert all(0 < len(b["ids"]) <= 12 for b in batched)


def test_stop_strings_cut_the_answer(tokenizer):
    model = make_model("llama")
    texts = chat_texts(tokenizer, PROMPTS[:2])
    free = generate_ids(model, tokenizer, texts, GenSpec(16))
    text = free[0]["text"]
    stop = text[3:5]
    assert len(stop) == 2
    stopped = generate_ids(model, tokenizer, texts[:1], GenSpec(16, (stop,)))[0]
    assert stop not in stopped["text"] and text.startswith(stopped["text"]) and len(stopped["text"]) < len(text)
    assert truncate("abc STOP def", ["STOP", "de"]) == "abc "


def test_fingerprint_follows_the_weights():
    a, b = make_model("mistral"), make_model("mistral")
    assert fingerprint(a) == fingerprint(b)
    with torch.no_grad():
        b.lm_head.weight[0, 0] += 1e-3
    assert fingerprint(a) != fingerprint(b)
    import hashlib

    h = hashlib.sha256()  # the digest of the former bytes copy: existing caches keep their keys
    for name, t in sorted(b.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    assert fingerprint(b) == h.hexdigest()


def test_generate_cached_reuses_answers(tokenizer, tmp_path, monkeypatch):
    model = make_model("qwen2")
    texts = chat_texts(tokenizer, PROMPTS)
    cache = ItemCache(tmp_path / "c.jsonl")
    first = generate_cached(model, tokenizer, texts, GenSpec(6), cache, fingerprint(model))
    monkeypatch.setattr(engine, "generate_ids", lambda *a, **k: pytest.fail("regenerated a cached item"))
    again = generate_cached(model, tokenizer, texts, GenSpec(6), ItemCache(tmp_path / "c.jsonl"), fingerprint(model))
    assert again == first
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == len(PROMPTS) and all(json.loads(line)["value"]["ids"] for line in lines)


def _penalized_greedy(model, ids: list[int], n: int, penalty: float) -> list[int]:
    """Reference: greedy on logits where every token already in the sequence (prompt included)
    has its logit divided by the penalty when positive, multiplied when negative."""
    seq = list(ids)
    for _ in range(n):
        logits = model(torch.tensor([seq])).logits[0, -1].double()
        seen = torch.tensor(sorted(set(seq)))
        logits[seen] = torch.where(logits[seen] > 0, logits[seen] / penalty, logits[seen] * penalty)
        seq.append(int(logits.argmax()))
    return seq[len(ids) :]


@torch.inference_mode()
def test_repetition_penalty_matches_a_hand_written_greedy_loop(tokenizer):
    model = make_model("qwen2")
    texts = chat_texts(tokenizer, PROMPTS[1:3])
    plain = generate_ids(model, tokenizer, texts, GenSpec(12), batch_size=2)
    penal = generate_ids(model, tokenizer, texts, GenSpec(12, repetition_penalty=1.3), batch_size=2)
    assert [p["ids"] for p in plain] != [p["ids"] for p in penal]  # the penalty reached generation
    for text, out in zip(texts, penal):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert out["ids"] == _penalized_greedy(model, ids, len(out["ids"]), 1.3)[: len(out["ids"])]


def test_only_a_non_default_penalty_enters_the_cache_key():
    from dataclasses import asdict

    assert GenSpec(48).cache_key() == {k: v for k, v in asdict(GenSpec(48)).items() if k != "repetition_penalty"}
    assert GenSpec(48).cache_key() == {
        "max_new_tokens": 48,
        "stop": (),
    }  # the keys every committed cache was written with
    assert GenSpec(48, repetition_penalty=1.1).cache_key()["repetition_penalty"] == 1.1


def test_cached_values_with_unicode_line_separators_are_read_back(tmp_path):
    path = tmp_path / "c.jsonl"
    ItemCache(path).put({"k": "Who\u0085wrote\u2028it?"})
    assert ItemCache(path).data == {"k": "Who\u0085wrote\u2028it?"}  # not skipped as a cut line and recomputed
