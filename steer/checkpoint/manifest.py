"""The one manifest writer and the one versions record.

Every checkpoint steer writes carries `steer_manifest.json`: what was run (command, settings,
prompts, edit), on what (input model and its sha256), with what (library versions, the CPU and
its flags, the projection kernel), and the sha256 of the weights written. `steer verify` rebuilds
a checkpoint from it. Reports and evaluation summaries record `versions()` too.
"""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from steer.checkpoint.save import write_json

MANIFEST = "steer_manifest.json"
# CPU features that change float results (vector width, fused multiply-add, bf16 units)
_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_bf16",
    "amx_tile",
    "asimd",
    "sve",
    "bf16",
)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Library versions recorded in every manifest, report and evaluation summary (importing
    transformers only for its version would cost `steer edit` a second)."""
    return {
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "safetensors": _version("safetensors"),
        "python": sys.version.split()[0],
    }


def machine() -> dict:
    """The CPU model, the float-relevant flags it has, and torch's thread count: directions computed
    on another CPU can differ in the last bits (see `steer verify`)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: the platform module's name is what there is
        pass
    return {
        "cpu": name,
        "flags": sorted(f for f in _FLAGS if f in flags),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }


def build(*, input: dict, output_sha256: str | None, kernel: str | None = None, **entries) -> dict:
    """A manifest: steer's version, the command line, versions, machine, kernel, `entries` (settings,
    prompts, direction or edit, metrics, ...), the input and the output weights' sha256."""
    from steer import __version__

    return {
        "steer_version": __version__,
        "command": " ".join(sys.argv),
        "versions": versions(),
        "machine": machine(),
        "kernel": kernel,
        **entries,
        "input": input,
        "output_sha256": output_sha256,
    }


def write(folder: Path, **fields) -> dict:
    """build(**fields) written to folder/steer_manifest.json; returns it."""
    data = build(**fields)
    write_json(Path(folder) / MANIFEST, data)
    return data
