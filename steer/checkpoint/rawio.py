"""Raw safetensors I/O for the streaming editor: headers, positioned reads and writes, copies.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON
({"__metadata__": {...}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}, offsets
relative to the data start 8 + n, padded with spaces to a multiple of 8), then the bytes of
every tensor, contiguous, in data-offset order. Everything here works on file descriptors
with explicit offsets, so no file is ever mapped or read whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from steer.errors import SteerError
from steer.model.load import check_safetensors

CHUNK = 64 << 20  # bytes per copy step (progress and hashing advance per step)
# safetensors dtype -> torch dtype, for the tensors an edit rewrites (others are only copied)
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_ITEMSIZE = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass
class TensorInfo:
    """One tensor's header entry: name, safetensors dtype, shape, and where its bytes lie (absolute offset, length)."""

    name: str
    dtype: str  # safetensors dtype, e.g. "BF16"
    shape: list[int]
    offset: int  # absolute offset of the first byte in its file
    nbytes: int


def read_header(file: Path) -> tuple[list[TensorInfo], dict | None]:
    """The tensors of a safetensors file in data order, and its __metadata__ (validated first:
    a truncated or corrupt file is a SteerError)."""
    header = check_safetensors(file)
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    infos = []
    for name, v in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = v["data_offsets"]
            info = TensorInfo(name, v["dtype"], list(v["shape"]), 8 + n + begin, end - begin)
        except (KeyError, TypeError, ValueError):
            raise SteerError(f"corrupt safetensors file {file}: bad header entry {name!r}") from None
        size = _ITEMSIZE.get(info.dtype)
        if size is not None and info.nbytes != size * numel(info.shape):
            raise SteerError(
                f"corrupt safetensors file {file}: {name} has {info.nbytes} bytes for {info.dtype} {info.shape}"
            )
        infos.append(info)
    return sorted(infos, key=lambda t: t.offset), header.get("__metadata__")


def numel(shape) -> int:
    """Number of elements of a tensor of this shape (1 for a scalar's [])."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def header_bytes(tensors: list[tuple[str, str, list[int], int]], metadata: dict | None) -> bytes:
    """Length prefix and JSON header for (name, dtype, shape, nbytes) laid out in this order,
    formatted as the safetensors library writes it (compact JSON, space padding)."""
    header: dict = {} if metadata is None else {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def pread_into(fd: int, buf: memoryview, offset: int) -> None:
    """Fill buf from the file at offset (short reads are retried; end of file is an error)."""
    done = 0
    while done < len(buf):
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [buf[done:]], offset + done)
        else:  # no preadv (older macOS): one extra copy
            data = os.pread(fd, min(len(buf) - done, CHUNK), offset + done)
            n = len(data)
            buf[done : done + n] = data
        if n == 0:
            raise SteerError(f"unexpected end of file reading {len(buf)} bytes at offset {offset}")
        done += n


def pwrite_all(fd: int, buf: memoryview, offset: int) -> None:
    """Write all of buf to the file at offset (short writes are continued)."""
    done = 0
    while done < len(buf):
        done += os.pwrite(fd, buf[done:], offset + done)


class Copier:
    """Copies byte ranges between files through one reused 8 MiB buffer (positioned reads and
    writes). Measured on the development machine against os.copy_file_range: 0.4-0.5 s vs
    0.7-2.2 s per GB (the buffer stays in cache; the in-kernel copy of a filesystem without
    reflinks is no faster and varies more)."""

    BUFFER = 8 << 20

    def __init__(self) -> None:
        self._buf: bytearray | None = None

    def copy(self, src: int, src_offset: int, dst: int, dst_offset: int, n: int) -> None:
        self._buf = self._buf or bytearray(self.BUFFER)
        while n > 0:
            k = min(n, len(self._buf))
            view = memoryview(self._buf)[:k]
            pread_into(src, view, src_offset)
            pwrite_all(dst, view, dst_offset)
            src_offset, dst_offset, n = src_offset + k, dst_offset + k, n - k


class FileHasher:
    """sha256 of a file that is being written front to back, computed by a thread that trails the
    writer (reading back what is already written), so hashing overlaps the editing."""

    def __init__(self, path: Path) -> None:
        self._path, self._limit, self._closed = path, 0, False
        self._cond = threading.Condition()
        self._hash = hashlib.sha256()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"sha256 {path.name}", daemon=True)
        self._thread.start()

    def advance(self, written: int) -> None:
        """Bytes [0, written) of the file are final."""
        with self._cond:
            self._limit = max(self._limit, written)
            self._cond.notify()

    def finish(self) -> str:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest()

    def _run(self) -> None:
        try:
            buf = bytearray(8 << 20)
            pos = 0
            with open(self._path, "rb") as f:
                while True:
                    with self._cond:
                        while self._limit == pos and not self._closed:
                            self._cond.wait()
                        limit, closed = self._limit, self._closed
                    while pos < limit:
                        view = memoryview(buf)[: min(len(buf), limit - pos)]
                        pread_into(f.fileno(), view, pos)
                        self._hash.update(view)
                        pos += len(view)
                    if closed:
                        return
        except BaseException as exc:  # reported by finish()
            self._error = exc


def combine_hashes(files: dict[str, str]) -> str:
    """The checkpoint hash (steer.model.load.checkpoint_hash) from per-file sha256 hex digests."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode())
        h.update(files[name].encode())
    return h.hexdigest()
