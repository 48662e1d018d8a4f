import os
import signal
import subprocess
import sys
import threading

import pytest
from safetensors import SafetensorError

from steer.checkpoint import save
from steer.checkpoint.save import atomic_dir, check_output
from steer.errors import SteerError


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out, force=False) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(SteerError, match="already exists .*--force"):
        with atomic_dir(out, force=False):
            pass
    assert (out / "keep.txt").read_text() == "old"
    with atomic_dir(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["new.txt"]


def test_output_must_not_be_input(tmp_path):
    with pytest.raises(SteerError, match="is the input checkpoint"):
        check_output(tmp_path / "m", force=True, inputs=(tmp_path / "m",))


def test_missing_parents_are_created_but_a_file_in_the_way_is_an_error(tmp_path):
    check_output(tmp_path / "a" / "b", force=False)  # fine: parents are created on write
    with atomic_dir(tmp_path / "a" / "b", force=False) as tmp:
        (tmp / "x").write_text("1")
    assert (tmp_path / "a" / "b" / "x").read_text() == "1"
    (tmp_path / "file").write_text("")
    with pytest.raises(SteerError, match="is not a folder"):
        check_output(tmp_path / "file" / "out", force=False)


# ------------------------------------------------------------ interrupted writes (issue 19)

# A slow atomic write in a child process, ended the way the CLI ends a Ctrl-C.
WRITER = """
import signal, sys, time
from pathlib import Path
from steer.checkpoint.save import atomic_dir, handle_sigterm

# Ctrl-C as in a terminal, also when pytest itself runs in the background (SIGINT then arrives ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)

assert handle_sigterm() and handle_sigterm()  # twice is fine
try:
    with atomic_dir(Path(sys.argv[1]), force=False) as tmp:
        (tmp / "weights.bin").write_bytes(bytes(1 << 20))
        print(tmp.name, flush=True)
        time.sleep(60)
except KeyboardInterrupt:
    print("steer: interrupted (no output was written)", file=sys.stderr)
    sys.exit(130)
"""


def _start_writer(out):
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    name = proc.stdout.readline().strip()  # the temporary folder exists and holds data
    assert name.startswith(f".{out.name}.tmp-{proc.pid}-{save.HOST}-"), name
    assert (out.parent / name / "weights.bin").is_file()
    return proc, name


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no process has it (pids are not reused this fast)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_sigterm_ends_a_write_like_ctrl_c(sig, tmp_path):
    """timeout, SLURM and Kubernetes send SIGTERM: same exit, same message, nothing left behind."""
    out = tmp_path / "out"
    proc, _ = _start_writer(out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip() == "steer: interrupted (no output was written)"
    assert list(tmp_path.iterdir()) == []


def test_sigkill_leftover_is_removed_by_the_next_write(tmp_path, capfd):
    out = tmp_path / "out"
    proc, name = _start_writer(out)
    proc.kill()  # SIGKILL: nothing can clean up
    proc.communicate(timeout=30)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    with atomic_dir(out, force=False) as tmp:
        (tmp / "x").write_text("1")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0] and "(1.0 MiB)" in err[0] and f"process {proc.pid}" in err[0]


def _leftover(folder, name: str, nbytes: int = 3000):
    path = folder / name
    path.mkdir()
    (path / "model.safetensors").write_bytes(bytes(nbytes))
    return path


def test_stale_folder_of_a_dead_process_is_removed(tmp_path, capfd):
    pid = _dead_pid()
    stale = _leftover(tmp_path, f".out.tmp-{pid}-{save.HOST}-abc_1234")
    old = _leftover(tmp_path, f".out.old-{pid}-{save.HOST}-0f0f0f0f")  # killed while swapping in a --force output
    gguf = tmp_path / f".out.tmp-{pid}-1a2b3c4d"  # gguf_io's temporary file (no host in its name)
    gguf.write_bytes(bytes(10))
    other = _leftover(tmp_path, f".other.tmp-{pid}-{save.HOST}-abcdefgh")  # another output's: not ours to judge
    check_output(tmp_path / "out", force=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 3
    assert all(line.startswith("steer: removed ") and f"process {pid}, no longer running" in line for line in err)
    assert any(str(stale) in line and "(2.9 KiB)" in line and "temporary folder" in line for line in err)
    assert any(str(old) in line and "previous output" in line for line in err)
    assert any(str(gguf) in line and "(10 B)" in line and "temporary file" in line for line in err)


def test_folder_of_a_running_process_is_kept(tmp_path, capfd):
    """Another run writing the same output (alive pid), another host's run (shared file system) and
    an older steer's folder (no pid) are named once, never removed."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = _leftover(tmp_path, f".out.tmp-{sleeper.pid}-{save.HOST}-abcdefgh")
        remote = _leftover(tmp_path, f".out.tmp-{_dead_pid()}-some-other-node-abcdefgh")
        legacy = _leftover(tmp_path, ".out.tmp-k2j4h5g6")
        with atomic_dir(tmp_path / "out", force=False) as tmp:
            (tmp / "x").write_text("1")
        check_output(tmp_path / "out", force=True)  # a second check in the same run names them no more
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, remote.name, legacy.name, "out"])
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("steer: note: ") and line.endswith("; kept") for line in err)
    assert any(str(live) in line and f"process {sleeper.pid}, which is still running" in line for line in err)
    assert any(str(remote) in line and "host some-other-node" in line for line in err)
    assert any(str(legacy) in line and "earlier steer" in line for line in err)


def test_a_refused_command_removes_nothing(tmp_path):
    (tmp_path / "out").mkdir()
    stale = _leftover(tmp_path, f".out.tmp-{_dead_pid()}-{save.HOST}-abcdefgh")
    with pytest.raises(SteerError, match="already exists"):
        check_output(tmp_path / "out", force=False)
    assert stale.exists()


def test_handle_sigterm_only_in_the_main_thread_and_leaves_other_handlers():
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        result = []
        thread = threading.Thread(target=lambda: result.append(save.handle_sigterm()))
        thread.start()
        thread.join()
        assert result == [False] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert save.handle_sigterm() and save.handle_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert not save.handle_sigterm()  # an ignored SIGTERM stays ignored
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(28, "No space left on device"),
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
)
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, exc):
    with pytest.raises(SteerError, match=r"writing \S+out: No space left on device.*\(nothing was written\)$"):
        with atomic_dir(tmp_path / "out", force=False) as tmp:
            (tmp / "part").write_text("x")
            raise exc
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_other_errors_are_not_disguised(tmp_path):
    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "out", force=False):
            raise ValueError("a bug")
