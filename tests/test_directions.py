import pytest
import torch

from steer.directions import DirectionSet, diff_in_means, project_off
from steer.errors import SteerError


def _set(seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(4, 3, 16, generator=g, dtype=torch.float64), torch.randn(4, 3, 16, generator=g, dtype=torch.float64)
    return DirectionSet(diff_in_means(a, b), a, b, {"selected": {"layer": 2, "position": -1}, "model": "x"})


def test_diff_in_means_and_projection():
    ds = _set()
    torch.testing.assert_close(ds.directions, ds.target_mean - ds.baseline_mean)
    proj = project_off(ds.directions, ds.baseline_mean)
    cos = torch.nn.functional.cosine_similarity(proj, ds.baseline_mean, dim=-1)
    assert cos.abs().max() < 1e-10
    # what was removed is parallel to the reference
    removed = ds.directions - proj
    assert torch.nn.functional.cosine_similarity(removed, ds.baseline_mean, dim=-1).abs().min() > 1 - 1e-9


def test_vector_is_unit_and_defaults_to_selection():
    ds = _set()
    v = ds.vector()
    assert abs(float(v.norm()) - 1) < 1e-6
    torch.testing.assert_close(v, (ds.directions[2, -1] / ds.directions[2, -1].norm()).float())
    with pytest.raises(SteerError, match="no direction at layer 9"):
        ds.vector(9, -1)


def test_save_load_round_trip(tmp_path):
    ds = _set()
    ds.save(tmp_path / "d.safetensors")
    back = DirectionSet.load(tmp_path / "d.safetensors")
    assert torch.equal(back.directions, ds.directions) and back.meta == ds.meta
    assert (tmp_path / "d.json").is_file()


def test_corrupt_directions_file(tmp_path):
    bad = tmp_path / "directions.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(SteerError, match="corrupt directions file"):
        DirectionSet.load(tmp_path)
    with pytest.raises(SteerError, match="no such directions file"):
        DirectionSet.load(tmp_path / "missing.safetensors")
