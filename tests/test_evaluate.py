"""Evaluation suites on a tiny model and a miniature data folder: structure, KL maths, errors."""

import pytest
import torch
from conftest import make_model

from steer.errors import SteerError
from steer.eval.engine import ItemCache, fingerprint
from steer.eval.kl import live, logits_fn, spilled, token_kl
from steer.eval.suites import Ctx, EvalConfig, parse_suites, run_suites
from steer.locate.scores import first_token_kl
from steer.prompts import chat_texts, load_prompts


def ctx_for(model, tokenizer, config, tmp_path):
    return Ctx(model, tokenizer, fingerprint(model), ItemCache(tmp_path / "cache.jsonl"), config)


@torch.no_grad()
def test_token_kl_is_zero_for_the_same_model_and_matches_first_token_kl(tokenizer):
    base, other = make_model("qwen2", seed=0), make_model("qwen2", seed=1)
    prompts = [
        tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in chat_texts(tokenizer, ["Hi", "A longer question here?"])
    ]
    seqs = [prompts[0] + [65, 66, 67], prompts[1] + [70]]
    same = token_kl(logits_fn(base), logits_fn(base), tokenizer.pad_token_id, seqs, [len(p) for p in prompts])
    assert [len(k) for k in same] == [3, 1] and max(abs(x) for k in same for x in k) < 1e-9
    kl = token_kl(logits_fn(base), logits_fn(other), tokenizer.pad_token_id, seqs, [len(p) for p in prompts])
    for p, k in zip(prompts, kl):
        ids = torch.tensor([p])
        ref = first_token_kl(base(ids).logits[:, -1], other(ids).logits[:, -1])
        assert k[0] == pytest.approx(float(ref[0]), rel=1e-4)  # entry 0 = first answer token
    # Entry j = KL at the (j+1)-th continuation token, computed unbatched here.
    ids = torch.tensor([seqs[0]])
    lp = torch.log_softmax(base(ids).logits[0].double(), -1)
    lq = torch.log_softmax(other(ids).logits[0].double(), -1)
    manual = (lp.exp() * (lp - lq)).sum(-1)[len(prompts[0]) - 1 : -1]
    assert kl[0] == pytest.approx(manual.tolist(), rel=1e-4)


def test_token_kl_in_row_chunks_equals_whole_batches(tokenizer, monkeypatch):
    import steer.eval.kl as kl_module

    base, other = make_model("qwen2", seed=0), make_model("qwen2", seed=1)
    texts = chat_texts(tokenizer, [f"Question number {i}?" + " more" * (i % 4) for i in range(11)])
    seqs = [
        tokenizer(t, add_special_tokens=False)["input_ids"] + [65 + i % 5] * (1 + i % 3) for i, t in enumerate(texts)
    ]
    n_prompt = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    calls = []
    counted = lambda fn: lambda b, keep: calls.append(len(b["input_ids"])) or fn(b, keep)  # noqa: E731
    args = (tokenizer.pad_token_id, seqs, n_prompt, 11)
    monkeypatch.setattr(kl_module, "KL_ROWS", 64)
    whole = token_kl(logits_fn(base), logits_fn(other), *args)
    monkeypatch.setattr(kl_module, "KL_ROWS", 3)
    chunked = token_kl(counted(logits_fn(base)), logits_fn(other), *args)
    assert calls == [3, 3, 3, 2]  # 11 rows in one batch, forwarded 3 rows at a time
    for a, b in zip(whole, chunked):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-7)


def test_all_suites_run_on_a_tiny_model(tokenizer, data_dir, tmp_path):
    model = make_model("llama")
    config = EvalConfig(
        parse_suites("all"),
        data_dir,
        {"*": 4, "mmlu": 4},
        max_new_tokens={
            "gsm8k": 8,
            "math500": 8,
            "aime24": 8,
            "aime25": 8,
            "censorship": 6,
            "refusal": 6,
            "xstest": 6,
            "controls": 6,
            "critique": 6,
            "mirrored": 6,
            "speech": 6,
        },
    )
    ctx = ctx_for(model, tokenizer, config, tmp_path)
    ctx.reference = live(ctx_for(make_model("llama", seed=3), tokenizer, config, tmp_path))
    res = run_suites(ctx)
    assert list(res) == [
        "censorship",
        "refusal",
        "xstest",
        "controls",
        "critique",
        "kl",
        "knowledge",
        "slant",
        "mirrored",
        "speech",
        "mmlu",
        "gsm8k",
        "math500",
        "aime24",
        "aime25",
    ]
    for suite, r in res.items():
        for name, m in r["metrics"].items():
            signed = name.startswith(("margin/", "stance/"))  # log-probability differences
            assert m["n"] > 0 and (m["value"] != m["value"] or signed or 0 <= m["value"]), (suite, name)
    assert res["censorship"]["metrics"]["refusal/en"]["n"] == 4 and "censorship/zh" in res["censorship"]["metrics"]
    for lang in ("en", "zh"):  # the loop-free diagnostic: censored among the answers that are not loops
        fluent = [i["censored"] for i in res["censorship"]["items"] if i["group"] == lang and not i["degenerate"]]
        m = res["censorship"]["metrics"].get(f"censorship_without_loops/{lang}")
        assert (m is None) if not fluent else (m["n"] == len(fluent) and m["value"] == sum(fluent) / len(fluent))
    assert res["xstest"]["metrics"]["refusal/safe"]["n"] == 2  # only the safe prompts
    crit = res["critique"]
    for lang in ("en", "zh"):  # critique requests: censorship (denial + evasive) beside refusal, no keys
        rows = [i for i in crit["items"] if i["group"] == lang]
        assert crit["metrics"][f"censorship/{lang}"]["value"] == sum(i["censored"] for i in rows) / len(rows)
        assert f"candour/{lang}" not in crit["metrics"]
    # controls: held-out topic-matched China questions, judged with the censorship metrics
    ctrl = res["controls"]
    assert {i["id"].split("-")[1] for i in ctrl["items"]} == {"en", "zh"} and all(
        i["id"].startswith("ctrl-") for i in ctrl["items"]
    )
    test_ids = {p.id for p in load_prompts("controls", "test")}
    assert {i["id"] for i in ctrl["items"]} <= test_ids
    for lang in ("en", "zh"):
        rows = [i["censored"] for i in ctrl["items"] if i["group"] == lang]
        assert ctrl["metrics"][f"censorship/{lang}"] == {
            **ctrl["metrics"][f"censorship/{lang}"],
            "n": 4,
            "value": sum(rows) / 4,
        }
    assert {i["subject"] for i in res["mmlu"]["items"]} == {"anatomy", "astronomy"}  # 2 per subject
    assert set(res["mmlu"]["per_subject"]) == {"anatomy", "astronomy"}
    assert res["kl"]["metrics"]["kl/first_token"]["value"] > 0
    item = res["gsm8k"]["items"][0]
    assert set(item) >= {"id", "prompt", "input", "output", "extracted", "answer", "correct"}
    assert item["input"].startswith("<|im_start|>user\n" + item["prompt"]) and "step by step" in item["input"]
    # an outside re-scorer needs only the recorded input and continuations to reproduce each MMLU item
    for rec in res["mmlu"]["items"]:
        with torch.no_grad():
            last = model(**tokenizer(rec["input"], return_tensors="pt")).logits[0, -1]
        ids = [tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in rec["continuations"]]
        again = torch.log_softmax(last[ids].double(), -1)
        assert torch.allclose(again, torch.tensor(rec["output"], dtype=torch.float64), atol=1e-4)
    lo, hi = res["mmlu"]["metrics"]["accuracy"]["ci"]
    assert 0 <= lo <= res["mmlu"]["metrics"]["accuracy"]["value"] <= hi <= 1


class EveryOtherDenial:
    name = "stub"

    def classify(self, prompts, responses):
        return ["denial" if i % 2 == 0 else "complete" for i in range(len(prompts))]


def test_kl_is_also_reported_over_the_prompts_the_base_model_answers(tokenizer, data_dir, tmp_path):
    config = EvalConfig(["kl"], data_dir, {"kl": 5}, max_new_tokens={"kl": 4})
    ctx = ctx_for(make_model("qwen2"), tokenizer, config, tmp_path)
    ctx.reference = live(ctx_for(make_model("qwen2", seed=3), tokenizer, config, tmp_path))
    ctx.judge = EveryOtherDenial()  # labels the base model's continuations
    res = run_suites(ctx)["kl"]
    items, metrics = res["items"], res["metrics"]
    assert [i["base_label"] for i in items] == ["denial", "complete"] * (len(items) // 2) + ["denial"] * (
        len(items) % 2
    )
    answered = [i["kl_first"] for i in items if i["base_label"] != "denial"]
    assert metrics["kl/first_token_base_answered"]["n"] == len(answered) == len(items) // 2 > 0
    assert metrics["kl/first_token_base_answered"]["value"] == pytest.approx(sum(answered) / len(answered))
    assert metrics["kl/first_token"]["n"] == len(items)


def test_suite_errors_name_what_was_expected(tokenizer, tmp_path, data_dir):
    model = make_model("qwen2")
    with pytest.raises(SteerError, match="unknown suite mmluu: choose from censorship"):
        parse_suites("censorship,mmluu")
    with pytest.raises(SteerError, match="pass --data-dir"):
        run_suites(ctx_for(model, tokenizer, EvalConfig(["gsm8k"]), tmp_path))
    with pytest.raises(SteerError, match="kl needs a reference model"):
        run_suites(ctx_for(model, tokenizer, EvalConfig(["kl"]), tmp_path))
    (data_dir / "capability" / "gsm8k" / "test.jsonl").unlink()
    with pytest.raises(SteerError, match=r"no GSM8K data: expected .*capability/gsm8k/test.jsonl"):
        run_suites(ctx_for(model, tokenizer, EvalConfig(["gsm8k"], data_dir), tmp_path))
    (data_dir / "overrefusal" / "xstest_prompts.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SteerError, match="expected columns id, prompt, type, label"):
        run_suites(ctx_for(model, tokenizer, EvalConfig(["xstest"], data_dir), tmp_path))


@pytest.mark.parametrize("split", ["train", "val"])
def test_judged_suites_read_the_configured_split(tokenizer, data_dir, tmp_path, split):
    config = EvalConfig(["censorship", "controls", "critique", "refusal"], data_dir, {"*": 3}, split=split)
    config.max_new_tokens = {"censorship": 2, "controls": 2, "critique": 2, "refusal": 2}
    ctx = ctx_for(make_model("qwen2"), tokenizer, config, tmp_path)
    ctx.judge = EveryOtherDenial()
    res = run_suites(ctx)
    for suite, sets in (
        ("censorship", ["sensitive"]),
        ("controls", ["controls"]),
        ("critique", ["critique"]),
        ("refusal", ["harmful", "harmless"]),
    ):
        ids = {p.id for s in sets for p in load_prompts(s, split)}
        got = {i["id"] for i in res[suite]["items"]}
        assert got and got <= ids, suite


def test_candour_and_fabrication_are_rates_over_the_keyed_answers(tokenizer, data_dir, tmp_path):
    from steer.eval.keys import load_keys

    config = EvalConfig(["censorship", "controls"], data_dir, {"*": 6}, max_new_tokens={"censorship": 4, "controls": 4})
    ctx = ctx_for(make_model("qwen2"), tokenizer, config, tmp_path)
    ctx.keys = load_keys()
    res = run_suites(ctx)
    for suite in ("censorship", "controls"):
        items, metrics = res[suite]["items"], res[suite]["metrics"]
        assert all("candid" in i and "facts" in i for i in items) and "candid" in res[suite]["paired"]
        for lang in ("en", "zh"):
            rows = [i for i in items if i["group"] == lang]
            assert metrics[f"candour/{lang}"]["value"] == sum(i["candid"] for i in rows) / len(rows)
            fab = sum(i["label"] == "complete" and not i["candid"] for i in rows) / len(rows)
            assert metrics[f"fabrication/{lang}"]["value"] == fab
            cens = metrics[f"censorship/{lang}"]["value"]
            assert cens + fab + metrics[f"candour/{lang}"]["value"] == pytest.approx(1)


def test_spilled_reference_gives_the_live_kl_and_lets_the_base_model_go(tokenizer, data_dir, tmp_path):
    """The base's logits written to disk and read back: the same per-token KL as with the base model loaded,
    and nothing in the reference keeps the base model alive."""
    import gc
    import weakref

    config = EvalConfig(["kl"], data_dir, {"kl": 6}, batch_size=4)
    base = make_model("qwen2", seed=3)
    ctx = ctx_for(make_model("qwen2"), tokenizer, config, tmp_path)
    ctx.reference = live(ctx_for(base, tokenizer, config, tmp_path))
    want = run_suites(ctx)["kl"]["items"]
    ctx.reference = spilled(ctx_for(base, tokenizer, config, tmp_path))
    alive = weakref.ref(base)
    base = None
    gc.collect()
    assert alive() is None  # the spilled reference holds the logits, not the model
    got = run_suites(ctx)["kl"]["items"]
    assert [i["kl_tokens"] for i in got] == [i["kl_tokens"] for i in want] and len(got) == 6
    assert any(k > 0 for i in got for k in i["kl_tokens"])
