import pytest
import torch

from steer.errors import SteerError
from steer.locate.directions import DirectionSet, diff_in_means, project_off


def _set(seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = (
        torch.randn(4, 3, 16, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 16, generator=g, dtype=torch.float64),
    )
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


def test_remove_span_leaves_a_direction_orthogonal_to_the_others():
    from steer.locate.directions import remove_span

    g = torch.Generator().manual_seed(0)
    censor, harmful, mean = (torch.randn(4, 3, 16, generator=g, dtype=torch.float64) for _ in range(3))
    both = torch.stack([harmful, mean], dim=-2)  # [L, P, 2, d]: orthogonal to the harmful direction and the mean
    out = remove_span(censor, both)
    assert (out * harmful.double()).sum(-1).abs().max() < 1e-10 and (out * mean.double()).sum(-1).abs().max() < 1e-10
    # What was already orthogonal is untouched; a direction inside the span vanishes.
    ortho = remove_span(censor, harmful)
    assert torch.allclose(remove_span(ortho, harmful), ortho)
    assert remove_span(2 * harmful - mean, both).norm(dim=-1).max() < 1e-10
    # A zero or repeated row spans nothing more: only the real span is removed.
    v, h = censor[0, 0], harmful[0, 0]
    padded = torch.stack([torch.zeros(16, dtype=torch.float64), h, 3 * h])
    assert torch.allclose(remove_span(v, padded), remove_span(v, h), atol=1e-12)
    assert torch.equal(remove_span(v, torch.zeros(2, 16, dtype=torch.float64)), v)


def test_principal_directions_are_orthonormal_signed_and_lead_with_the_mean_shift():
    from steer.locate.directions import principal_directions

    g = torch.Generator().manual_seed(1)
    shift = torch.zeros(32, dtype=torch.float64)
    shift[3] = 5.0
    diffs = torch.randn(64, 32, generator=g, dtype=torch.float64) * 0.3 + shift
    comps = principal_directions(diffs, 4)
    assert comps.shape == (4, 32)
    assert torch.allclose(comps @ comps.T, torch.eye(4, dtype=torch.float64), atol=1e-10)
    assert comps[0, 3] > 0.99  # first component = the mean shift, pointing along it
    assert torch.equal(comps, principal_directions(diffs, 4))
    with pytest.raises(ValueError):
        principal_directions(diffs, 0)


def test_interpolated_index_blends_neighbouring_layers():
    from steer.locate.directions import interpolate

    dirs = torch.zeros(3, 1, 4, dtype=torch.float64)
    dirs[0, 0, 0], dirs[1, 0, 1], dirs[2, 0, 2] = 1, 2, 3
    assert torch.allclose(interpolate(dirs, 1.0), torch.tensor([0, 1, 0, 0.0], dtype=torch.float64))
    mid = interpolate(dirs, 0.5)
    assert torch.allclose(mid, torch.tensor([1, 1, 0, 0.0], dtype=torch.float64) / 2**0.5)
    assert torch.allclose(interpolate(dirs, 2.0), torch.tensor([0, 0, 1, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        interpolate(dirs, 2.5)
