"""JSON-lines files in, with one clear error line for a missing, empty or malformed file."""

from __future__ import annotations

import json
from pathlib import Path

from steer.errors import SteerError


def read_jsonl(path: Path, what: str, error: type[SteerError] = SteerError) -> list[tuple[int, object]]:
    """(line number, parsed value) for every non-blank line of `path`; `what` names the file in errors
    ("answers file"), raised as `error`."""
    if not path.is_file():
        raise error(f"no such {what}: {path}")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((i, json.loads(line)))
        except ValueError as exc:
            raise error(f"{what} {path}:{i}: not JSON ({exc.msg})") from None
    if not rows:
        raise error(f"{what} {path} is empty")
    return rows
