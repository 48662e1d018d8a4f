"""Answer keys: malformed files fail with one line; the shipped keys cover every shipped prompt and match their own
facts; concepts and splits: twins share a split, no concept crosses splits, every topic is in every split."""

import json
from collections import defaultdict

import pytest

from steer.eval.facts import claim_matches
from steer.eval.keys import KeyFileError, KeySet, load_keys, parse_key, read_keys
from steer.prompts import load_prompts

FACT = {
    "id": "f1",
    "text": {"en": "Troops fired.", "zh": "军队开枪。"},
    "false_twin": {"en": "Troops left.", "zh": "军队撤离。"},
    "patterns": [{"all": [["troop", "军队"], ["fired", "开枪"]]}],
    "source": {"title": "t", "url": "https://example.org"},
}
KEY = {"concept": "c1", "topic": "t", "prompts": ["p-en", "p-zh"], "facts": [FACT], "official": [], "false": []}


def write(tmp_path, rows):
    path = tmp_path / "keys.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    "row, message",
    [
        ("{not json", "not JSON"),
        ({**KEY, "facts": []}, "`facts` must be a non-empty list"),
        ({**KEY, "prompts": []}, "prompts must be a non-empty list"),
        ({k: v for k, v in KEY.items() if k != "concept"}, "missing string field `concept`"),
        ({**KEY, "facts": [{**FACT, "source": {"title": "t"}}]}, "claim f1: a fact needs `source`"),
        ({**KEY, "facts": [{**FACT, "false_twin": {"en": "x"}}]}, "false_twin needs non-empty `en` and `zh`"),
        ({**KEY, "facts": [{**FACT, "patterns": [{"all": []}]}]}, "`all` (and `any`) must be non-empty lists"),
        ({**KEY, "facts": [{**FACT, "patterns": [{"all": [["a"]], "number": {"lo": 5, "hi": 1}}]}]}, "lo <= hi"),
        ({**KEY, "facts": [FACT, FACT]}, "claim ids must be unique"),
        ({**KEY, "official": "restore order"}, "`official` and `false` must be lists"),
    ],
)
def test_malformed_keys_fail_with_one_line_naming_file_and_line(tmp_path, row, message):
    with pytest.raises(KeyFileError, match="keys.jsonl") as err:
        read_keys(write(tmp_path, [KEY, row]))
    assert message in str(err.value) and ":2" in str(err.value) and "\n" not in str(err.value)


def test_unknown_prompt_ids_duplicates_and_empty_files_are_errors(tmp_path):
    key = parse_key(KEY, "x")
    with pytest.raises(KeyFileError, match="names unknown prompt id p-zh"):
        KeySet([key], known_prompts={"p-en"})
    with pytest.raises(KeyFileError, match="prompt p-en has two answer keys"):
        KeySet([key, parse_key({**KEY, "concept": "c2"}, "y")])
    with pytest.raises(KeyFileError, match="concept c1 appears twice"):
        KeySet([key, key])
    with pytest.raises(KeyFileError, match="is empty"):
        read_keys(write(tmp_path, [""]))
    with pytest.raises(KeyFileError, match="no such answer-key file"):
        load_keys([str(tmp_path / "missing.jsonl")])
    assert KeySet([key]).get("p-zh").concept == "c1" and KeySet([key]).get("other") is None


SETS = ("sensitive", "controls")


@pytest.fixture(scope="module")
def shipped():
    prompts = {name: load_prompts(name) for name in SETS}
    ids = {p.id for ps in prompts.values() for p in ps}
    return prompts, load_keys(list(SETS), known_prompts=ids)


def test_every_shipped_prompt_has_exactly_one_key_with_its_concept_and_topic(shipped):
    prompts, keys = shipped
    for name in SETS:
        for p in prompts[name]:
            key = keys.get(p.id)
            assert key is not None, f"{p.id} has no answer key"
            assert key.concept == p.concept and key.topic == p.topic, p.id
    assert len(keys) == sum(len(ps) for ps in prompts.values())


def test_each_fact_matches_its_own_text_and_differs_from_its_false_twin(shipped):
    _, keys = shipped
    for key in {k.concept: k for k in keys.by_prompt.values()}.values():
        assert 1 <= len(key.facts) <= 5, key.concept
        for fact in key.facts:
            assert any(claim_matches(fact, fact.text[lang]) for lang in ("en", "zh")), (key.concept, fact.id)
            assert fact.false_twin != fact.text, (key.concept, fact.id)


def test_twins_share_a_split_and_every_topic_is_in_every_split(shipped):
    prompts, _ = shipped
    for name in SETS:
        split_of, topics = defaultdict(set), defaultdict(set)
        for p in prompts[name]:
            split_of[p.concept].add(p.split)
            topics[p.split].add(p.topic)
        assert all(len(s) == 1 for s in split_of.values()), [c for c, s in split_of.items() if len(s) > 1]
        assert topics["train"] == topics["test"] and topics["val"] <= topics["train"], name
        assert set(topics) == {"train", "val", "test"}
