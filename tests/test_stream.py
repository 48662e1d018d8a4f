"""The streaming editor writes what the in-memory edit + save_pretrained writes, without loading the model."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import transformers
from conftest import ARCHS, MOE_CONFIGS, PROMPTS, make_model
from safetensors.torch import load_file, save_file

from steer.checkpoint.stream import edit_checkpoint
from steer.cli.main import main
from steer.edit.project import Profile, orthogonalize
from steer.errors import SteerError
from steer.model.load import checkpoint_hash, weight_files

MANTISSA = {torch.float32: 24, torch.bfloat16: 8, torch.float16: 11}


def _save(model, tokenizer, folder: Path, shard: str | None = None) -> Path:
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    tokenizer.save_pretrained(folder)
    return folder


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in weight_files(folder) for k, v in load_file(f).items()}


def _assert_close_ulp(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    """Equal, or within 1 ulp of the storage dtype (different float summation orders)."""
    assert a.dtype == b.dtype and a.shape == b.shape, name
    if torch.equal(a, b):
        return
    x, y = a.double(), b.double()
    _, exp = torch.frexp(torch.maximum(x.abs(), y.abs()))
    ulp = torch.ldexp(torch.ones_like(x), exp - MANTISSA[a.dtype])
    assert ((x - y).abs() <= ulp).all(), f"{name}: differs by more than 1 ulp"


def _in_memory(src: Path, dtype: torch.dtype, directions: torch.Tensor, out: Path, **options) -> torch.nn.Module:
    """The reference: load in the checkpoint's dtype, orthogonalize, save_pretrained."""
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
    orthogonalize(model, directions, **options)
    model.save_pretrained(out)
    return model


def _check_equal(out: Path, ref: Path) -> None:
    got, want = _tensors(out), _tensors(ref)
    assert set(got) == set(want)
    for name in want:
        _assert_close_ulp(got[name], want[name], name)


def _directions(model, k: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(k, model.config.hidden_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_streaming_equals_in_memory_edit_float32(arch, tokenizer, tmp_path):
    model = make_model(arch)
    src = _save(model, tokenizer, tmp_path / "in")
    before = _tree_hashes(src)
    r = _directions(model)
    stats = edit_checkpoint(src, tmp_path / "out", r, hashes=True)
    assert _tree_hashes(src) == before  # input untouched
    _in_memory(src, torch.float32, r, tmp_path / "ref")
    _check_equal(tmp_path / "out", tmp_path / "ref")
    n_writers = 2 * model.config.num_hidden_layers + (
        model.config.num_hidden_layers if arch == "llama" else 0
    )  # o_proj bias
    assert stats["tensors_edited"] == 1 + n_writers
    manifest = json.loads((tmp_path / "out" / "steer_manifest.json").read_text())
    assert manifest["input"]["sha256"] == checkpoint_hash(src)
    assert manifest["output_sha256"] == checkpoint_hash(tmp_path / "out")
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "out" / name).is_file()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    if model.config.tie_word_embeddings:  # gemma: lm_head is the original embedding, so the readout is unchanged
        original = load_file(src / "model.safetensors")["model.embed_tokens.weight"]
        assert torch.equal(_tensors(tmp_path / "out")["lm_head.weight"], original)


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sharded", [False, True])
def test_streaming_equals_in_memory_edit_low_precision(arch, dtype, sharded, tokenizer, tmp_path):
    model = make_model(arch).to(dtype)
    src = _save(model, tokenizer, tmp_path / "in", "60KB" if sharded else None)
    assert (src / "model.safetensors.index.json").is_file() == sharded
    r = _directions(model, k=3)
    options = {
        "profiles": {"attn": Profile(peak=1.0, center=1.0, width=1.5, floor=0.2), "mlp": Profile(peak=0.8)},
        "embed": 0.5,
        "preserve_norm": True,
    }
    stats = edit_checkpoint(src, tmp_path / "out", r, **options)
    # memory: two buffers, the larger one the size of the largest edited tensor (the embedding), never a whole shard
    embed = model.config.vocab_size * model.config.hidden_size * 2
    assert embed <= stats["buffer_bytes"] < 2 * embed
    _in_memory(src, dtype, r, tmp_path / "ref", **options)
    _check_equal(tmp_path / "out", tmp_path / "ref")
    assert [f.name for f in weight_files(tmp_path / "out")] == [f.name for f in weight_files(src)]  # same shard layout
    if sharded:
        index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
        out = _tensors(tmp_path / "out")
        assert set(index["weight_map"]) == set(out)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in out.values())


@pytest.mark.parametrize("arch,dtype", [("qwen2", torch.bfloat16), ("llama", torch.float32), ("phi3", torch.float16)])
def test_readout_streams_like_the_in_memory_bake(arch, dtype, tokenizer, tmp_path):
    """A learned readout (W <- W + r a^T after the projection) written shard by shard equals
    orthogonalize + readout.bake in memory; a readout vector for a writer the checkpoint lacks,
    or of the wrong size, is one clear error."""
    from steer.edit.rank1 import bake, zeros

    model = make_model(arch).to(dtype)
    src = _save(model, tokenizer, tmp_path / "in", "60KB")
    basis = _directions(model, k=2)
    g = torch.Generator().manual_seed(5)
    readout = {k: torch.randn(a.shape, generator=g) * 0.05 for k, a in zeros(model).items()}
    r = basis[0] / basis[0].norm()
    options = {"profiles": {"attn": Profile(peak=0.9), "mlp": Profile(peak=1.1, center=1.0, width=1.0)}, "embed": 0.7}
    stats = edit_checkpoint(src, tmp_path / "out", basis, readout=(r, readout), **options)
    ref = _in_memory(src, dtype, basis, tmp_path / "plain", **options)
    bake(ref, r, readout)
    ref.save_pretrained(tmp_path / "ref")
    _check_equal(tmp_path / "out", tmp_path / "ref")
    assert not torch.equal(
        _tensors(tmp_path / "out")["model.layers.0.mlp.down_proj.weight"],
        _tensors(tmp_path / "plain")["model.layers.0.mlp.down_proj.weight"],
    )  # the readout was added
    assert stats["tensors_edited"] >= len(readout)
    with pytest.raises(SteerError, match="readout has a vector for writer 9.mlp"):
        edit_checkpoint(src, tmp_path / "bad", basis, readout=(r, {**readout, "9.mlp": readout["0.mlp"]}))
    with pytest.raises(SteerError, match="readout vector for 0.attn has shape"):
        edit_checkpoint(src, tmp_path / "bad", basis, readout=(r, {**readout, "0.attn": torch.zeros(3)}))
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("arch", list(MOE_CONFIGS))
@pytest.mark.parametrize("layout", ["per_expert", "fused"])
def test_mixture_of_experts_both_layouts(arch, layout, tokenizer, tmp_path):
    """save_pretrained writes per-expert matrices (mlp.experts.{j}.down_proj.weight, Mixtral's
    block_sparse_moe.experts.{j}.w2.weight); a fused checkpoint holds [E, d_model, d_ff]."""
    model = make_model(arch)
    src = tmp_path / "in"
    if layout == "fused":
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(src)
        tokenizer.save_pretrained(src)
        tied = model.config.tie_word_embeddings  # a tied lm_head is not in the checkpoint
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
        save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
        assert load_file(src / "model.safetensors")["model.layers.0.mlp.experts.down_proj"].dim() == 3
    else:
        _save(model, tokenizer, src)
    r = _directions(model)
    stats = edit_checkpoint(src, tmp_path / "out", r)
    ref = _in_memory(src, torch.float32, r, tmp_path / "ref")
    got = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    want = ref.state_dict()
    assert set(got.state_dict()) == set(want)
    for name, t in got.state_dict().items():
        _assert_close_ulp(t, want[name], name)
    ids = tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(got(**ids).logits, ref.eval()(**ids).logits, rtol=0, atol=1e-6)
    names = set(_tensors(tmp_path / "out"))  # the input's layout is kept
    assert names - {"lm_head.weight"} == set(_tensors(src)) - {"lm_head.weight"}
    # embedding, o_proj per layer, and every MLP writer: experts (fused or each), shared expert, dense layers
    mlp_writers = [n for n in names if n.endswith(("experts.down_proj", "down_proj.weight", ".w2.weight"))]
    assert stats["tensors_edited"] == 1 + model.config.num_hidden_layers + len(mlp_writers)


@pytest.mark.parametrize("arch,dtype,shard", [("qwen2", torch.bfloat16, "60KB"), ("gemma2", torch.float32, None)])
def test_output_loads_and_gives_the_in_memory_logits(arch, dtype, shard, tokenizer, tmp_path):
    model = make_model(arch).to(dtype)
    src = _save(model, tokenizer, tmp_path / "in", shard)
    r = _directions(model)
    edit_checkpoint(src, tmp_path / "out", r)
    ref = _in_memory(src, dtype, r, tmp_path / "ref").eval()
    got = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert got.dtype == dtype and got.config.tie_word_embeddings is False
    ids = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b, base = got(**ids).logits, ref(**ids).logits, model.eval()(**ids).logits
    assert torch.equal(a, b) or (a.float() - b.float()).abs().max() < 1e-5
    assert (a.float() - base.float()).abs().max() > 1e-3  # the edit did something


def test_gguf_input_becomes_float32_safetensors_shards(tokenizer, tmp_path):
    from steer.checkpoint.gguf_io import export_gguf

    model = make_model("qwen2")
    model.config.tie_word_embeddings = True  # a GGUF without output.weight: the tied path
    model.tie_weights()
    src = _save(model, tokenizer, tmp_path / "hf")
    export_gguf(src, tmp_path / "m.gguf", "f32")
    r = _directions(model)
    stats = edit_checkpoint(tmp_path / "m.gguf", tmp_path / "out", r, shard_bytes=100_000, hashes=True)
    assert stats["shards"] > 1 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    orthogonalize(ref, r)
    got = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert got.dtype == torch.float32 and got.config.tie_word_embeddings is False
    want = ref.state_dict()
    for name, t in got.state_dict().items():
        _assert_close_ulp(t, want[name], name)
    manifest = json.loads((tmp_path / "out" / "steer_manifest.json").read_text())
    assert manifest["input"]["sha256"] == hashlib.sha256((tmp_path / "m.gguf").read_bytes()).hexdigest()


def test_fused_experts_with_d_model_last(tmp_path, monkeypatch):
    """A fused [E, d_ff, d_model] layout (x @ W experts, d_model_axis=1): each expert slice is
    edited on side "in", so no expert writes along r; other tensors are copied verbatim."""
    from steer.model import adapters

    writer = adapters.Writer("mlp.experts", "mlp", param="down_proj", fused=True, d_model_axis=1)
    monkeypatch.setitem(
        adapters.ADAPTERS, "XWForCausalLM", adapters.Adapter("model.layers", "model.embed_tokens", "lm_head", (writer,))
    )
    src = tmp_path / "in"
    src.mkdir()
    (src / "config.json").write_text(
        json.dumps({"architectures": ["XWForCausalLM"], "num_hidden_layers": 2, "tie_word_embeddings": False})
    )
    g = torch.Generator().manual_seed(0)
    tensors = {
        "model.embed_tokens.weight": torch.randn(50, 16, generator=g),
        "lm_head.weight": torch.randn(50, 16, generator=g),
        **{
            f"model.layers.{i}.mlp.experts.down_proj": torch.randn(3, 24, 16, generator=g).to(torch.bfloat16)
            for i in range(2)
        },
        "model.layers.0.mlp.experts.gate_up_proj": torch.randn(3, 16, 48, generator=g),
    }
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    r = torch.randn(16, generator=g)
    stats = edit_checkpoint(src, tmp_path / "out", r)
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert stats["tensors_edited"] == 3
    unit = r / r.norm()
    for i in range(2):
        w = out[f"model.layers.{i}.mlp.experts.down_proj"]
        assert w.dtype == torch.bfloat16 and (w.float() @ unit).abs().max() < 0.02  # bf16 rounding
        assert (tensors[f"model.layers.{i}.mlp.experts.down_proj"].float() @ unit).abs().max() > 0.5
    for name in ("lm_head.weight", "model.layers.0.mlp.experts.gate_up_proj"):
        assert torch.equal(out[name], tensors[name])


# --------------------------------------------------------------------------------- bad input


@pytest.fixture
def sharded(tokenizer, tmp_path):
    return _save(make_model("qwen2"), tokenizer, tmp_path / "in", "60KB")


def _fails(message: str, src: Path, out: Path, directions: torch.Tensor | None = None, existed: bool = False) -> None:
    """A one-line SteerError; no output folder (unless it existed) and no temporary folder left."""
    with pytest.raises(SteerError, match=message) as exc:
        edit_checkpoint(src, out, torch.randn(1, 64) if directions is None else directions)
    assert "\n" not in str(exc.value)
    assert out.exists() == existed
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_truncated_shard(sharded, tmp_path):
    shard = weight_files(sharded)[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    _fails("truncated safetensors file", sharded, tmp_path / "out")


def test_index_naming_a_missing_shard(sharded, tmp_path):
    weight_files(sharded)[0].unlink()
    _fails("names a missing shard", sharded, tmp_path / "out")


def test_hidden_size_mismatch(sharded, tmp_path):
    _fails("hidden size 32, model has 64", sharded, tmp_path / "out", torch.randn(1, 32))


def test_existing_output_without_force(sharded, tmp_path):
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("x")
    _fails("already exists", sharded, tmp_path / "exists", existed=True)
    assert (tmp_path / "exists" / "keep.txt").read_text() == "x"
    edit_checkpoint(sharded, tmp_path / "exists", torch.randn(1, 64), force=True)
    assert not (tmp_path / "exists" / "keep.txt").exists() and (tmp_path / "exists" / "config.json").is_file()


def test_read_only_output_location(sharded, tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: use a file system that refuses
        out = Path("/proc/steer-test-output")
        with pytest.raises(SteerError) as exc:
            edit_checkpoint(sharded, out, torch.randn(1, 64))
        assert "\n" not in str(exc.value) and not out.exists()
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        _fails("not writable", sharded, locked / "out")
    finally:
        locked.chmod(0o755)


def test_failure_while_writing_leaves_nothing(sharded, tmp_path, monkeypatch):
    from steer.checkpoint import stream

    calls = []

    def full(fd, buf, offset):
        calls.append(offset)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return real(fd, buf, offset)

    real = stream.pwrite_all
    monkeypatch.setattr(stream, "pwrite_all", full)
    _fails("No space left on device", sharded, tmp_path / "out")


def test_unsupported_architecture(sharded, tmp_path):
    config = json.loads((sharded / "config.json").read_text())
    (sharded / "config.json").write_text(json.dumps({**config, "architectures": ["FancyForCausalLM"]}))
    _fails("unsupported architecture 'FancyForCausalLM'; supported: .*MixtralForCausalLM", sharded, tmp_path / "out")


# ------------------------------------------------------------------------------------ the CLI


def test_cli_rebuilds_a_targeted_edit_from_contrasts_without_loading(tokenizer, tmp_path):
    from steer.targeted.contrasts import Contrasts, rebuild
    from steer.targeted.search import EditParams

    model = make_model("gemma2")
    src = _save(model, tokenizer, tmp_path / "in")
    g = torch.Generator().manual_seed(3)
    t = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    L, P, d = model.config.num_hidden_layers, 2, model.config.hidden_size
    params = EditParams(
        index=1.25,
        position=-1,
        k=2,
        attn=Profile(peak=1.2, center=1.0, width=1.0, floor=0.3),
        embed=0.4,
        preserve_norm=True,
    )
    Contrasts(t(L, P, d), t(L, P, d), t(L, P, d), t(L, P, d), t(L, P, 2, d)).save(
        tmp_path / "contrasts.safetensors", {"chosen": params.to_dict(), "keep_safety": True}
    )
    assert (
        main(
            ["edit", str(src), "--directions", str(tmp_path / "contrasts.safetensors"), "--out", str(tmp_path / "out")]
        )
        == 0
    )
    ref = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    assert rebuild(ref, tmp_path / "contrasts.safetensors") == params
    ref.save_pretrained(tmp_path / "ref")
    _check_equal(tmp_path / "out", tmp_path / "ref")
    manifest = json.loads((tmp_path / "out" / "steer_manifest.json").read_text())
    assert (
        manifest["edit"] == params.to_dict()
        and manifest["output_sha256"] is None
        and manifest["input"]["sha256"] is None
    )


def test_cli_streams_the_embedded_model_byte_identically(tokenizer, tmp_path, monkeypatch):
    """Without CHECKPOINT the embedded model's cached checkpoint is streamed: the weights are
    byte for byte what loading it, orthogonalizing and save_pretrained give."""
    from steer.locate.directions import DirectionSet
    from steer.model import load

    model = make_model("qwen2")
    model.config.tie_word_embeddings = True  # like Qwen2.5-0.5B
    model.tie_weights()
    cache = _save(model, tokenizer, tmp_path / "cache")
    monkeypatch.setattr(load, "embedded_checkpoint", lambda spec=None: cache)
    d = torch.randn(3, 2, model.config.hidden_size, dtype=torch.float64)
    DirectionSet(d, d, d, {"selected": {"layer": 1, "position": -1}}).save(tmp_path / "dirs.safetensors")
    assert main(["edit", "--directions", str(tmp_path / "dirs.safetensors"), "--out", str(tmp_path / "out")]) == 0
    loaded = load.load_model(None)
    orthogonalize(loaded.model, DirectionSet.load(tmp_path / "dirs.safetensors").vector())
    loaded.model.save_pretrained(tmp_path / "ref")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        tmp_path / "ref" / "model.safetensors"
    ).read_bytes()
    manifest = json.loads((tmp_path / "out" / "steer_manifest.json").read_text())
    assert manifest["input"]["model"].startswith("embedded:") and manifest["direction"]["layer"] == 1


def test_cli_hub_id_is_edited_in_memory_like_the_stream(tokenizer, tmp_path, monkeypatch):
    """A hub id is downloaded and edited in memory (no local folder to stream): same weights."""
    from steer.locate.directions import DirectionSet
    from steer.model import load

    src = _save(make_model("llama"), tokenizer, tmp_path / "in")
    monkeypatch.setattr(
        load,
        "load_model",
        lambda spec, dtype=torch.float32: load.Loaded(
            transformers.AutoModelForCausalLM.from_pretrained(src), tokenizer, spec, src
        ),
    )
    d = torch.randn(3, 2, 64, dtype=torch.float64)
    DirectionSet(d, d, d, {"selected": {"layer": 2, "position": -2}}).save(tmp_path / "dirs.safetensors")
    for name, model in (("hub", "org/tiny-llama"), ("stream", str(src))):
        assert (
            main(
                [
                    "edit",
                    model,
                    "--directions",
                    str(tmp_path / "dirs.safetensors"),
                    "--out",
                    str(tmp_path / name),
                    "--hash",
                ]
            )
            == 0
        )
    _check_equal(tmp_path / "hub", tmp_path / "stream")
    manifest = json.loads((tmp_path / "hub" / "steer_manifest.json").read_text())
    assert manifest["input"] == {"model": "org/tiny-llama", "sha256": checkpoint_hash(src)}
    assert manifest["direction"]["layer"] == 2 and manifest["direction"]["position"] == -2
