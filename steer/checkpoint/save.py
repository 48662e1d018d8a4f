"""Save: atomic output folders and Hugging Face checkpoints with a manifest.

Everything is written into a hidden temporary folder beside the target and renamed into
place only when complete, so a crash or Ctrl-C never leaves a half-written output, and an
existing folder is replaced only with force=True.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from steer.errors import SteerError


def check_output(out: Path, force: bool, inputs: tuple[Path | None, ...] = ()) -> None:
    """Fail early (before any heavy work) if `out` cannot be written as asked."""
    out = Path(out)
    if out.exists() and not force:
        raise SteerError(f"output folder {out} already exists (use --force to replace it)")
    for src in inputs:
        if src is not None and out.resolve() == Path(src).resolve():
            raise SteerError(f"output folder {out} is the input checkpoint; choose another --out")
    # Missing parent folders are created (runs/x works on a fresh checkout); the nearest one
    # that exists must be a writable folder.
    parent = out.resolve().parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir():
        raise SteerError(f"cannot create {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK):
        raise SteerError(f"cannot create {out}: folder {existing} is not writable")


@contextmanager
def atomic_dir(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `out`, on any error it is removed."""
    out = Path(out)
    check_output(out, force)
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.resolve().parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(model, tokenizer, folder: Path) -> None:
    """A checkpoint AutoModelForCausalLM.from_pretrained loads: safetensors weights, config,
    generation config, tokenizer and chat template."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
