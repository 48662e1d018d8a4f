"""steer verify: rebuild a checkpoint from its manifest and compare every tensor."""

import json
from pathlib import Path

import pytest
import torch
import transformers
from conftest import COMMON, make_model
from safetensors.torch import load_file, save_file

from steer.checkpoint.verify import VerifyResult, verify
from steer.cli.main import main
from steer.errors import SteerError
from steer.locate.directions import DirectionSet
from steer.model import load
from steer.model.load import checkpoint_hash, weight_files


def _save(model, tokenizer, folder: Path, shard: str | None = None) -> Path:
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    tokenizer.save_pretrained(folder)
    return folder


def _directions(path: Path, d_model: int = 64, layer: int = 1) -> Path:
    d = torch.randn(3, 2, d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    DirectionSet(d, d, d, {"selected": {"layer": layer, "position": -1}}).save(path)
    return path


def _change(folder: Path, name: str, fn) -> None:
    """Rewrite one tensor of a saved checkpoint (as if someone edited the file afterwards)."""
    f = next(f for f in weight_files(folder) if name in load_file(f))
    tensors = load_file(f)
    tensors[name] = fn(tensors[name]).contiguous()
    save_file(tensors, str(f), metadata={"format": "pt"})


def _hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture
def edited(tokenizer, tmp_path):
    """`steer edit --hash` of a sharded bfloat16 qwen2 with a saved direction: (input, output)."""
    src = _save(make_model("qwen2").to(torch.bfloat16), tokenizer, tmp_path / "in", "60KB")
    dirs = _directions(tmp_path / "dirs.safetensors")
    assert main(["edit", str(src), "--directions", str(dirs), "--out", str(tmp_path / "out"), "--hash"]) == 0
    return src, tmp_path / "out"


def test_streamed_edit_verifies_bit_identical(edited, tmp_path):
    src, out = edited
    r = verify(out)
    assert isinstance(r, VerifyResult) and r.ok
    assert r.status == "bit-identical" and r.outside == [] and r.worst is None
    assert r.tensors == len(r.max_abs) == sum(len(load_file(f)) for f in weight_files(out))
    assert set(r.max_abs.values()) == {0.0} and set(r.max_ulps.values()) == {0.0}
    assert r.output_sha256 == "match" and r.input_sha256 == "match"
    assert r.rebuilt_from == str(src) and "layer 1, position -1" in r.edit
    text = r.summary()
    assert "\n" not in text and "bit-identical" in text and "bit for bit" in text and "match the manifest" in text
    assert _hidden(tmp_path) == []  # the rebuild's temporary folder is gone


def test_bf16_rounding_difference_is_within_tolerance(edited):
    """One bfloat16 step (an ulp: 2^-7 relative) on one element: a different summation order's
    rounding, not a different edit. The sha256 no longer matches the manifest's."""
    _, out = edited
    name = "model.layers.1.mlp.down_proj.weight"

    def one_ulp(t):
        t = t.clone()
        t.view(torch.int16).view(-1)[5] += 1  # the neighbouring bfloat16 value
        return t

    _change(out, name, one_ulp)
    r = verify(out)
    assert r.status == "within-tolerance" and r.ok and r.outside == []
    assert 0.5 <= r.max_ulps[name] <= 1.0 and r.max_abs[name] > 0
    assert [n for n, d in r.max_abs.items() if d] == [name]
    assert r.output_sha256 == "mismatch" and "NOT match" in r.summary()
    assert "within-tolerance" in r.summary() and name in r.summary()


def test_real_difference_differs_and_names_the_tensor(edited):
    """A change the size of an edit difference (1e-3 on one weight: half a bf16 step at 0.25,
    many steps at the small weights) is outside the tolerance."""
    _, out = edited
    name = "model.layers.2.self_attn.o_proj.weight"
    big = "model.layers.0.mlp.down_proj.weight"
    _change(out, name, lambda t: t + torch.where(t.abs() < 0.01, 1e-3, 0.0).to(t.dtype))
    _change(out, big, lambda t: t + 3 * t.abs().max() / 128)  # also off everywhere by 3 steps of its largest value
    r = verify(out)
    assert r.status == "differs" and not r.ok
    assert set(r.outside) == {name, big} and r.worst in r.outside
    assert r.max_ulps[name] > 10
    assert "differs" in r.summary() and r.worst in r.summary()
    r = verify(out, atol=1.0)  # a plain absolute bound, stated
    assert r.status == "within-tolerance" and r.tolerance == "max abs difference <= 1"


def test_another_direction_differs(edited, tmp_path):
    """The manifest's layer decides the direction: pointing it at another layer rebuilds another edit."""
    _, out = edited
    manifest = json.loads((out / "steer_manifest.json").read_text())
    manifest["direction"]["layer"] = 2
    (out / "steer_manifest.json").write_text(json.dumps(manifest))
    r = verify(out)
    assert r.status == "differs" and len(r.outside) > 3


@pytest.mark.parametrize("disk_dtype", [torch.float32, torch.bfloat16])
def test_in_memory_abliterate_output_verifies(disk_dtype, tokenizer, tmp_path, monkeypatch):
    """`steer abliterate` edits in memory (float32) and saves the checkpoint with directions.safetensors
    beside it; the streaming rebuild from the embedded checkpoint matches within 1 ulp (a bfloat16
    input edited in float32 is compared at bfloat16's step)."""
    model = make_model("qwen2").to(disk_dtype)
    model.config.tie_word_embeddings = True  # like Qwen2.5-0.5B
    model.tie_weights()
    cache = _save(model, tokenizer, tmp_path / "cache")
    monkeypatch.setattr(load, "embedded_checkpoint", lambda spec=None: cache)
    out = tmp_path / "run"
    out.mkdir()
    dirs = DirectionSet.load(_directions(out / "directions.safetensors"))
    from steer.edit.project import orthogonalize

    edit = transformers.AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
    orthogonalize(edit, dirs.vector())
    _save(edit, tokenizer, out)
    (out / "steer_manifest.json").write_text(
        json.dumps(
            {
                "input": {"model": f"embedded:{load.EMBEDDED_NAME}", "sha256": checkpoint_hash(cache)},
                "direction": {"layer": 1, "position": -1},
                "output_sha256": checkpoint_hash(out),
            }
        )
    )
    r = verify(out)
    assert r.ok and r.output_sha256 == "match" and r.input_sha256 == "match", r.summary()
    assert r.rebuilt_from == f"embedded:{load.EMBEDDED_NAME}"
    if disk_dtype == torch.bfloat16:
        assert r.status == "within-tolerance" and max(r.max_ulps.values()) <= 1.0


def test_keep_safety_edit_with_readout_verifies(tokenizer, tmp_path):
    """A --keep-safety run: the contrasts file in the folder records the edit (subspace, profiles,
    norm preservation) and the readout; the rebuild applies all of them."""
    from steer.edit.project import Profile
    from steer.targeted.contrasts import Contrasts, rebuild
    from steer.targeted.readout import zeros
    from steer.targeted.search import EditParams

    model = make_model("llama")
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
    readout = {k: torch.randn(a.shape, generator=g) * 0.05 for k, a in zeros(model).items()}
    out = tmp_path / "run"
    out.mkdir()
    Contrasts(t(L, P, d), t(L, P, d), t(L, P, d), t(L, P, d), t(L, P, 2, d), readout=readout).save(
        out / "contrasts.safetensors", {"edit": params.to_dict(), "keep_safety": True, "keep_layers": "all"}
    )
    edit = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    rebuild(edit, out / "contrasts.safetensors")
    _save(edit, tokenizer, out)
    (out / "steer_manifest.json").write_text(
        json.dumps({"input": {"model": str(src)}, "edit": params.to_dict(), "output_sha256": None}, default=str)
    )
    r = verify(out)
    assert r.ok, r.summary()
    assert "with its readout" in r.edit and "rank 2" in r.edit and r.output_sha256 is None
    assert r.notes == []  # the file and the manifest record the same edit
    without = Contrasts.load(out / "contrasts.safetensors")
    without.readout = None
    without.save(out / "contrasts.safetensors", json.loads((out / "contrasts.json").read_text()))
    r = verify(out)
    assert r.status == "differs" and "readout" not in r.edit  # the readout's writers differ
    assert all(n.endswith(("o_proj.weight", "down_proj.weight")) for n in r.outside)


def test_model_override_and_missing_input(edited, tmp_path):
    src, out = edited
    moved = src.rename(tmp_path / "moved")
    with pytest.raises(SteerError, match=r"input checkpoint .*in \(recorded in the manifest\) not found") as exc:
        verify(out)
    assert "\n" not in str(exc.value) and _hidden(tmp_path) == []
    r = verify(out, model=moved)
    assert r.status == "bit-identical" and r.rebuilt_from == str(moved) and r.input_sha256 == "match"


def test_errors_are_one_line(edited, tokenizer, tmp_path):
    src, out = edited
    with pytest.raises(SteerError, match="has no steer_manifest.json"):
        verify(src)  # a checkpoint steer did not write
    with pytest.raises(SteerError, match="no such checkpoint folder"):
        verify(tmp_path / "nothing")
    small = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(**{**COMMON, "hidden_size": 32}))
    with pytest.raises(SteerError, match="hidden size 64, model has 32"):  # an input of another size
        verify(out, model=_save(small, tokenizer, tmp_path / "small"))
    (tmp_path / "dirs.safetensors").unlink()
    with pytest.raises(SteerError, match="dirs.safetensors is missing; pass it"):
        verify(out)
    r = verify(out, directions=_directions(tmp_path / "again.safetensors"))
    assert r.status == "bit-identical"
    _change(out, "model.norm.weight", lambda w: w[:-1])
    with pytest.raises(SteerError, match=r"tensor model.norm.weight has shape \[63\]"):
        verify(out, directions=tmp_path / "again.safetensors")
    assert _hidden(tmp_path) == []


def test_notes_name_what_changed_since_the_run(edited):
    """A rebuild on another CPU, kernel or library version may round differently: the result says so."""
    _, out = edited
    manifest = json.loads((out / "steer_manifest.json").read_text())
    manifest.update(kernel="triton", machine={"cpu": "Some Other CPU"}, versions={"torch": "1.0.0"})
    (out / "steer_manifest.json").write_text(json.dumps(manifest))
    r = verify(out)
    assert r.status == "bit-identical"
    assert any("triton" in n for n in r.notes) and any("Some Other CPU" in n for n in r.notes)
    assert any("torch 1.0.0 -> " in n for n in r.notes) and "Note: " in r.summary()
