"""Projection kernels: fast, memory-bound versions of `edit.project_out` (the audited reference).

`project` returns what project_out returns (up to float rounding: fp32 within a few ulp,
bf16/fp16 within 1 ulp), but works tile by tile in the compute dtype, can write in place and
never materializes a float32 copy of the whole matrix:

- "blocked" (any device, torch ops): see `_tiles`. Vectors contiguous in memory (side "in"
  on a row-major weight, biases) are loaded once per block, projected while in cache and
  stored. Strided vectors (side "out" on a row-major weight) take two streaming passes over
  panels of rows: coefficients c = B^T W, then the update.
- "native" (CPU, float32/bfloat16): `csrc/project_kernel.cpp` (bound in `csrc/project.cpp`),
  compiled once with torch's C++ extension builder (g++ or clang, cached under
  ~/.cache/torch_extensions). Same two layouts as "blocked", but the bf16 <-> fp32 conversions
  happen in registers, so it runs at about the speed of a plain copy (results/kernel-bench).
  "auto" uses it on CPU when it builds; otherwise (no compiler, or
  STEER_NATIVE_KERNEL=0) "blocked". The two differ by float rounding only (1 bf16 ulp at most).
- "triton" (CUDA; CPU tensors under TRITON_INTERPRET=1): one kernel, each program owning
  BLOCK_N residual-space vectors.

Both reduce side "in" to side "out" on the transpose: a row of an [n, d_model] weight is a
column of its [d_model, n] transpose; only strides change.

Norm preservation needs no extra pass over the weight: with c = B^T w and G = B^T B (= I),
||w - s B c||^2 = ||w||^2 - 2s c.c + s^2 c.(G c), so the rescale factor comes from sums
gathered while computing c.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

Side = Literal["out", "in"]  # re-exported by steer.edit.project (which imports this module)

# Compute-dtype bytes per tile: a block of whole vectors (read by the coefficient matmul and
# again by the update, so it should stay in L2) or a panel of rows; large enough to amortize
# per-op overhead. Tuned single-threaded on a Xeon with 2 MiB L2 per core, 8192 x 8192
# fp32/bf16: 256 KiB to 1 MiB within noise, 128 KiB and 2 MiB clearly slower.
BLOCK_BYTES = 512 * 1024
PANEL_BYTES = 512 * 1024
_EPS = 1e-12  # same clamp as project_out
# The CPU path runs its matmuls on a fixed number of threads: BLAS splits reductions by thread
# count, so this makes the output bytes independent of the machine's core count (the same
# weights from `steer abliterate` in memory and from the streaming `steer edit`, anywhere).
# One thread also keeps up with the disk, and stays fast when other work shares the cores.
CPU_THREADS = 1


def project(
    weight: torch.Tensor,
    basis: torch.Tensor,
    side: Side,
    strength: float = 1.0,
    preserve_norm: bool = False,
    *,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Return project_out(weight, basis, side, strength, preserve_norm), written into `out`.

    weight: side "out": [d_model, d_in] or a bias [d_model]; side "in": [n, d_model]. Any strides.
    basis: [d_model, k], orthonormal columns, k >= 1.
    out: tensor of weight's shape, dtype and device to write into: `weight` itself (in place)
        or a tensor not overlapping it. Default: a new tensor laid out like weight (strides kept
        when weight is dense, else contiguous).
    backend: "auto" (triton for CUDA tensors when triton is importable; native for CPU
        float32/bfloat16 when it builds; else blocked), "blocked" (alias "torch"), "native"
        (falls back to blocked where it does not apply), or "triton" (falls back to blocked
        without CUDA or triton).
    Maths in float32 (float64 for float64 weights), like project_out.
    """
    if out is None:
        out = torch.empty_like(weight)  # preserve_format: same strides when dense, else contiguous
    x, y = _as_out_side(weight, side, out)
    compute = torch.float64 if weight.dtype == torch.float64 else torch.float32
    if basis.dim() != 2 or basis.shape[0] != x.shape[0] or basis.shape[1] < 1:
        raise ValueError(f"basis must be [d_model={x.shape[0]}, k>=1], got {tuple(basis.shape)}")
    b = basis.to(device=weight.device, dtype=compute).contiguous()
    if backend not in ("auto", "torch", "blocked", "native", "triton"):
        raise ValueError(f"unknown backend {backend!r}")
    use_triton = backend in ("auto", "triton") and weight.is_cuda and _triton_available()
    if backend == "triton" and not weight.is_cuda and _triton_interpreted():
        use_triton = True  # CPU tensors through TRITON_INTERPRET=1 (tests)
    if use_triton:
        _project_triton(x, b, y, float(strength), preserve_norm)
    elif backend in ("auto", "native") and _native_applies(x, y) and (module := native_module()) is not None:
        gram = b.T @ b if preserve_norm else b.new_empty(0)
        module.project(x, y, b, gram, float(strength))
    else:
        with _threads(CPU_THREADS):
            _project_blocked(x, b, y, float(strength), preserve_norm)
    return out


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _as_out_side(weight: torch.Tensor, side: Side, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D views (x, y) [d_model, m] of the input and destination for the side-"out" problem."""
    if side not in ("out", "in"):
        raise ValueError(f"side must be 'out' or 'in', not {side!r}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}")
    if weight.dim() != 2 and not (side == "out" and weight.dim() == 1):
        raise ValueError(
            f"side {side!r} needs a 2-D weight{' or 1-D bias' if side == 'out' else ''}, "
            f"got shape {tuple(weight.shape)}"
        )
    if out.shape != weight.shape or out.dtype != weight.dtype or out.device != weight.device:
        raise ValueError(
            f"out must match weight's shape, dtype and device: {tuple(out.shape)} {out.dtype} "
            f"{out.device} vs {tuple(weight.shape)} {weight.dtype} {weight.device}"
        )
    if weight.dim() == 1:
        return weight.unsqueeze(1), out.unsqueeze(1)
    return (weight, out) if side == "out" else (weight.T, out.T)


def _norm_factor(sq: torch.Tensor, coeff: torch.Tensor, gram: torch.Tensor, s: float) -> torch.Tensor:
    """Per column: ||w|| / ||w - s B c|| from sq = ||w||^2, c = B^T w [k, m] and gram = B^T B [k, k]:
    ||w - s B c||^2 = ||w||^2 - 2s c.c + s^2 c.(G c). G = I for an orthonormal basis, but keeping
    it makes the closed form exact for a float32 basis applied to float64 weights too."""
    new_sq = (sq - 2 * s * coeff.square().sum(0) + s * s * (coeff * (gram @ coeff)).sum(0)).clamp_min(0)
    return sq.sqrt() / new_sq.sqrt().clamp_min(_EPS)


def _tiles(x: torch.Tensor, itemsize: int) -> tuple[int, int]:
    """(panel rows, chunk columns) for x [d, m]. Contiguous vectors (side "in" on a row-major
    weight): whole vectors, as many as fit BLOCK_BYTES, so each block is loaded once. Otherwise
    (side "out" on a row-major weight) panels of whole rows: a block of columns would read
    d short strided segments (a TLB miss and a prefetch restart each: measured about 2x slower
    than two streaming passes), so coefficients are accumulated over row panels first."""
    d, m = x.shape
    if x.stride(0) == 1 and (m == 1 or x.stride(1) != 1):
        return d, min(m, max(1, BLOCK_BYTES // (d * itemsize)))
    cw = min(m, max(1, PANEL_BYTES // (itemsize * 8)))
    return min(d, max(1, PANEL_BYTES // (cw * itemsize))), cw


def _project_blocked(x: torch.Tensor, b: torch.Tensor, y: torch.Tensor, s: float, preserve_norm: bool) -> None:
    """y <- x - s B (B^T x) for x, y [d, m] (any strides; y may be x), chunk by chunk of columns.
    Works in y when it has the compute dtype, else in a buffer of the compute dtype laid out
    like x, so that conversions are straight copies."""
    br, cw = _tiles(x, b.element_size())
    direct = y.dtype == b.dtype
    buf = None
    if not direct:
        rows = min(br, x.shape[0])
        buf = (
            torch.empty(cw, rows, dtype=b.dtype, device=x.device).T
            if x.stride(0) == 1
            else torch.empty(rows, cw, dtype=b.dtype, device=x.device)
        )
    in_place = y.data_ptr() == x.data_ptr() and y.stride() == x.stride()
    gram = b.T @ b if preserve_norm else None
    if br >= x.shape[0]:
        _whole_vectors(x, b, y, s, gram, cw, buf, in_place)
    else:
        _row_panels(x, b, y, s, gram, br, cw, buf, in_place)


def _whole_vectors(
    x: torch.Tensor,
    b: torch.Tensor,
    y: torch.Tensor,
    s: float,
    gram: torch.Tensor | None,
    cw: int,
    buf: torch.Tensor | None,
    in_place: bool,
) -> None:
    """One pass: load cw whole vectors, project them while in cache, store."""
    m = x.shape[1]
    bt = b.T
    coeff_all = torch.empty(b.shape[1], cw, dtype=b.dtype, device=x.device)
    for j in range(0, m, cw):
        src, dst = x[:, j : j + cw], y[:, j : j + cw]
        if buf is not None:
            blk = buf[:, : src.shape[1]].copy_(src)
        else:
            blk = dst if in_place else dst.copy_(src)
        coeff = torch.mm(bt, blk, out=coeff_all[:, : src.shape[1]])
        if gram is not None:
            sq = torch.linalg.vector_norm(blk, dim=0).square_()
        blk.addmm_(b, coeff, alpha=-s)
        if gram is not None:
            blk.mul_(_norm_factor(sq, coeff, gram, s)[None, :])
        if buf is not None:
            dst.copy_(blk)


def _row_panels(
    x: torch.Tensor,
    b: torch.Tensor,
    y: torch.Tensor,
    s: float,
    gram: torch.Tensor | None,
    br: int,
    cw: int,
    buf: torch.Tensor | None,
    in_place: bool,
) -> None:
    """Two streaming passes per chunk of cw columns: accumulate c = B^T x (and ||x||^2) over
    panels of br rows, then update the panels."""
    d, m = x.shape
    coeff_all = torch.empty(b.shape[1], cw, dtype=b.dtype, device=x.device)
    sq_all = torch.empty(cw, dtype=b.dtype, device=x.device)
    for j in range(0, m, cw):
        w = min(cw, m - j)
        xs, ys, coeff, sq = x[:, j : j + w], y[:, j : j + w], coeff_all[:, :w].zero_(), sq_all[:w].zero_()
        for i in range(0, d, br):
            src = xs[i : i + br] if buf is None else buf[: min(br, d - i), :w].copy_(xs[i : i + br])
            coeff.addmm_(b[i : i + br].T, src)
            if gram is not None:
                sq.add_(torch.linalg.vector_norm(src, dim=0).square_())
        factor = _norm_factor(sq, coeff, gram, s)[None, :] if gram is not None else None
        for i in range(0, d, br):
            src, dst, bi = xs[i : i + br], ys[i : i + br], b[i : i + br]
            if buf is not None:
                blk = buf[: src.shape[0], :w].copy_(src).addmm_(bi, coeff, alpha=-s)
            elif in_place:
                blk = dst.addmm_(bi, coeff, alpha=-s)
            else:
                blk = torch.addmm(src, bi, coeff, alpha=-s, out=dst)
            if factor is not None:
                blk.mul_(factor)
            if buf is not None:
                dst.copy_(blk)


# ---------------------------------------------------------------- native CPU kernel (C++)


def _native_applies(x: torch.Tensor, y: torch.Tensor) -> bool:
    """CPU float32/bfloat16 with rows or columns contiguous in both x and y (every weight here),
    and y's vectors not overlapping each other (the kernel updates two rows through restrict
    pointers; an expanded view would alias them)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    if x.stride(0) == 1 and y.stride(0) == 1:
        return y.size(1) == 1 or y.stride(1) >= y.size(0)
    return x.stride(1) == 1 and y.stride(1) == 1 and (y.size(0) == 1 or y.stride(0) >= y.size(1))


@functools.cache
def native_module():
    """The compiled kernel module, or None (STEER_NATIVE_KERNEL=0, or the build failed: warned once).
    The extension name carries a hash of the source, flags and CPU features, so a cache shared by
    different machines or versions never loads a mismatched build."""
    if os.environ.get("STEER_NATIVE_KERNEL", "1") == "0":
        return None
    csrc = os.path.join(os.path.dirname(__file__), "csrc")
    sources = [os.path.join(csrc, f) for f in ("project.cpp", "project_kernel.cpp")]
    # -ffp-contract=off: the compiler fuses nothing; the kernel's own std::fma calls are exactly
    # rounded by definition, so every ISA rounds the same way
    flags = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=off", "-fno-math-errno"]
    try:
        digest = hashlib.sha256(" ".join(flags).encode() + _cpu_flags().encode())
        for f in sorted(os.listdir(csrc)):
            with open(os.path.join(csrc, f), "rb") as fh:
                digest.update(f.encode() + fh.read())
        from torch.utils import cpp_extension

        name = f"steer_project_{digest.hexdigest()[:12]}"
        build_dir = cpp_extension._get_build_directory(name, verbose=False)
        if not os.path.exists(os.path.join(build_dir, f"{name}.so")):
            print("steer: compiling the CPU projection kernel (once, about a minute)", file=sys.stderr)
        return cpp_extension.load(name, sources, extra_cflags=flags, verbose=False)
    except Exception as exc:  # no compiler, headers, or ninja: the torch path is correct, only slower
        warnings.warn(
            f"steer: native projection kernel unavailable ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); using the torch kernel",
            stacklevel=2,
        )
        return None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def kernel_name(device: torch.device | str = "cpu") -> str:
    """The backend project(..., backend="auto") uses for float32/bfloat16 weights on `device` (for manifests)."""
    if torch.device(device).type == "cuda":
        return "triton" if _triton_available() else "blocked"
    return "native" if native_module() is not None else "blocked"


# ---------------------------------------------------------------- Triton (CUDA / interpreter)


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_interpreted() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1" and _triton_available()


@functools.cache
def _triton_kernel(interpreted: bool):
    """Build the kernel on first use, so the module imports without triton and TRITON_INTERPRET,
    read when @triton.jit runs, can be set by the caller first (the cache key keeps both)."""
    import triton
    import triton.language as tl

    # fmt: off
    @triton.jit
    def kernel(x_ptr, y_ptr, b_ptr, sb_ptr, h_ptr, D, M, K, sxd, sxm, syd, sym,
               PRESERVE: tl.constexpr, F64: tl.constexpr, BF16_RTNE: tl.constexpr, K_PAD: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
        # fmt: on
        # x, y: [D, M] with strides (sxd, sxm) / (syd, sym). Contiguous, compute dtype: b = B and
        # sb = s B [D, K], h = s^2 B^T B - 2s I [K, K], so ||x - s B c||^2 = ||x||^2 + c.(h c).
        # (The strength enters only through these: a float argument would be fp32 on the GPU.)
        # This program owns the columns (residual-space vectors) `cols`.
        cdt = tl.float64 if F64 else tl.float32
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = tl.arange(0, K_PAD)
        col_ok = cols < M
        cols64 = cols.to(tl.int64)  # offsets of checkpoint-size matrices overflow int32
        coeff = tl.zeros((K_PAD, BLOCK_N), dtype=cdt)
        sq = tl.zeros((BLOCK_N,), dtype=cdt)
        for d0 in range(0, D, BLOCK_D):  # pass 1: c = B^T x and ||x||^2
            rows = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
            row_ok = rows < D
            xt = tl.load(
                x_ptr + rows[:, None] * sxd + cols64[None, :] * sxm, mask=row_ok[:, None] & col_ok[None, :], other=0
            ).to(cdt)
            bt = tl.load(b_ptr + rows[:, None] * K + ks[None, :], mask=row_ok[:, None] & (ks[None, :] < K), other=0)
            coeff += tl.sum(bt[:, :, None] * xt[:, None, :], axis=0)
            if PRESERVE:
                sq += tl.sum(xt * xt, axis=0)
        if PRESERVE:
            h = tl.load(h_ptr + ks[:, None] * K + ks[None, :], mask=(ks[:, None] < K) & (ks[None, :] < K), other=0)
            new_sq = tl.maximum(sq + tl.sum(coeff * tl.sum(h[:, :, None] * coeff[None, :, :], axis=1), axis=0), 0.0)
            factor = tl.sqrt(sq) / tl.maximum(tl.sqrt(new_sq), 1e-12)
        for d0 in range(0, D, BLOCK_D):  # pass 2: y = (x - (s B) c) * factor
            rows = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
            row_ok = rows < D
            mask = row_ok[:, None] & col_ok[None, :]
            xt = tl.load(x_ptr + rows[:, None] * sxd + cols64[None, :] * sxm, mask=mask, other=0).to(cdt)
            sbt = tl.load(sb_ptr + rows[:, None] * K + ks[None, :], mask=row_ok[:, None] & (ks[None, :] < K), other=0)
            new = xt - tl.sum(sbt[:, :, None] * coeff[None, :, :], axis=1)
            if PRESERVE:
                new = new * factor[None, :]
            if BF16_RTNE:  # the interpreter's fp32 -> bf16 cast truncates; round to nearest even
                bits = new.to(tl.uint32, bitcast=True)
                bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
                new = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
            tl.store(y_ptr + rows[:, None] * syd + cols64[None, :] * sym, new.to(y_ptr.dtype.element_ty), mask=mask)

    return kernel


def _project_triton(x: torch.Tensor, b: torch.Tensor, y: torch.Tensor, s: float, preserve_norm: bool) -> None:
    """Triton version of _project_blocked: x, y [d, m] any strides (y may alias x: each program
    reads its columns fully before writing them)."""
    d, m = x.shape
    k = b.shape[1]
    k_pad = max(2, 1 << (k - 1).bit_length())
    block_n = 32
    block_d = max(8, min(64, 8192 // (k_pad * block_n)))  # [BLOCK_D, K_PAD, BLOCK_N] stays in registers
    interpreted = _triton_interpreted()
    kernel = _triton_kernel(interpreted)
    grid = (math.ceil(m / block_n),)
    h = s * s * (b.T @ b) - 2 * s * torch.eye(k, dtype=b.dtype, device=b.device)
    kernel[grid](
        x,
        y,
        b,
        (s * b).contiguous(),
        h.contiguous(),
        d,
        m,
        k,
        x.stride(0),
        x.stride(1),
        y.stride(0),
        y.stride(1),
        PRESERVE=preserve_norm,
        F64=b.dtype == torch.float64,
        BF16_RTNE=interpreted and y.dtype == torch.bfloat16,
        K_PAD=k_pad,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
    )
