"""JSON-lines reading: blank lines skipped, line numbers kept, one error line per problem."""

import pytest

from steer.errors import SteerError
from steer.jsonl import read_jsonl


class OwnError(SteerError):
    pass


def test_rows_keep_their_line_numbers(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n  \n[2]\n')
    assert read_jsonl(path, "answers file") == [(1, {"a": 1}), (4, [2])]


@pytest.mark.parametrize(
    "text, message",
    [(None, "no such answers file"), ("\n \n", "is empty"), ('{"a": 1}\n{oops\n', "a.jsonl:2: not JSON")],
)
def test_problems_are_one_line_of_the_callers_error(tmp_path, text, message):
    path = tmp_path / "a.jsonl"
    if text is not None:
        path.write_text(text)
    with pytest.raises(OwnError, match=message) as err:
        read_jsonl(path, "answers file", OwnError)
    assert "\n" not in str(err.value)


def test_strings_with_unicode_line_separators_stay_one_row(tmp_path):
    import json

    # MMLU holds a U+0085; json.dumps(ensure_ascii=False) writes it, U+2028, U+001C raw; str.splitlines splits there
    texts = ["Who\u0085wrote it?", "a\u2028b\u2029c", "x\x1cy\x1dz\x1e", "CR\r\nLF"]
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps({"t": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    assert [row["t"] for _, row in read_jsonl(path, "file")] == texts
    assert [i for i, _ in read_jsonl(path, "file")] == [1, 2, 3, 4]
