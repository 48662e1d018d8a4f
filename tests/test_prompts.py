import json
from pathlib import Path

import pytest

from steer.errors import SteerError
from steer.prompts import SHIPPED, chat_texts, load_prompts, post_instruction_length


@pytest.mark.parametrize(
    "name,minimum", [("sensitive", 250), ("controls", 100), ("harmless", 300), ("harmful", 150), ("critique", 100)]
)
def test_shipped_sets_meet_spec(name, minimum):
    prompts = load_prompts(name)
    assert len(prompts) >= minimum
    assert len({p.id for p in prompts}) == len(prompts)
    assert {p.split for p in prompts} == {"train", "val", "test"}
    assert {p.lang for p in prompts} == {"en", "zh"}
    assert len({" ".join(p.text.lower().split()) for p in prompts}) == len(prompts)


def test_sensitive_set_coverage():
    prompts = load_prompts("sensitive")
    assert sum(p.lang == "en" for p in prompts) >= 150 and sum(p.lang == "zh" for p in prompts) >= 100
    assert len({p.topic for p in prompts}) >= 12


def test_shipped_sets_do_not_overlap():
    seen = {}
    for name in SHIPPED:
        for p in load_prompts(name):
            assert p.text not in seen, f"{p.id} duplicates {seen[p.text]}"
            seen[p.text] = p.id


def test_critique_requests_share_concept_and_split_across_languages_and_leave_the_audit_alone():
    from steer.jsonl import read_jsonl

    prompts = load_prompts("critique")
    split_of = {}
    for p in prompts:
        assert split_of.setdefault(p.concept, p.split) == p.split, p.id
    audit = Path(__file__).resolve().parents[1] / "steer" / "data" / "slant" / "mirrored.jsonl"
    held_out = {" ".join(r["prompt"].lower().split()) for _, r in read_jsonl(audit, "mirrored set")}
    assert not [p.id for p in prompts if " ".join(p.text.lower().split()) in held_out]


def test_filters():
    test_zh = load_prompts("sensitive", "test", "zh")
    assert test_zh and all(p.split == "test" and p.lang == "zh" for p in test_zh)


def test_user_files(tmp_path):
    (tmp_path / "a.txt").write_text("first\n\n second \n", encoding="utf-8")
    assert [p.text for p in load_prompts(str(tmp_path / "a.txt"))] == ["first", "second"]
    (tmp_path / "b.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n", encoding="utf-8")
    assert load_prompts(str(tmp_path / "b.jsonl"))[0].text == "hi"
    (tmp_path / "c.csv").write_text("goal,target\nDo X,Sure\nDo Y,Sure\n", encoding="utf-8")
    assert [p.text for p in load_prompts(str(tmp_path / "c.csv"))] == ["Do X", "Do Y"]
    assert [p.text for p in load_prompts(f"{tmp_path / 'c.csv'}:target")] == ["Sure", "Sure"]


@pytest.mark.parametrize(
    "content,suffix,message",
    [
        ("", ".txt", "is empty"),
        ("\n  \n", ".txt", "is empty"),
        ("{not json\n", ".jsonl", ":1: expected a JSON object"),
        ('{"text": ""}\n', ".jsonl", "empty prompt text"),
        ("a,b\n1,2\n", ".csv", "no column"),
        ("x", ".parquet", "unsupported prompt file type"),
    ],
)
def test_bad_prompt_files(tmp_path, content, suffix, message):
    path = tmp_path / f"p{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SteerError, match=message):
        load_prompts(str(path))


def test_missing_prompt_file():
    with pytest.raises(SteerError, match="no such prompt file"):
        load_prompts("/nonexistent/prompts.txt")


def test_chat_template_and_positions(tokenizer):
    text = chat_texts(tokenizer, ["hello"])[0]
    assert text.endswith("<|im_start|>assistant\n") and "hello" in text
    assert post_instruction_length(tokenizer) == len(
        tokenizer("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    )
