"""Save: atomic output folders and Hugging Face checkpoints with a manifest.

Everything is written into a hidden temporary folder beside the target and renamed into
place only when complete, so a crash, Ctrl-C or SIGTERM (handle_sigterm) never leaves a
half-written output, and an existing folder is replaced only with force=True.

The temporary folder is named `.{name}.tmp-{pid}-{host}-{random}`. A run killed outright
(SIGKILL, power loss) cannot remove it, so the next run writing the same output removes a
sibling whose process is no longer running on this host (remove_stale), printing one line
to stderr; a folder whose process is alive, or that another host wrote, is only named.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from steer.errors import SteerError

# This host's name as it appears in temporary names: [A-Za-z0-9_-] only, so a name can be parsed back.
HOST = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname().split(".")[0])[:63] or "host"


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM once handle_sigterm() is installed: a KeyboardInterrupt,
    so every `except KeyboardInterrupt` and atomic_dir's cleanup treat it as Ctrl-C."""

    signum = signal.SIGTERM


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def handle_sigterm() -> bool:
    """Make SIGTERM (timeout, SLURM, Kubernetes, plain `kill`) interrupt the run like Ctrl-C.

    Installs a handler that raises Terminated (a KeyboardInterrupt) in the main thread, so
    atomic_dir removes its temporary folder and the CLI's Ctrl-C path reports and exits.
    Safe to call more than once. Returns whether the handler is installed: False when called
    outside the main thread (Python allows signal handlers only there) or when SIGTERM already
    has another handler or is ignored (that choice is left alone).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return True
    if current not in (signal.SIG_DFL, None):
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def check_output(out: Path, force: bool, inputs: tuple[Path | None, ...] = ()) -> None:
    """Fail early (before any heavy work) if `out` cannot be written as asked; then remove the
    temporary folders that killed runs left beside it (remove_stale)."""
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
    remove_stale(out)


@contextmanager
def atomic_dir(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `out`, on any error (Ctrl-C, and SIGTERM
    with handle_sigterm) it is removed."""
    out = Path(out)
    check_output(out, force)
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(out, "tmp"), dir=out.resolve().parent))
    try:
        yield tmp
        if out.exists():
            old = out.resolve().parent / f"{_prefix(out, 'old')}{secrets.token_hex(4)}"
            os.replace(out, old)
            os.replace(tmp, out)
            _remove(old)
        else:
            os.replace(tmp, out)
    except BaseException as exc:
        _remove(tmp)
        reason = _write_failure(exc)
        if reason:
            raise SteerError(f"writing {out}: {reason} (nothing was written)") from None
        raise


def _write_failure(exc: BaseException) -> str | None:
    """Why a write failed, when the machine and not steer is the cause (disk full, no permission); else None."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        return exc.strerror
    if type(exc).__name__ == "SafetensorError" and "(os error" in str(exc):  # safetensors wraps the OS error's text
        return str(exc).split("I/O error: ")[-1]
    return None


def _prefix(out: Path, kind: str) -> str:
    """`.{name}.{kind}-{pid}-{host}-`: a random part follows (tempfile's 8 characters)."""
    return f".{out.name}.{kind}-{os.getpid()}-{HOST}-"


def _remove(path: Path) -> None:
    """Remove a folder or file; a second Ctrl-C or SIGTERM does not cut the removal short."""
    for _ in range(100):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            return
        except KeyboardInterrupt:
            continue
        except OSError:
            return


# ------------------------------------------------------------------------ stale temporaries

_noted: set[str] = set()  # kept temporaries already named once in this process


def _pattern(name: str) -> re.Pattern:
    """Temporary (tmp) and replaced (old) siblings of output `name`: `.{name}.tmp-{pid}-{host}-{random}`,
    or `.{name}.tmp-{pid}-{random}` without the host (steer.checkpoint.gguf_io's temporary file)."""
    return re.compile(
        rf"\.{re.escape(name)}\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?:(?P<host>[A-Za-z0-9_-]+)-)?[a-z0-9_]{{8}}"
    )


def _alive(pid: int) -> bool:
    """Whether process pid exists on this host (unsure counts as alive: the folder is kept)."""
    if os.name != "posix" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:
        return False  # larger than any pid
    except OSError:
        return True  # EPERM: someone else's process
    return True


def _bytes(path: Path) -> int:
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
        total = 0
        for root, _, files in os.walk(path):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
        return total
    except OSError:
        return 0


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def remove_stale(out: Path) -> list[Path]:
    """Remove the temporary folders (and files) that runs writing `out` left when they were killed.

    A sibling `.{name}.tmp-{pid}-{host}-{random}` (or `.old-`: the previous output of a --force
    run killed mid-swap) is removed when it was made on this host by a process that is no longer
    running; one line on stderr names it and its size. It is kept, and named once, when its
    process still runs (another run is writing it), when another host made it (a shared file
    system: its process cannot be checked from here), or when its name has no pid (an older
    steer's). Returns the paths removed.
    """
    out = Path(out)
    try:
        parent = out.resolve().parent
        siblings = [p for p in parent.iterdir() if p.name.startswith(f".{out.name}.")] if parent.is_dir() else []
    except OSError:
        return []
    pattern, legacy = _pattern(out.name), re.compile(rf"\.{re.escape(out.name)}\.tmp-[a-z0-9_]{{8}}")
    removed = []
    for p in sorted(siblings):
        if m := pattern.fullmatch(p.name):
            pid, host = int(m["pid"]), m["host"] or HOST
            if pid == os.getpid() and host == HOST:
                continue  # this process's own
            if host == HOST and not _alive(pid):
                size, kind = _bytes(p), "folder" if p.is_dir() else "file"
                _remove(p)
                if not p.exists():
                    removed.append(p)
                    what = f"temporary {kind}" if m["kind"] == "tmp" else "previous output it was replacing"
                    print(
                        f"steer: removed {p} ({_size(size)}): the {what} of an interrupted run "
                        f"(process {pid}, no longer running)",
                        file=sys.stderr,
                    )
                continue
            why = (
                f"belongs to process {pid}, which is still running (another run writing {out.name}?)"
                if host == HOST
                else f"was made on host {host}; remove it if no run there is writing {out.name}"
            )
        elif legacy.fullmatch(p.name):
            why = f"was left by an earlier steer; remove it if no run is writing {out.name}"
        else:
            continue
        if str(p) not in _noted:
            _noted.add(str(p))
            print(f"steer: note: {p} ({_size(_bytes(p))}) {why}; kept", file=sys.stderr)
    return removed


def save_checkpoint(model, tokenizer, folder: Path) -> None:
    """A checkpoint AutoModelForCausalLM.from_pretrained loads: safetensors weights, config,
    generation config, tokenizer and chat template."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def write_json(path: Path, data: dict) -> None:
    """Write data as indented UTF-8 JSON with a final newline (values JSON cannot hold are written as str)."""
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
