"""Streaming checkpoint editor: orthogonalize a checkpoint on disk, tensor by tensor.

The in-memory route (load the model, `steer.edit.project.orthogonalize`, save_pretrained) needs the
whole model in memory and rewrites every byte through Python. Only the embedding and the
residual writers change, so this editor reads each of those tensors into one of two reused
buffers (plain positioned reads: no mmap, no whole-file loads), projects it in place with
`steer.edit.kernels.project` (maths in float32, storage dtype kept), writes it from a background
thread while the next one is read and projected, and copies every other tensor's bytes verbatim
(through an 8 MiB buffer, steer.checkpoint.rawio.Copier). Peak memory is about two tensors plus the
interpreter, whatever the model size; the output has the input's shard layout, names, dtypes, order
and metadata, and equals what the in-memory route writes (tests/test_stream.py).

A GGUF file is read with steer.checkpoint.gguf_io.GGUFSource (de-quantized tensor by tensor) and
written as float32 safetensors shards.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from steer.checkpoint.layout import Entry, Shard, TensorEdit, folder_shards, gguf_shards, n_layers_of, plan, ties, untie
from steer.checkpoint.manifest import MANIFEST
from steer.checkpoint.manifest import build as build_manifest
from steer.checkpoint.rawio import (
    CHUNK,
    TORCH_DTYPES,
    Copier,
    FileHasher,
    combine_hashes,
    header_bytes,
    pread_into,
    pwrite_all,
)
from steer.checkpoint.save import atomic_dir, check_output, write_json
from steer.edit.kernels import kernel_name, project
from steer.edit.project import Profile, orthonormal_basis
from steer.edit.rank1 import add_rank1
from steer.errors import SteerError
from steer.model.adapters import adapter_for
from steer.model.load import architecture, sha256_file

INDEX = "model.safetensors.index.json"
GGUF_SHARD_BYTES = 5 << 30  # float32 output shards of a GGUF input
# Weight files other than the safetensors being edited: not copied (they would hold unedited weights).
_OTHER_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".npz")


def edit_checkpoint(
    src: Path,
    out: Path,
    basis: torch.Tensor,
    *,
    profiles: dict[str, Profile] | None = None,
    embed: float = 1.0,
    preserve_norm: bool = False,
    force: bool = False,
    manifest: dict | None = None,
    hashes: bool = False,
    shard_bytes: int = GGUF_SHARD_BYTES,
    readout: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None,
) -> dict:
    """Write `out`: the checkpoint `src` with span(basis) removed, like steer.edit.project.orthogonalize.

    src: a safetensors checkpoint folder (model.safetensors, or shards with an index) or a .gguf
    file (written as float32 safetensors shards of at most shard_bytes). basis: directions
    [k, d_model] or [d_model] (orthonormalized here). The embedding is edited with strength
    `embed`, every writer with its component's profile at its layer; a tied unembedding is
    written out as the original embedding (config untied). The output appears atomically;
    `manifest` entries are added to steer_manifest.json; hashes=True adds the input's and output's
    sha256 (two extra hashing passes over every byte, so off by default). readout: (r [d_model],
    {"<layer>.<component>": a [d_in]}) of steer.targeted.readout, added to those writers after their
    projection, as readout.bake after orthogonalize in memory. Returns stats (tensors and bytes edited
    and copied, seconds).
    """
    src, out, start = Path(src), Path(out), time.perf_counter()
    check_output(out, force, (src,))
    basis = orthonormal_basis(basis)  # [d_model, k]
    source, adapter, shards, in_files = _open(src)
    gguf = source is not None
    try:
        with atomic_dir(out, force) as tmp:
            if gguf:  # its config and tokenizer files first: the plan needs the config
                adapter = adapter_for(source.architecture)
                source.write_side_files(tmp)
                shards = gguf_shards(source.specs(), shard_bytes)
            config = json.loads((tmp if gguf else src).joinpath("config.json").read_text())
            vectors = readout[1] if readout else None
            norms = plan(adapter, shards, n_layers_of(config), basis.shape[0], profiles or {}, embed, src, vectors)
            tied = ties(config, tmp if gguf else src) and untie(adapter, shards)
            in_hashes = _in_background(lambda: {f.name: sha256_file(f) for f in in_files}) if hashes else None
            editor = _Editor(basis, adapter.norm_offset, preserve_norm, readout)
            out_hashes = _write_all(source, shards, tmp, editor, norms, hashes, src.name)
            skipped = _side_files(None if gguf else src, tmp, shards, tied, config)
            stats = _stats(shards, tied, skipped, editor.buffer_bytes, time.perf_counter() - start)
            in_hashes = in_hashes.result() if in_hashes else {}
            entries = _manifest(
                src, basis, profiles, embed, preserve_norm, stats, manifest, in_hashes, out_hashes, gguf
            )
            write_json(tmp / MANIFEST, entries)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise SteerError(f"cannot edit {src} into {out}: {exc.strerror or exc}{where}") from None
    return stats


def _open(src: Path):
    """(GGUF source or None, adapter or None, shards or None, input files): a GGUF's adapter and
    shards come from its metadata once its side files are written."""
    if src.suffix == ".gguf":
        from steer.checkpoint.gguf_io import GGUFSource

        return GGUFSource(src), None, None, [src]
    if not src.is_dir():
        raise SteerError(f"no such model folder: {src}")
    adapter = adapter_for(architecture(src))  # an unsupported architecture fails before the shards are read
    shards = folder_shards(src)
    return None, adapter, shards, [src / s.file for s in shards]


def _write_all(
    source, shards: list[Shard], tmp: Path, editor: _Editor, norms: set[str], hashes: bool, name: str
) -> dict[str, str]:
    """Every tensor edited or copied into tmp, with a progress bar; the output files' sha256 if hashes."""
    total = sum(e.nbytes for s in shards for e in s.entries)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"edit {name}", disable=None) as bar:
        if source is not None:
            _write_gguf(source, shards, tmp, editor, norms, bar)
            return {s.file: sha256_file(tmp / s.file) for s in shards} if hashes else {}
        return _write_folder(shards, tmp, editor, norms, bar, hashes)


def _in_background(fn) -> Future:
    """Run fn in a daemon thread (input hashing: an error exit does not wait for it)."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


# ------------------------------------------------------------------------------------- write


class _Editor:
    """Applies TensorEdits in place: steer.edit.kernels.project on each matrix (float32 maths)."""

    def __init__(
        self,
        basis: torch.Tensor,
        norm_offset: float,
        preserve_norm: bool,
        readout: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None,
    ):
        self.basis, self.norm_offset, self.preserve_norm = basis, norm_offset, preserve_norm
        self.readout = readout
        self.norm_bases: dict[str, torch.Tensor] = {}
        self._bufs = [torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.uint8)]

    def add_norm(self, name: str, weight: torch.Tensor) -> None:
        """Basis for writers behind this RMSNorm (exactly steer.edit.project.writer_basis)."""
        scale = self.norm_offset + weight.to(torch.float32)
        self.norm_bases[name] = orthonormal_basis((self.basis * scale[:, None]).T)

    def apply(self, t: torch.Tensor, edit: TensorEdit) -> None:
        wb = self.basis if edit.norm is None else self.norm_bases[edit.norm]
        for m in t.unbind(0) if edit.fused else (t,):
            project(m, wb, edit.side, edit.strength, self.preserve_norm, out=m)
        if edit.readout is not None:
            r, vectors = self.readout
            add_rank1(t, r, vectors[edit.readout])

    @property
    def buffer_bytes(self) -> int:
        return sum(b.numel() for b in self._bufs)

    def buffer(self, nbytes: int, slot: int = 0) -> torch.Tensor:
        """Reused uint8 buffer number `slot` (0 or 1), grown to at least nbytes (so at most
        twice the largest edited tensor in all). The caller makes sure no write still reads it."""
        if self._bufs[slot].numel() < nbytes:
            self._bufs[slot] = torch.empty(0, dtype=torch.uint8)  # free the old one first
            self._bufs[slot] = torch.empty(nbytes, dtype=torch.uint8)
        return self._bufs[slot][:nbytes]


def _read_tensor(e: Entry, fd: int, raw: torch.Tensor) -> torch.Tensor:
    pread_into(fd, memoryview(raw.numpy()), e.offset)
    return raw.view(TORCH_DTYPES[e.dtype]).view(e.shape)


def _write_folder(
    shards: list[Shard], tmp: Path, editor: _Editor, norms: set[str], bar, hashes: bool
) -> dict[str, str]:
    """Write every shard (header, then data in order); return their sha256 if hashes."""
    fds: dict[Path, int] = {}
    fd = lambda path: fds.setdefault(path, os.open(path, os.O_RDONLY))  # noqa: E731
    digests = {}
    try:
        for e in (e for s in shards for e in s.entries if e.name in norms):  # post-norms first (tiny)
            editor.add_norm(e.name, _read_tensor(e, fd(e.src), torch.empty(e.nbytes, dtype=torch.uint8)))
        for shard in shards:
            dst = tmp / shard.file
            out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            hasher = FileHasher(dst) if hashes else None
            try:
                _write_shard(shard, out, fd, editor, bar, hasher)
            finally:
                os.close(out)
                digest = hasher.finish() if hasher else None
            if digest:
                digests[shard.file] = digest
    finally:
        for f in fds.values():
            os.close(f)
    return digests


def _write_shard(shard: Shard, out: int, fd, editor: _Editor, bar, hasher: FileHasher | None) -> None:
    """Header, then every tensor at its offset. Edited tensors alternate between two buffers and
    are written by a background thread, so writing tensor i overlaps reading and projecting
    tensor i+1 (pwrite and the kernel release the GIL). Progress and the hasher advance in file
    order, only over bytes whose write has finished."""
    head = header_bytes([(e.name, e.dtype, e.shape, e.nbytes) for e in shard.entries], shard.metadata)
    pwrite_all(out, memoryview(head), 0)
    at, final, copier = len(head), len(head), Copier()
    pending: deque[tuple[Future | None, int]] = deque()  # writes and copies in file order
    in_use: list[Future | None] = [None, None]  # the write still reading each buffer

    def retire(wait: bool) -> None:
        nonlocal final
        while pending and (wait or pending[0][0] is None or pending[0][0].done()):
            job, n = pending.popleft()
            if job is not None:
                job.result()  # a failed write raises here
            final += n
            bar.update(n)
            if hasher:
                hasher.advance(final)

    with ThreadPoolExecutor(1, thread_name_prefix="steer-write") as writer:
        i, slot = 0, 0
        while i < len(shard.entries):
            e = shard.entries[i]
            if e.edit is not None:
                if in_use[slot] is not None:
                    in_use[slot].result()
                raw = editor.buffer(e.nbytes, slot)
                editor.apply(_read_tensor(e, fd(e.src), raw), e.edit)
                in_use[slot] = writer.submit(pwrite_all, out, memoryview(raw.numpy()), at)
                pending.append((in_use[slot], e.nbytes))
                at, slot, i = at + e.nbytes, 1 - slot, i + 1
                retire(False)
                continue
            j, n = i + 1, e.nbytes  # coalesce a run of tensors contiguous in the same input file
            while (
                j < len(shard.entries)
                and (f := shard.entries[j]).edit is None
                and f.src == e.src
                and f.offset == e.offset + n
            ):
                n += f.nbytes
                j += 1
            for k in range(0, n, CHUNK):  # copy in steps (progress, hashing)
                step = min(CHUNK, n - k)
                copier.copy(fd(e.src), e.offset + k, out, at, step)
                pending.append((None, step))
                at += step
                retire(False)
            i = j
        retire(True)


def _write_gguf(source, shards: list[Shard], tmp: Path, editor: _Editor, norms: set[str], bar) -> None:
    """Dequantized GGUF tensors, edited, written at their slots (they arrive in file order; a
    writer whose post-norm comes later waits for it)."""
    slots, outs = {}, []
    try:
        for s in shards:
            out = os.open(tmp / s.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            outs.append(out)
            head = header_bytes([(e.name, e.dtype, e.shape, e.nbytes) for e in s.entries], s.metadata)
            pwrite_all(out, memoryview(head), 0)
            pos = len(head)
            for e in s.entries:
                slots[e.name] = (e, out, pos)
                pos += e.nbytes
        copies = {e.copy_of: name for name, (e, _, _) in slots.items() if e.copy_of}
        pending: dict[str, list] = {}
        todo = {name for name, (e, _, _) in slots.items() if not e.copy_of}

        def put(name: str, t: torch.Tensor) -> None:
            e, out, pos = slots[name]
            if e.edit is not None:
                editor.apply(t, e.edit)
            pwrite_all(out, memoryview(t.numpy()).cast("B"), pos)
            bar.update(e.nbytes)

        for name, tensor in source.tensors():
            if name not in todo:
                raise SteerError(f"GGUF tensor {name} is not in the file's tensor list, or comes twice")
            todo.discard(name)
            t = tensor.to(torch.float32).contiguous()
            if name in copies:
                put(copies[name], t)  # the original, written before the edit
            edit = slots[name][0].edit
            if edit is not None and edit.norm is not None and edit.norm not in editor.norm_bases:
                pending.setdefault(edit.norm, []).append((name, t))
                continue
            put(name, t)
            if name in norms:
                editor.add_norm(name, t)
                for waiting, wt in pending.pop(name, []):
                    put(waiting, wt)
        if todo or pending:
            raise SteerError(f"GGUF file ended before tensor {sorted(todo or pending)[0]}")
    finally:
        for out in outs:
            os.close(out)


# -------------------------------------------------------------------------- side files, stats


def _side_files(src: Path | None, tmp: Path, shards: list[Shard], tied: bool, config: dict) -> list[str]:
    """Copy config, tokenizer, templates...; rewrite the index and (untied) config. Returns the
    names of files not copied (other weight formats, folders)."""
    skipped = []
    if src is not None:
        for p in sorted(src.iterdir()):
            if p.name in {s.file for s in shards} | {INDEX, MANIFEST}:
                continue
            if not p.is_file() or p.suffix in _OTHER_WEIGHTS:
                skipped.append(p.name)
                continue
            shutil.copyfile(p, tmp / p.name)
    if len(shards) > 1 or (src is not None and (src / INDEX).is_file()):
        index = json.loads((src / INDEX).read_text()) if src is not None and (src / INDEX).is_file() else {}
        index.setdefault("metadata", {})["total_size"] = sum(e.nbytes for s in shards for e in s.entries)
        index["weight_map"] = {e.name: s.file for s in shards for e in s.entries}
        (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    if tied:  # as save_pretrained writes the config of the untied model
        for c in (config, config.get("text_config")):
            if isinstance(c, dict):
                c["tie_word_embeddings"] = False
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return skipped


def _stats(shards: list[Shard], tied: bool, skipped: list[str], buffer_bytes: int, seconds: float) -> dict:
    entries = [e for s in shards for e in s.entries]
    edited = [e for e in entries if e.edit is not None]
    edited_bytes = sum(e.nbytes for e in edited)
    return {
        "tensors_edited": len(edited),
        "tensors_copied": len(entries) - len(edited),
        "bytes_edited": edited_bytes,
        "bytes_copied": sum(e.nbytes for e in entries) - edited_bytes,
        "shards": len(shards),
        "untied_embeddings": tied,
        "skipped_files": skipped,
        "buffer_bytes": buffer_bytes,
        "seconds": round(seconds, 3),
    }


def _manifest(
    src: Path,
    basis: torch.Tensor,
    profiles,
    embed: float,
    preserve_norm: bool,
    stats: dict,
    extra: dict | None,
    in_hashes: dict[str, str],
    out_hashes: dict[str, str],
    gguf: bool,
) -> dict:
    in_sha = (in_hashes.get(src.name) if gguf else combine_hashes(in_hashes)) if in_hashes else None
    extra = dict(extra or {})
    given_input = extra.pop("input", None) or {}
    edit = {
        "rank": basis.shape[1],
        "embed": embed,
        "preserve_norm": preserve_norm,
        "streamed": True,
        "profiles": {k: asdict(v) for k, v in (profiles or {}).items()},
    }
    entries = {"edit": edit, **extra}  # a recorded edit's parameters replace the streaming summary
    return build_manifest(
        kernel=kernel_name("cpu"),  # native and blocked round differently (1 bf16 ulp at most)
        **entries,
        input={"model": str(src), "sha256": in_sha, **given_input},
        stats=stats,
        output_sha256=combine_hashes(out_hashes) if out_hashes else None,
    )
