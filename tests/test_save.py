import pytest

from steer.errors import SteerError
from steer.checkpoint.save import atomic_dir, check_output


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
