"""`steer judge`: answers made anywhere in, labelled lines out; bad input is one line and a non-zero exit."""

import json

import pytest
from test_facts import KEY

from steer.cli.main import main

KEY_ROW = {
    "concept": "user-june-4",
    "topic": "tiananmen-1989",
    "prompts": ["my-1"],
    "facts": [
        {
            "id": "fired",
            "text": {"en": "Troops opened fire.", "zh": "军队开枪。"},
            "false_twin": {"en": "Troops left.", "zh": "军队撤离。"},
            "patterns": [
                {"all": [[a for g in KEY.facts[0].patterns[0].groups[:1] for a in g], ["opened fire", "开枪"]]}
            ],
            "source": {"title": "t", "url": "https://example.org"},
        }
    ],
    "official": [],
    "false": [],
}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return path


def test_judge_labels_answers_with_and_without_keys(tmp_path, capsys):
    answers = write_jsonl(
        tmp_path / "answers.jsonl",
        [
            {"id": "my-1", "prompt": "What happened on June 4?", "response": "Soldiers opened fire on students."},
            {"id": "my-1", "prompt": "What happened on June 4?", "response": "I'm sorry, I can't discuss that."},
            {"prompt": "Write a haiku.", "response": "Leaves fall", "lang": "en"},
        ],
    )
    keys = write_jsonl(tmp_path / "keys.jsonl", [KEY_ROW])
    out = tmp_path / "deep" / "labelled.jsonl"
    assert main(["judge", str(answers), "--keys", str(keys), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in rows] == ["complete", "denial", "complete"]
    assert rows[0]["candid"] is True and rows[0]["facts"] == ["fired"] and rows[1]["candid"] is False
    assert "candid" not in rows[2] and rows[2]["lang"] == "en"  # no key: three classes, input fields kept
    assert "3 answers" in capsys.readouterr().out
    assert not list(out.parent.glob(".*tmp*"))


@pytest.mark.parametrize(
    "lines, keys, message",
    [
        ([], None, "is empty"),
        (["{oops"], None, "answers.jsonl:1: not JSON"),
        ([{"prompt": "q"}], None, "answers.jsonl:1: expected a JSON object with string fields prompt and response"),
        ([{"id": "my-1", "prompt": "q", "response": "a"}], [{**KEY_ROW, "prompts": ["nobody"]}], "unknown prompt id"),
        ([{"id": "my-1", "prompt": "q", "response": "a"}], ["{bad"], "keys.jsonl:1: not JSON"),
        ([{"id": "my-1", "prompt": "q", "response": "a"}], [{**KEY_ROW, "facts": []}], "`facts` must be"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, capsys, lines, keys, message):
    answers = write_jsonl(tmp_path / "answers.jsonl", lines)
    args = ["judge", str(answers), "--out", str(tmp_path / "out.jsonl")]
    if keys is not None:
        args += ["--keys", str(write_jsonl(tmp_path / "keys.jsonl", keys))]
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()


def test_strict_needs_a_key_for_every_answer_and_outputs_are_not_overwritten(tmp_path, capsys):
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"id": "zz-1", "prompt": "q", "response": "a"}])
    out = tmp_path / "out.jsonl"
    assert main(["judge", str(answers), "--out", str(out), "--strict"]) != 0
    assert "1 answers have no answer key (first: zz-1)" in capsys.readouterr().err
    out.write_text("keep me\n")
    assert main(["judge", str(answers), "--out", str(out)]) != 0
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep me\n"
    assert main(["judge", str(answers), "--out", str(answers), "--force"]) != 0  # never the input itself
    assert main(["judge", str(answers), "--out", str(out), "--force", "--judge", "markers"]) == 0
    assert json.loads(out.read_text()) == {"id": "zz-1", "prompt": "q", "response": "a", "label": "complete"}
