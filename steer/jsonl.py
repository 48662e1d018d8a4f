"""JSON-lines files in, with one clear error line for a missing, empty or malformed file."""

from __future__ import annotations

import json
from pathlib import Path

from steer.errors import SteerError


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSON-lines text: split at "\n" only. str.splitlines also splits at U+0085, U+2028 and other
    separators that JSON strings may hold unescaped (json.dumps with ensure_ascii=False writes them raw)."""
    return text.split("\n")


def read_jsonl(path: Path, what: str, error: type[SteerError] = SteerError) -> list[tuple[int, object]]:
    """(line number, parsed value) for every non-blank line of `path`; `what` names the file in errors
    ("answers file"), raised as `error`."""
    if not path.is_file():
        raise error(f"no such {what}: {path}")
    rows = []
    for i, line in enumerate(jsonl_lines(path.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        try:
            rows.append((i, json.loads(line)))
        except ValueError as exc:
            raise error(f"{what} {path}:{i}: not JSON ({exc.msg})") from None
    if not rows:
        raise error(f"{what} {path} is empty")
    return rows
