import json
from dataclasses import replace

import pytest
import torch
from conftest import PROMPTS, make_model

from steer.checkpoint.save import save_checkpoint
from steer.errors import SteerError
from steer.model import load
from steer.model.collect import batched_last_logits
from steer.model.load import checkpoint_hash, load_model
from steer.prompts import chat_texts


@pytest.fixture
def checkpoint(tmp_path, tokenizer):
    model = make_model("qwen2")
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    return tmp_path / "ckpt", model


def test_round_trip(checkpoint, tokenizer):
    folder, model = checkpoint
    loaded = load_model(str(folder))
    texts = chat_texts(tokenizer, PROMPTS)
    assert (folder / "generation_config.json").is_file() and (folder / "tokenizer_config.json").is_file()
    torch.testing.assert_close(
        batched_last_logits(loaded.model, loaded.tokenizer, texts), batched_last_logits(model, tokenizer, texts)
    )
    assert loaded.tokenizer.padding_side == "left"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3])
def test_the_head_reads_a_dense_input_with_logits_to_keep(checkpoint, tokenizer, dtype, rows):
    """logits_to_keep hands the head a strided slice (for one row, [1, k, d] with strides (T·d, d, 1), which
    `is_contiguous()` accepts); a loaded model's head gets dense row-major strides (a bfloat16 head whose weight needs
    no grad is hundreds of times slower otherwise), with the same logits."""
    folder, model = checkpoint
    loaded = load_model(str(folder), dtype=dtype)
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    seen = []
    head = loaded.model.get_output_embeddings()
    head.register_forward_pre_hook(lambda m, args: seen.append(args[0].stride() == load.dense_strides(args[0].shape)))
    batch = tokenizer(chat_texts(tokenizer, PROMPTS[:rows]), return_tensors="pt", padding=True)
    with torch.no_grad():
        got = loaded.model(**batch, logits_to_keep=1).logits
        want = loaded.model(**batch).logits[:, -1:]
    assert seen == [True, True]
    torch.testing.assert_close(got, want)  # one row vs all rows of a matmul: float rounding may differ


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["FooForCausalLM"]}))
    with pytest.raises(SteerError, match="unsupported architecture 'FooForCausalLM'; supported: .*Qwen2ForCausalLM"):
        load_model(str(tmp_path))


def test_missing_and_not_a_checkpoint(tmp_path):
    with pytest.raises(SteerError, match="no such model folder"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(SteerError, match="config.json is missing"):
        load_model(str(tmp_path))
    with pytest.raises(SteerError, match="no such GGUF file"):
        load_model(str(tmp_path / "m.gguf"))


def test_truncated_weights(checkpoint):
    folder, _ = checkpoint
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(SteerError, match="truncated safetensors file"):
        load_model(str(folder))
    weights.write_bytes(b"\x05\x00")
    with pytest.raises(SteerError, match="corrupt safetensors file"):
        load_model(str(folder))


def test_index_names_missing_shard(checkpoint):
    folder, _ = checkpoint
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(SteerError, match="names a missing shard: model-00002-of-00002.safetensors"):
        load_model(str(folder))


def test_checkpoint_hash_changes_with_weights(checkpoint, tmp_path, tokenizer):
    folder, model = checkpoint
    h = checkpoint_hash(folder)
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1
    save_checkpoint(model, tokenizer, tmp_path / "other")
    assert checkpoint_hash(tmp_path / "other") != h and checkpoint_hash(folder) == h


@pytest.mark.parametrize("spec, extra", [(None, "demo"), ("embedded-0.5b", "demo"), ("embedded-1.5b", "demo-1-5b")])
def test_embedded_without_its_extra_says_how_to_install(tmp_path, monkeypatch, spec, extra):
    monkeypatch.setenv("STEER_CACHE", str(tmp_path))
    missing = {k: replace(e, packages=("steer_no_such_chunk_package",)) for k, e in load.EMBEDDED.items()}
    monkeypatch.setattr(load, "EMBEDDED", missing)
    with pytest.raises(SteerError, match=rf"not installed .*pip install 'steer\[{extra}\]'"):
        load_model(spec)


def test_embedded_names_resolve_and_a_folder_of_that_name_wins(tmp_path, monkeypatch):
    assert load.embedded_model(None) is load.EMBEDDED["embedded-0.5b"] is load.embedded_model("embedded")
    assert load.embedded_model("embedded:qwen2.5-coder-1.5b-instruct") is load.EMBEDDED["embedded-1.5b"]
    assert load.embedded_model("runs/x") is None
    with pytest.raises(SteerError, match="unknown embedded model 'embedded:nope'"):
        load.embedded_model("embedded:nope")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "embedded-1.5b").mkdir()
    assert load.embedded_model("embedded-1.5b") is None


def test_corrupt_embedded_chunks_are_refused(tmp_path, monkeypatch):
    part = tmp_path / "part01.bin"
    part.write_bytes(b"not a model")
    with pytest.raises(SteerError, match="embedded model chunks are corrupt: sha256 .* reinstall with: pip install"):
        load._assemble([part], tmp_path / "model.gguf", load.EMBEDDED["embedded-1.5b"])


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(SteerError, match="cannot read GGUF file .*model.gguf"):
        load_model(str(bad))


def test_unreachable_hub_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SteerError, match="cannot fetch 'nobody/no-such-model' from the Hugging Face hub"):
        load_model("nobody/no-such-model")


@pytest.fixture
def fake_chunks(tmp_path, monkeypatch, tokenizer):
    """A tiny model exported to GGUF and cut into three chunk 'packages' (modules with get_part_path), declared as
    embedded-1.5b: the loader path of the real 1.5B without its 1.1 GB."""
    import hashlib
    import sys
    import types

    from steer.checkpoint.gguf_io import export_gguf

    model = make_model("qwen2")
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    export_gguf(tmp_path / "ckpt", tmp_path / "whole.gguf", "f32")
    data = (tmp_path / "whole.gguf").read_bytes()
    names, cut = [], len(data) // 3
    for i, chunk in enumerate((data[:cut], data[cut : 2 * cut], data[2 * cut :])):
        part = tmp_path / f"part{i}.bin"
        part.write_bytes(chunk)
        mod = types.ModuleType(f"steer_fake_chunk_{i}")
        mod.get_part_path = lambda part=part: str(part)
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        names.append(mod.__name__)
    fake = load.Embedded("tiny-chunked", tuple(names), hashlib.sha256(data).hexdigest(), len(data), "demo-1-5b")
    monkeypatch.setattr(load, "EMBEDDED", {**load.EMBEDDED, "embedded-1.5b": fake})
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache"))
    return model, [tmp_path / f"part{i}.bin" for i in range(3)]


def test_embedded_chunks_assemble_check_and_load(fake_chunks, tokenizer):
    model, _ = fake_chunks
    loaded = load_model("embedded-1.5b")
    assert loaded.source == "embedded:tiny-chunked" and loaded.path.name == "tiny-chunked"
    texts = chat_texts(tokenizer, PROMPTS)
    got, want = batched_last_logits(loaded.model, loaded.tokenizer, texts), batched_last_logits(model, tokenizer, texts)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("damage, error", [("flip", "chunks are corrupt: sha256"), ("delete", "chunk file missing")])
def test_damaged_chunk_sets_fail_with_one_line_and_cache_nothing(fake_chunks, tmp_path, damage, error):
    part = fake_chunks[1][1]
    if damage == "flip":
        raw = bytearray(part.read_bytes())
        raw[7] ^= 0xFF
        part.write_bytes(bytes(raw))
    else:
        part.unlink()
    with pytest.raises(SteerError, match=rf"{error}.*pip install 'steer\[demo-1-5b\]'") as info:
        load_model("embedded-1.5b")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache" / "tiny-chunked").exists()
