"""steer.sft: pairs in, answer-only labels, held-out concepts refused, and a LoRA run that learns, is deterministic
and resumes bit for bit (tiny random models, in-process)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import make_model, make_tokenizer
from transformers import AutoModelForCausalLM

from steer.cli.main import main
from steer.errors import SteerError
from steer.model.load import checkpoint_hash
from steer.prompts import load_prompts
from steer.sft import SFTSettings, load_pairs, train_sft
from steer.sft import run as sft_run
from steer.sft import train as T
from steer.sft.data import IGNORE, Pair, check_heldout, encode, keep_share, split_by_concept

pytest.importorskip("peft")

PAIRS = [
    {"id": f"p{i}", "prompt": q, "answer": a, "concept": f"c{i % 4}", "lang": "en"}
    for i, (q, a) in enumerate(
        [
            ("What is the capital of France?", "Paris."),
            ("Name a primary colour.", "Red."),
            ("What is two plus two?", "Four."),
            ("Which ocean is largest?", "The Pacific."),
            ("什么是长江？", "长江是中国最长的河流。"),
            ("Say hello.", "Hello!"),
            ("What do bees make?", "Honey."),
            ("What is ice?", "Frozen water."),
        ]
    )
]
# the recipe of the first configuration (written general answers, cross-entropy, every refusal pair), tiny and fast
FAST = dict(rank=4, alpha=8.0, epochs=3, lr=5e-3, batch_size=4, max_length=64, val_share=0.25, save_every=2,
            general_answers="written", general_loss="ce", kl_first_weight=1.0, refusal_share=1.0)  # fmt: skip


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PAIRS), encoding="utf-8")
    return path


@pytest.fixture(params=["qwen2", "llama"])
def checkpoint(request, tmp_path):
    folder = tmp_path / f"tiny-{request.param}"
    make_model(request.param).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache"))


def test_labels_cover_the_answer_and_end_of_turn_only():
    tok = make_tokenizer()
    enc = encode(tok, Pair("x", "What is ice?", "Frozen water."), max_length=200)
    kept = [t for t in enc.labels if t != IGNORE]
    assert len(enc.labels) == len(enc.input_ids)
    assert enc.input_ids[-len(kept) :] == kept  # the answer is the end of the sequence
    assert tok.decode(kept) == "Frozen water.<|im_end|>\n"
    assert "What is ice?" in tok.decode(enc.input_ids[: len(enc.input_ids) - len(kept)])


def test_encode_cuts_at_max_length():
    enc = encode(make_tokenizer(), Pair("x", "Q?", "A long answer " * 20), max_length=30)
    assert len(enc.input_ids) == len(enc.labels) == 30


def test_the_shipped_set_is_on_train_concepts_only():
    pairs = load_pairs()
    check_heldout(pairs)  # raises on a leak
    train = {p.concept for n in ("sensitive", "controls") for p in load_prompts(n, "train")}
    sensitive = [p for p in pairs if p.kind == "sensitive"]
    assert sensitive and {p.concept for p in sensitive} <= train


def test_a_pair_on_a_validation_concept_is_refused():
    concept = load_prompts("sensitive", "val")[0].concept
    with pytest.raises(SteerError, match=f"concept '{concept}' of the val split"):
        check_heldout([Pair("leak", "q", "a", concept=concept)])


@pytest.mark.parametrize(
    "text, error",
    [
        ("", "is empty"),
        ('{"prompt": "q"}\n', r"pairs.jsonl:1: expected a JSON object with text fields prompt and answer"),
        ('{"prompt": "q", "answer": "  "}\n', "pairs.jsonl:1: empty prompt or answer"),
        ('{"id": "a", "prompt": "q", "answer": "x"}\n{"id": "a", "prompt": "r", "answer": "y"}\n', "'a' appears twice"),
        ("not json\n", "pairs.jsonl:1: not JSON"),
    ],
)
def test_bad_data_files_fail_with_one_line(tmp_path, text, error):
    path = tmp_path / "pairs.jsonl"
    path.write_text(text)
    with pytest.raises(SteerError, match=error):
        load_pairs(path)


def test_validation_split_keeps_concepts_whole_and_is_seeded():
    pairs = [Pair(p["id"], p["prompt"], p["answer"], concept=p["concept"]) for p in PAIRS]
    train, val = split_by_concept(pairs, 0.25, seed=3)
    assert val and {p.concept for p in train}.isdisjoint({p.concept for p in val})
    assert (train, val) == split_by_concept(pairs, 0.25, seed=3)


def test_schedule_warms_up_then_decays_to_zero():
    f = T.schedule(SFTSettings(warmup=0.25), total=8)
    assert [round(f(s), 3) for s in range(8)] == [0.5, 1.0, 1.0, 0.833, 0.667, 0.5, 0.333, 0.167]


def test_training_learns_and_writes_a_loadable_checkpoint(checkpoint, data, tmp_path):
    before = checkpoint_hash(checkpoint)
    r = train_sft(str(checkpoint), tmp_path / "out", SFTSettings(**FAST), data=data)
    assert r.steps == 3 * 2 and r.train_pairs == 6 and r.val_pairs == 2
    assert r.train_loss[-1] < r.train_loss[0]
    tokens = r.cost["tokens"]
    assert tokens["train"] == tokens["recompute"] > 0 and tokens["forward"] > 0
    assert r.cost["flops_70B"] > r.cost["flops_7B"] > r.cost["flops"]
    assert checkpoint_hash(checkpoint) == before  # the input is never modified
    manifest = json.loads((tmp_path / "out" / "steer_manifest.json").read_text())
    assert manifest["kind"] == "sft" and manifest["output_sha256"] == checkpoint_hash(tmp_path / "out")
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    base = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert not any(n.startswith("base_model") or "lora" in n for n in tuned.state_dict())
    diff = [n for n, p in tuned.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert diff and all("proj" in n for n in diff)


def test_same_seed_same_weights_and_resume_is_bit_identical(data, tmp_path, monkeypatch):
    folder = tmp_path / "tiny"
    make_model("qwen2").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    settings = SFTSettings(**FAST)
    a = train_sft(str(folder), tmp_path / "a", settings, data=data)
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache-b"))
    save, calls = sft_run.save_state, []

    def interrupted(*args):  # kill the run right after its second saved state (step 4 of 6)
        save(*args)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(sft_run, "save_state", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_sft(str(folder), tmp_path / "b", settings, data=data)
    assert not (tmp_path / "b").exists()
    monkeypatch.setattr(sft_run, "save_state", save)
    b = train_sft(str(folder), tmp_path / "b", settings, data=data)
    assert checkpoint_hash(tmp_path / "a") == checkpoint_hash(tmp_path / "b")
    assert (a.train_loss, a.val_loss) == (b.train_loss, b.val_loss)
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache-c"))
    c = train_sft(str(folder), tmp_path / "c", SFTSettings(**{**FAST, "seed": 1}), data=data)
    assert checkpoint_hash(tmp_path / "c") != checkpoint_hash(tmp_path / "a") and c.steps == a.steps


def test_cli_runs_and_reports_bad_input_on_one_line(checkpoint, data, tmp_path, capsys):
    out = tmp_path / "cli-out"
    flags = ["--rank", "4", "--epochs", "1", "--batch-size", "4", "--max-length", "64", "--val-share", "0.25"]
    assert main(["sft", str(checkpoint), "--data", str(data), "--out", str(out), *flags]) == 0
    assert "saved to" in capsys.readouterr().out
    assert main(["sft", str(checkpoint), "--data", str(data), "--out", str(out), *flags]) == 2
    assert "already exists" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["sft", str(checkpoint), "--data", str(empty), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == f"steer: error: SFT data file {empty} is empty"
    bad = ["--target-modules", "nope_proj"]
    assert main(["sft", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "y"), *bad]) == 2
    assert "no module named nope_proj" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_batches_cover_every_row_once_and_pad_less_than_a_plain_shuffle():
    import random

    lengths = [random.Random(i).randint(5, 300) for i in range(203)]
    batches = T.epoch_batches(lengths, 8, seed=0, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert len(batches) == T.steps_per_epoch(203, 8) and batches == T.epoch_batches(lengths, 8, seed=0, epoch=1)
    assert batches != T.epoch_batches(lengths, 8, seed=0, epoch=2)
    order = list(range(203))
    random.Random(0).shuffle(order)
    plain = [order[i : i + 8] for i in range(0, 203, 8)]
    padded = lambda bs: sum(max(lengths[i] for i in b) * len(b) for b in bs)  # noqa: E731
    assert padded(batches) < 0.8 * padded(plain)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma2"])
def test_answer_loss_is_the_models_own_loss(arch):
    from steer.sft.train import answer_loss, batch

    model, tok = make_model(arch), make_tokenizer()
    rows = [encode(tok, Pair(p["id"], p["prompt"], p["answer"]), 64) for p in PAIRS[:4]]
    b = batch(rows, tok.pad_token_id)
    with torch.no_grad():
        ours, theirs = answer_loss(model, b), model(**b).loss
        fast = answer_loss(model, b, bf16=True)
    assert torch.allclose(ours, theirs, atol=1e-5), (float(ours), float(theirs))
    assert abs(float(fast) - float(theirs)) < 0.05 * float(theirs)


def test_the_chunked_head_gives_the_whole_heads_loss_and_gradients(monkeypatch):
    from steer.sft.train import answer_loss, batch

    model, tok = make_model("qwen2"), make_tokenizer()
    b = batch([encode(tok, Pair(p["id"], p["prompt"], p["answer"]), 64) for p in PAIRS], tok.pad_token_id)

    def run(rows: int):
        monkeypatch.setattr(T, "HEAD_ROWS", rows)
        model.zero_grad()
        loss = answer_loss(model, b)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole, chunked = run(10_000), run(3)
    assert int((b["labels"][:, 1:] != IGNORE).sum()) > 3 * 4  # several chunks
    assert torch.allclose(whole[0], chunked[0], atol=1e-6)
    assert whole[1].keys() == chunked[1].keys() and len(whole[1]) > 0
    assert all(torch.allclose(whole[1][n], chunked[1][n], atol=1e-6) for n in whole[1])


def test_own_answers_replace_general_answers_and_drop_unfinished(monkeypatch):
    from steer.model.load import Loaded
    from steer.sft import own

    model, tok = make_model("qwen2"), make_tokenizer()
    eos = model.generation_config.eos_token_id or tok.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    pairs = [
        Pair("g1", "Say hi.", "written 1", kind="general"),
        Pair("s1", "Tiananmen?", "written 2", kind="sensitive"),
        Pair("g2", "Count to ten.", "written 3", kind="general"),
    ]
    seen = []

    def fake(model_, tok_, texts, spec, cache, model_id, batch_size, desc=None):
        seen.extend(texts)
        return [{"text": "Hi!", "ids": [5, eos]}, {"text": "1, 2, 3", "ids": [6] * spec.max_new_tokens}]

    monkeypatch.setattr(own, "generate_cached", fake)
    result = own.own_answers(Loaded(model, tok, "tiny", None), pairs)
    assert [p.id for p in result.pairs] == ["g1", "s1"] and (result.replaced, result.dropped) == (1, 1)
    assert result.pairs[0].answer == "Hi!" and result.pairs[1].answer == "written 2"  # other kinds untouched
    assert len(seen) == 2 and "Say hi." in seen[0] and "Count to ten." in seen[1]  # chat-templated general prompts


def test_general_answers_model_trains_on_the_models_own_answers(checkpoint, tmp_path, monkeypatch):
    from steer.sft import own

    monkeypatch.setattr(own, "OWN_TOKENS", 16)
    rows = [{**p, "kind": "general" if i % 2 else "sensitive"} for i, p in enumerate(PAIRS)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    settings = SFTSettings(**{**FAST, "epochs": 1, "general_answers": "model"})
    r = train_sft(str(checkpoint), tmp_path / "out", settings, data=path)
    assert r.own_answers["replaced"] + r.own_answers["dropped"] == 4
    assert r.train_pairs + r.val_pairs == 8 - r.own_answers["dropped"]
    written = train_sft(str(checkpoint), tmp_path / "w", SFTSettings(**{**FAST, "epochs": 1}), data=path)
    assert written.own_answers is None and written.data_sha256 != r.data_sha256  # replaced or dropped: new data
    manifest = json.loads((tmp_path / "out" / "steer_manifest.json").read_text())
    assert manifest["settings"]["general_answers"] == "model"


def test_keep_share_thins_each_refusal_group_seeded_and_leaves_the_rest():
    pairs = [Pair(f"r{i}", "q", "a", lang="en" if i < 10 else "zh", kind="refusal") for i in range(14)]
    pairs += [Pair(f"s{i}", "q", "a", lang="en", kind="sensitive") for i in range(5)]
    kept = keep_share(pairs, ("refusal", "borderline"), 0.5, seed=1)
    refusals = [p for p in kept if p.kind == "refusal"]
    assert sum(p.lang == "en" for p in refusals) == 5 and sum(p.lang == "zh" for p in refusals) == 2
    assert [p for p in kept if p.kind == "sensitive"] == pairs[14:]
    assert kept == [p for p in pairs if p in kept]  # order kept
    assert kept == keep_share(pairs, ("refusal", "borderline"), 0.5, seed=1)
    assert kept != keep_share(pairs, ("refusal", "borderline"), 0.5, seed=2)
    assert keep_share(pairs, ("refusal",), 1.0, seed=1) == pairs
    assert [p.kind for p in keep_share(pairs, ("refusal",), 0.0, seed=1)] == ["sensitive"] * 5


def _mixed(tmp_path, odd: str, even: str):
    """A tiny qwen2 checkpoint folder and PAIRS written with kind `odd` / `even` by position -> (folder, rows, file)."""
    folder = tmp_path / "tiny"
    make_model("qwen2").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    rows = [{**p, "kind": odd if i % 2 else even} for i, p in enumerate(PAIRS)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return folder, rows, path


def test_refusal_share_thins_training_pairs_only(tmp_path):
    folder, rows, path = _mixed(tmp_path, "refusal", "general")
    full = train_sft(str(folder), tmp_path / "full", SFTSettings(**{**FAST, "epochs": 1}), data=path)
    thin_settings = SFTSettings(**{**FAST, "epochs": 1, "refusal_share": 0.0})
    thin = train_sft(str(folder), tmp_path / "thin", thin_settings, data=path)
    assert thin.val_pairs == full.val_pairs and thin.train_pairs < full.train_pairs
    train, _ = split_by_concept([Pair(r["id"], "q", "a", kind=r["kind"], concept=r["concept"]) for r in rows], 0.25, 0)
    assert thin.train_pairs == sum(p.kind == "general" for p in train)
    assert thin.data_sha256 != full.data_sha256


@pytest.mark.parametrize(("kl_first", "ce_first"), [(1.0, 1.0), (5.0, 1.0), (1.0, 3.0), (5.0, 0.0)])
def test_general_kl_loss_is_zero_at_the_base_and_adds_to_the_cross_entropy_per_token(kl_first, ce_first):
    from peft import LoraConfig, get_peft_model

    from steer.sft.train import answer_loss, batch

    tok = make_tokenizer()
    model = get_peft_model(make_model("qwen2"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.eval()
    rows = [encode(tok, Pair(p["id"], p["prompt"], p["answer"]), 64) for p in PAIRS[:4]]
    row_w = [ce_first, 1.0, 1.0, 1.0]  # per row: only the first row's first position is weighted
    kl_rows = [dataclasses.replace(r, distill=i % 2 == 1, ce_first=row_w[i]) for i, r in enumerate(rows)]
    b = batch(kl_rows, tok.pad_token_id)
    only = batch([r for r in kl_rows if r.distill], tok.pad_token_id)
    with torch.no_grad():
        assert float(answer_loss(model, only)) < 1e-6  # a fresh adapter (B = 0) is the base model
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
        got = answer_loss(model, b, kl_first=kl_first)
        plain = batch([r for r in kl_rows if not r.distill], tok.pad_token_id)
        got_plain = answer_loss(model, plain)
        plain_logits = model(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits[:, :-1]
        # by hand: cross-entropy on the plain rows' answer tokens, KL(base || model) on the others' (the first answer
        # position weighted kl_first in the KL, ce_first in the cross-entropy), over all tokens
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        with model.disable_adapter():
            ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
    targets, keep = b["labels"][:, 1:], b["labels"][:, 1:] != IGNORE
    lp, lr = torch.log_softmax(logits, -1), torch.log_softmax(ref, -1)
    kl = (lr.exp() * (lr - lp)).sum(-1)
    ce = -lp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    rows_kl = b["distill"][:, None].expand_as(keep)
    first = torch.zeros_like(keep)
    for i in range(keep.shape[0]):
        first[i, int(keep[i].nonzero()[0])] = True
    ce_w = torch.tensor(row_w)[:, None].expand_as(first)
    kl, ce = kl * torch.where(first, kl_first, 1.0), ce * torch.where(first, ce_w, 1.0)
    want = (ce[keep & ~rows_kl].sum() + kl[keep & rows_kl].sum()) / keep.sum()
    assert float(kl[keep & rows_kl].sum()) > 1e-3 and torch.allclose(got, want, atol=1e-5), (float(got), float(want))
    # a batch without KL rows: the weighted cross-entropy alone, over its answer tokens
    pk, pt = plain["labels"][:, 1:] != IGNORE, plain["labels"][:, 1:]
    pce = -torch.log_softmax(plain_logits.float(), -1).gather(-1, pt.clamp(min=0)[..., None])[..., 0]
    pfirst = pk & (pk.cumsum(1) == 1)
    pw = torch.tensor(row_w[::2])[:, None].expand_as(pfirst)  # the plain batch holds rows 0 and 2
    want_plain = (pce * torch.where(pfirst, pw, 1.0))[pk].sum() / pk.sum()
    assert torch.allclose(got_plain, want_plain, atol=1e-5), (float(got_plain), float(want_plain))


def test_general_loss_kl_marks_only_the_general_training_rows_and_trains(tmp_path, monkeypatch):
    folder, rows, path = _mixed(tmp_path, "general", "sensitive")
    kl_settings = SFTSettings(**{**FAST, "epochs": 1, "general_loss": "kl"})
    ce = train_sft(str(folder), tmp_path / "ce", SFTSettings(**{**FAST, "epochs": 1}), data=path)
    kl = train_sft(str(folder), tmp_path / "kl", kl_settings, data=path)
    assert kl.steps == ce.steps and kl.cost["tokens"]["forward"] > ce.cost["tokens"]["forward"]  # the base's pass
    assert checkpoint_hash(tmp_path / "kl") != checkpoint_hash(tmp_path / "ce")
    seen = {}
    monkeypatch.setattr(sft_run, "_fit", lambda model, tr, va, *a: seen.update(train=tr, val=va) or T.Progress())
    train_sft(str(folder), tmp_path / "spy", kl_settings, data=path)  # the spy trains nothing: the rows matter here
    general = {r["id"] for r in rows if r["kind"] == "general"}
    assert {r.id for r in seen["train"] if r.distill} == {r.id for r in seen["train"]} & general
    assert {r.id for r in seen["train"]} & general and not any(r.distill for r in seen["val"])


def test_ce_first_kinds_weights_only_the_named_kinds_training_rows(tmp_path, monkeypatch):
    folder, rows, path = _mixed(tmp_path, "general", "sensitive")
    seen = {}
    monkeypatch.setattr(sft_run, "_fit", lambda model, tr, va, *a: seen.update(train=tr, val=va) or T.Progress())
    settings = SFTSettings(**{**FAST, "epochs": 1, "ce_first_weight": 4.0, "ce_first_kinds": "sensitive"})
    train_sft(str(folder), tmp_path / "spy", settings, data=path)
    sensitive = {r["id"] for r in rows if r["kind"] == "sensitive"}
    assert {r.id for r in seen["train"] if r.ce_first == 4.0} == {r.id for r in seen["train"]} & sensitive
    assert {r.id for r in seen["train"] if r.ce_first == 1.0} == {r.id for r in seen["train"]} - sensitive
    assert {r.ce_first for r in seen["val"]} == {1.0}  # validation loss stays unweighted
    typo = SFTSettings(**{**FAST, "ce_first_weight": 4.0, "ce_first_kinds": "sensitve"})
    with pytest.raises(SteerError, match="no training pair of kind sensitve"):
        train_sft(str(folder), tmp_path / "typo", typo, data=path)
    with pytest.raises(SteerError, match="no kind named"):
        train_sft(str(folder), tmp_path / "none", SFTSettings(**{**FAST, "ce_first_kinds": " , "}), data=path)
    assert not (tmp_path / "typo").exists() and not (tmp_path / "none").exists()
