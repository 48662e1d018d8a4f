"""Benchmark steer.edit.kernels.project against a plain copy of the same matrix (its memory-bound floor).

    python experiments/kernel_bench.py --threads 1 --sides out,in --backends native,blocked
    python experiments/kernel_bench.py                       # 8192 x 8192, fp32 and bf16, k = 1 and 4
    python experiments/kernel_bench.py --size 1024 --repeats 3 --out /tmp/kb   # smoke run

For every dtype and k, in one process: (a) dst.copy_(src), (b) project(src, basis, side,
out=dst), (b') project(dst, basis, side, out=dst) in place, as orthogonalize runs it, and
(c) project_out (the plain formula, for contrast). (a), (b), (b') are timed in turn within each of
--repeats rounds (after --warmup rounds), the median of each reported; GB/s counts the bytes read
and written (2 x matrix bytes for all, as a kernel that touches each element once would), and
`ratio` is kernel GB/s / copy GB/s (target >= 0.70). Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from steer.edit.kernels import kernel_name, project
from steer.edit.project import orthonormal_basis, project_out

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def _median_seconds(fn, repeats: int, warmup: int, device: torch.device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _interleaved(fns: dict, repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function, timed in turn within every round, so that drift in the
    machine's memory bandwidth (shared hosts) hits the copy and the kernels alike."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_one(
    rows: int, cols: int, dtype: torch.dtype, k: int, side: str, backend: str, args, device: torch.device
) -> dict:
    """Time copy / project / project_out on one [rows, cols] matrix; d_model is the residual side."""
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(rows, cols, generator=gen).to(device=device, dtype=dtype)
    dst = torch.empty_like(src)
    d_model = rows if side == "out" else cols
    basis = orthonormal_basis(torch.randn(k, d_model, generator=gen)).to(device)
    nbytes = 2 * src.numel() * src.element_size()
    fns = {
        "copy": lambda: dst.copy_(src),
        "kernel": lambda: project(src, basis, side, 0.7, args.preserve_norm, out=dst, backend=backend),
        # what orthogonalize and the streaming editor do: no separate destination
        "inplace": lambda: project(dst, basis, side, 0.7, args.preserve_norm, out=dst, backend=backend),
    }
    timings = _interleaved(fns, args.repeats, args.warmup, device)
    if not args.no_naive:
        timings["project_out"] = _median_seconds(
            lambda: project_out(src, basis, side, 0.7, args.preserve_norm),
            max(1, args.repeats // 2),
            min(1, args.warmup),
            device,
        )
    row = {
        "backend": backend,
        "dtype": str(dtype).removeprefix("torch."),
        "k": k,
        "side": side,
        "shape": [rows, cols],
        **{f"{name}_s": t for name, t in timings.items()},
        **{f"{name}_gbps": nbytes / t / 1e9 for name, t in timings.items()},
    }
    row["ratio"] = row["kernel_gbps"] / row["copy_gbps"]
    row["inplace_ratio"] = row["inplace_gbps"] / row["copy_gbps"]
    return row


def markdown(rows: list[dict], info: dict) -> str:
    lines = [
        f"# Projection kernel vs copy ({info['device']}, {info['cpu_model']}, {info['threads']} threads)",
        "",
        f"`{info['command']}`; torch {info['torch']}; median of {info['repeats']} after {info['warmup']} warmup.",
        "",
        "| backend | dtype | k | side | shape | copy GB/s | kernel GB/s | in-place GB/s | project_out GB/s "
        "| kernel/copy | in-place/copy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        naive = f"{r['project_out_gbps']:.1f}" if "project_out_gbps" in r else "-"
        lines.append(
            f"| {r['backend']} | {r['dtype']} | {r['k']} | {r['side']} | {r['shape'][0]}x{r['shape'][1]} | "
            f"{r['copy_gbps']:.1f} | {r['kernel_gbps']:.1f} | {r['inplace_gbps']:.1f} | {naive} | "
            f"{r['ratio']:.2f} | {r['inplace_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=8192, help="rows (and columns unless --cols)")
    p.add_argument("--cols", type=int, default=None)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--ks", default="1,4")
    p.add_argument("--sides", default="out", help="comma list of out,in")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--backends", default="auto", help="comma list of steer.edit.kernels backends (auto, native, blocked, triton)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--preserve-norm", action="store_true")
    p.add_argument("--no-naive", action="store_true", help="skip project_out (slow, needs ~4x memory)")
    p.add_argument("--out", type=Path, default=Path("results/kernel-bench"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        bench_one(args.size, args.cols or args.size, DTYPES[dt], int(k), side, backend, args, device)
        for backend in args.backends.split(",")
        for dt in args.dtypes.split(",")
        for k in args.ks.split(",")
        for side in args.sides.split(",")
    ]
    info = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "torch": torch.__version__,
        "cpu_model": _cpu_model(),
        "threads": torch.get_num_threads(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "backends": args.backends,
        "auto_cpu_backend": kernel_name("cpu"),
        "preserve_norm": args.preserve_norm,
        "python": platform.python_version(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    table = markdown(rows, info)
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
