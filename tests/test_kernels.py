"""steer.edit.kernels.project against the reference steer.edit.project.project_out.

The Triton tests run the kernel on CPU tensors through Triton's interpreter. TRITON_INTERPRET
is set here, before anything can import triton (no other test module does), because Triton
may read it when a kernel is defined; it only affects project(..., backend="triton").
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from steer.edit import kernels  # noqa: E402
from steer.edit.kernels import project  # noqa: E402
from steer.edit.project import orthonormal_basis, project_out  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# (side, weight shape) with d_model = 67: an "out" matrix, an "in" matrix, an "out" bias
SHAPES = [("out", (67, 1001)), ("in", (1001, 67)), ("out", (67,))]


def _weight(shape, dtype, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _basis(k, d=67, seed=1, dtype=torch.float32):
    return orthonormal_basis(torch.randn(k, d, generator=torch.Generator().manual_seed(seed))).to(dtype)


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """Map 16-bit floats to integers in value order: adjacent representable values differ by 1."""
    i = t.view(torch.int16).to(torch.int32)
    return torch.where(i < 0, -(i & 0x7FFF), i)


def assert_matches(got: torch.Tensor, ref: torch.Tensor) -> None:
    """fp32/fp64: within 8 ulp of the largest value. bf16/fp16: each element within 1 ulp (the
    rounding to storage may flip), except values near zero after cancellation, which may differ
    by as much as the float32 maths does: 8 float32 ulp of the largest value."""
    assert got.dtype == ref.dtype and got.shape == ref.shape
    compute = torch.float64 if ref.dtype == torch.float64 else torch.float32
    tol = 8 * torch.finfo(compute).eps * ref.abs().max().item()
    diff = (got.to(compute) - ref.to(compute)).abs()
    if ref.dtype in (torch.bfloat16, torch.float16):
        ulps = (_ordered(got) - _ordered(ref)).abs()
        assert ulps.max() <= 1 or diff[ulps > 1].max().item() <= tol, f"{ulps.max()} ulp apart"
        # flips happen only next to rounding boundaries; truncating would flip about half
        assert (ulps != 0).float().mean().item() < 0.02
    else:
        assert diff.max().item() <= tol


@pytest.fixture(params=["default", "tiny"])
def tiles(request, monkeypatch):
    """Default tiles (one block here) or tiny ones: many chunks, panels and partial blocks."""
    if request.param == "tiny":
        monkeypatch.setattr(kernels, "BLOCK_BYTES", 2048)
        monkeypatch.setattr(kernels, "PANEL_BYTES", 2048)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("side,shape", SHAPES)
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("strength", [0.3, 1.0])
@pytest.mark.parametrize("preserve_norm", [False, True])
def test_blocked_matches_reference(tiles, dtype, side, shape, k, strength, preserve_norm):
    w, b = _weight(shape, dtype), _basis(k)
    ref = project_out(w, b, side, strength, preserve_norm)
    got = project(w, b, side, strength, preserve_norm, backend="blocked")
    assert_matches(got, ref)
    assert torch.equal(w, _weight(shape, dtype))  # input untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("side,shape", SHAPES)
@pytest.mark.parametrize("preserve_norm", [False, True])
def test_in_place(tiles, dtype, side, shape, preserve_norm):
    w, b = _weight(shape, dtype), _basis(3)
    ref = project_out(w, b, side, 0.7, preserve_norm)
    assert project(w, b, side, 0.7, preserve_norm, out=w) is w
    assert_matches(w, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("side", ["out", "in"])
@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_non_contiguous(tiles, dtype, side, layout):
    base = _weight((67, 1001) if side == "out" else (1001, 67), dtype)
    if layout == "transposed":  # same values, column-major storage
        w = base.T.contiguous().T
    else:  # every other column of a wider matrix
        wide = torch.zeros(base.shape[0], 2 * base.shape[1], dtype=dtype)
        wide[:, ::2] = base
        w = wide[:, ::2]
    assert not w.is_contiguous()
    b = _basis(2)
    ref = project_out(base, b, side, 0.5, True)
    assert_matches(project(w, b, side, 0.5, True), ref)
    project(w, b, side, 0.5, True, out=w)  # in place into the strided view
    assert_matches(w, ref)
    if layout == "strided":
        assert torch.count_nonzero(wide[:, 1::2]) == 0  # the gaps stayed untouched


@pytest.mark.parametrize("side,shape", SHAPES)
def test_idempotent_and_orthogonal(tiles, side, shape):
    w, b = _weight(shape, torch.float32), _basis(4)
    once = project(w, b, side)
    assert_matches(project(once, b, side), once)
    resid = once.reshape(67, -1) if side == "out" else once.T
    assert (b.T @ resid).abs().max() < 1e-5 * w.abs().max()


def test_norm_factor_closed_form_equals_explicit_norms():
    """||w - s B c|| from ||w||^2, c and B^T B equals the norm of the explicit vector, also for a
    float32 basis (not exactly orthonormal in float64) used on float64 vectors."""
    b = _basis(5).to(torch.float64)
    w = _weight((67, 300), torch.float64)
    coeff = b.T @ w
    for s in (0.3, 1.0, 1.7):
        explicit = w.norm(dim=0) / (w - s * b @ coeff).norm(dim=0)
        closed = kernels._norm_factor(w.square().sum(0), coeff, b.T @ b, s)
        torch.testing.assert_close(closed, explicit, rtol=1e-12, atol=0)


@pytest.mark.parametrize("side,shape", SHAPES)
def test_preserve_norm_keeps_vector_norms(tiles, side, shape):
    w, b = _weight(shape, torch.float64), _basis(3, dtype=torch.float64)
    got = project(w, b, side, 1.0, preserve_norm=True)
    dim = 0 if side == "out" else 1
    torch.testing.assert_close(got.norm(dim=dim), w.norm(dim=dim), rtol=1e-12, atol=0)


def test_rejects_bad_arguments():
    w, b = _weight((67, 10), torch.float32), _basis(2)
    with pytest.raises(ValueError, match="side"):
        project(w, b, "sideways")
    with pytest.raises(ValueError, match="basis"):
        project(w, b, "in")  # rows are 10 wide, not d_model = 67
    with pytest.raises(ValueError, match="2-D"):
        project(torch.zeros(67), b, "in")
    with pytest.raises(ValueError, match="out must match"):
        project(w, b, "out", out=torch.empty(67, 10, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="backend"):
        project(w, b, "out", backend="cuda-magic")
    with pytest.raises(TypeError):
        project(w.to(torch.int32), b, "out")


def test_triton_backend_falls_back_without_triton(monkeypatch):
    monkeypatch.setattr(kernels, "_triton_available", lambda: False)
    w, b = _weight((67, 30), torch.float32), _basis(2)
    assert_matches(project(w, b, "out", backend="triton"), project_out(w, b, "out"))


# ---------------------------------------------------------------- Triton, interpreted on CPU


@pytest.fixture
def triton_only(monkeypatch):
    """Skip without triton; make any fallback to the torch path fail the test."""
    pytest.importorskip("triton")

    def no_fallback(*args, **kwargs):
        raise AssertionError("fell back to the blocked torch path")

    monkeypatch.setattr(kernels, "_project_blocked", no_fallback)


TRITON_SHAPES = [("out", (67, 45)), ("in", (45, 67)), ("out", (67,))]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("side,shape", TRITON_SHAPES)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("preserve_norm", [False, True])
def test_triton_matches_reference(triton_only, dtype, side, shape, k, preserve_norm):
    w, b = _weight(shape, dtype), _basis(k)
    ref = project_out(w, b, side, 0.3, preserve_norm)
    assert_matches(project(w, b, side, 0.3, preserve_norm, backend="triton"), ref)


@pytest.mark.parametrize("side,shape", TRITON_SHAPES[:2])
def test_triton_in_place_non_contiguous_and_idempotent(triton_only, side, shape):
    base, b = _weight(shape, torch.bfloat16), _basis(3)
    w = base.T.contiguous().T
    ref = project_out(base, b, side, 1.0, True)
    project(w, b, side, 1.0, True, out=w, backend="triton")
    assert_matches(w, ref)
    w32 = _weight(shape, torch.float32)
    once = project(w32, b, side, backend="triton")
    assert_matches(project(once, b, side, backend="triton"), once)


def test_output_bytes_do_not_depend_on_the_callers_thread_count():
    """Same bytes whatever torch's thread count: steer abliterate (in memory) and the streaming
    steer edit must write identical weights on any machine."""
    w, b = _weight((512, 3000), torch.float32), _basis(4, d=512)
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            outs.append(project(w, b, "out", backend="blocked"))
            assert torch.get_num_threads() == n  # restored
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


# ---------------------------------------------------------------- native C++ kernel (CPU)


@pytest.fixture
def native_only(monkeypatch):
    """Skip only where no C++ compiler exists; otherwise the kernel must build, and any fallback
    to the torch path fails the test."""
    import shutil

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    assert kernels.native_module() is not None, "native kernel did not build"

    def no_fallback(*args, **kwargs):
        raise AssertionError("fell back to the blocked torch path")

    monkeypatch.setattr(kernels, "_project_blocked", no_fallback)


# m = 9000 > the kernel's 32768 / k column chunk for k >= 4: full and partial chunks; d = 67:
# partial 16-lane groups and a partial 4-row step; k = 6: the generic (not unrolled) path
NATIVE_SHAPES = SHAPES + [("out", (67, 9000)), ("in", (9000, 67))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("side,shape", NATIVE_SHAPES)
@pytest.mark.parametrize("k", [1, 4, 6])
@pytest.mark.parametrize("strength", [0.3, 1.0])
@pytest.mark.parametrize("preserve_norm", [False, True])
def test_native_matches_reference(native_only, dtype, side, shape, k, strength, preserve_norm):
    w, b = _weight(shape, dtype), _basis(k)
    ref = project_out(w, b, side, strength, preserve_norm)
    assert_matches(project(w, b, side, strength, preserve_norm, backend="native"), ref)
    assert torch.equal(w, _weight(shape, dtype))  # input untouched
    assert project(w, b, side, strength, preserve_norm, out=w, backend="native") is w  # in place
    assert_matches(w, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("side", ["out", "in"])
def test_native_column_major_and_idempotent(native_only, dtype, side):
    base = _weight((67, 1001) if side == "out" else (1001, 67), dtype)
    w, b = base.T.contiguous().T, _basis(2)  # same values, the other layout
    ref = project_out(base, b, side, 0.5, True)
    assert_matches(project(w, b, side, 0.5, True, backend="native"), ref)
    once = project(base.float(), b, side, backend="native")
    assert_matches(project(once, b, side, backend="native"), once)


def test_native_is_deterministic_and_rounds_like_torch(native_only):
    """Same bytes on every call; strength 0 returns the input bit for bit (bf16 load and
    round-to-nearest-even store exact); a NaN stays NaN (no rounding carries it to infinity)."""
    w, b = _weight((300, 5000), torch.bfloat16), _basis(3, d=300)
    first = project(w, b, "out", 0.8, True, backend="native")
    assert torch.equal(first.view(torch.int16), project(w, b, "out", 0.8, True, backend="native").view(torch.int16))
    assert torch.equal(project(w, b, "out", 0.0, backend="native").view(torch.int16), w.view(torch.int16))
    w[5, 7] = float("nan")  # poisons its column's coefficient: that column becomes NaN
    out = project(w, b, "out", 0.0, backend="native")
    keep = torch.ones(5000, dtype=torch.bool)
    keep[7] = False
    assert torch.equal(out[:, keep].view(torch.int16), w[:, keep].view(torch.int16))
    assert torch.isnan(out[:, 7]).all()


def test_native_strided_views_fall_back_correctly(monkeypatch):
    """Neither rows nor columns contiguous (a view of every other column): the torch path, same values."""
    monkeypatch.setattr(kernels, "native_module", lambda: (_ for _ in ()).throw(AssertionError("native used")))
    wide = _weight((67, 2002), torch.float32)
    w, b = wide[:, ::2], _basis(2)
    assert_matches(project(w, b, "out", backend="native"), project_out(w.contiguous(), b, "out"))


def test_native_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("STEER_NATIVE_KERNEL", "0")
    kernels.native_module.cache_clear()
    try:
        assert kernels.native_module() is None and kernels.kernel_name("cpu") == "blocked"
    finally:
        monkeypatch.delenv("STEER_NATIVE_KERNEL")
        kernels.native_module.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_native_vector_groups_round_like_single_vectors(native_only, dtype, k):
    """Vectors are updated in groups of 2 or 4 (sharing loads of the basis); each must get the
    bytes it gets alone or in another group, and a NaN in one must not change how its partners
    are rounded."""
    w, b = _weight((7, 300), dtype), _basis(k, d=300)  # side in: 7 vectors of 300
    bits = lambda t: t.view(torch.int16) if dtype == torch.bfloat16 else t.view(torch.int32)  # noqa: E731
    full = project(w, b, "in", 0.7, True, backend="native")
    for lo, hi in ((0, 4), (3, 7), (4, 7), (1, 2)):  # each vector in other groups (or alone)
        assert torch.equal(bits(full[lo:hi]), bits(project(w[lo:hi].clone(), b, "in", 0.7, True, backend="native")))
        part = w[lo:hi].clone()  # in place groups differently (groups of 4 for bf16, k >= 2)
        assert torch.equal(bits(full[lo:hi]), bits(project(part, b, "in", 0.7, True, out=part, backend="native")))
    w[3, 11] = float("nan")
    out = project(w, b, "in", 0.0, backend="native")
    assert torch.isnan(out[3]).all() and torch.equal(bits(out[[0, 1, 2, 4, 5, 6]]), bits(w[[0, 1, 2, 4, 5, 6]]))
