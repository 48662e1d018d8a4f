"""The public API: every exported name resolves and is documented; docs/api.md's example runs."""

import re
from pathlib import Path

import pytest

import steer

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_every_public_name_resolves_and_has_a_docstring():
    for name in steer.__all__[1:]:
        assert (getattr(steer, name).__doc__ or "").strip(), name
    with pytest.raises(AttributeError):
        steer.no_such_name  # noqa: B018


@pytest.mark.slow
def test_the_documented_example_runs(capsys):
    block = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S).group(1)
    exec(compile(block, str(DOC), "exec"), {})
    out = capsys.readouterr().out
    before, after = map(float, re.search(r"refusal score (\S+) -> (\S+) with", out).groups())
    assert after < before  # removing the direction lowers the refusal score
