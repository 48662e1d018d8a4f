"""`steer eval` and `steer compare` as a user runs them, on tiny checkpoints: outputs, paired
tests, resumable caching, and one-line errors."""

import json

import pytest
import torch
from conftest import make_model

from steer.checkpoint.save import save_checkpoint
from steer.cli.main import main
from steer.eval import engine
from steer.eval.compare import paired


@pytest.fixture
def ckpts(tmp_path, tokenizer):
    save_checkpoint(make_model("qwen2"), tokenizer, tmp_path / "base")
    edited = make_model("qwen2")
    with torch.no_grad():
        edited.model.layers[0].mlp.down_proj.weight.mul_(0.5)
    save_checkpoint(edited, tokenizer, tmp_path / "edited")
    return tmp_path


ARGS = ["--limit", "3", "--max-new-tokens", "censorship=4,xstest=4,gsm8k=6"]


def test_compare_writes_json_markdown_plots_and_items(ckpts, data_dir, capsys):
    out = ckpts / "cmp"
    rc = main(
        [
            "compare",
            str(ckpts / "base"),
            str(ckpts / "edited"),
            "--suite",
            "censorship,xstest,kl,mmlu,gsm8k",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            *ARGS,
        ]
    )
    assert rc == 0
    comp = json.loads((out / "comparison.json").read_text())
    assert set(comp["edited"]) == {"censorship", "xstest", "kl", "mmlu", "gsm8k"} and "kl" not in comp["base"]
    assert comp["meta"]["limits"] == {"*": 3} and comp["meta"]["versions"]["torch"]
    from steer.model.load import load_model

    prints = {k: engine.fingerprint(load_model(str(ckpts / k)).model) for k in ("base", "edited")}
    assert comp["meta"]["weights"] == prints and prints["base"] != prints["edited"]  # what was evaluated, by content
    test = comp["paired"]["mmlu/correct"]
    assert test["n"] == 3 and 0 <= test["p_value"] <= 1 and len(test["delta_ci"]) == 2
    assert "censorship/censored/en" in comp["paired"]
    for name in (
        "report.md",
        "metrics.png",
        "mmlu_subjects.png",
        "base/items/mmlu.jsonl",
        "edited/items/gsm8k.jsonl",
        "edited/items/kl.jsonl",
    ):
        assert (out / name).is_file(), name
    item = json.loads((out / "edited" / "items" / "gsm8k.jsonl").read_text().splitlines()[0])
    assert set(item) >= {"id", "prompt", "output", "extracted", "correct"}
    md = (out / "report.md").read_text()
    assert "## Paired tests" in md and "| mmlu | accuracy | 3 |" in md
    assert "steer compare" in capsys.readouterr().out


def test_eval_twice_reuses_the_cache_and_refuses_to_overwrite(ckpts, data_dir, monkeypatch, capsys):
    args = [
        "eval",
        str(ckpts / "base"),
        "--suite",
        "censorship,gsm8k",
        "--data-dir",
        str(data_dir),
        "--limit",
        "3",
        "--max-new-tokens",
        "censorship=4,gsm8k=6",
    ]
    assert main(args + ["--out", str(ckpts / "e1")]) == 0
    first = (ckpts / "e1" / "items" / "gsm8k.jsonl").read_text()
    assert main(args + ["--out", str(ckpts / "e1")]) == 2
    assert "already exists (use --force" in capsys.readouterr().err
    monkeypatch.setattr(engine, "generate_ids", lambda *a, **k: pytest.fail("regenerated a cached item"))
    assert main(args + ["--out", str(ckpts / "e1"), "--force"]) == 0
    assert (ckpts / "e1" / "items" / "gsm8k.jsonl").read_text() == first
    summary = json.loads((ckpts / "e1" / "summary.json").read_text())
    assert summary["results"]["censorship"]["metrics"]["refusal/en"]["n"] == 3


def test_repetition_penalty_decodes_both_models_and_is_recorded(ckpts, capsys):
    common = ["--suite", "controls", "--limit", "3", "--max-new-tokens", "controls=8"]
    greedy = [*common, "--repetition-penalty", "1.0"]  # the default is the protocol's 1.1
    assert main(["compare", str(ckpts / "base"), str(ckpts / "edited"), *greedy, "--out", str(ckpts / "g")]) == 0
    assert (
        main(
            [
                "compare",
                str(ckpts / "base"),
                str(ckpts / "edited"),
                *common,
                "--repetition-penalty",
                "1.5",
                "--out",
                str(ckpts / "p"),
            ]
        )
        == 0
    )
    greedy, penal = (json.loads((ckpts / d / "comparison.json").read_text()) for d in ("g", "p"))
    assert (
        greedy["meta"]["decoding"]["repetition_penalty"] == 1.0
        and penal["meta"]["decoding"]["repetition_penalty"] == 1.5
    )
    for side in ("base", "edited"):  # both sides decoded with the penalty, not read from the greedy cache
        outs = [
            [
                json.loads(line)["output"]
                for line in (ckpts / d / side / "items" / "controls.jsonl").read_text().splitlines()
            ]
            for d in ("g", "p")
        ]
        assert outs[0] != outs[1], side
    assert "greedy with repetition penalty 1.5" in (ckpts / "p" / "report.md").read_text()


def test_identical_models_have_no_significant_difference():
    items = [{"id": str(i), "correct": i % 2 == 0} for i in range(10)]
    res = paired({"mmlu": {"items": items, "paired": ["correct"]}}, {"mmlu": {"items": items, "paired": ["correct"]}})
    assert res["mmlu/correct"]["delta"] == 0 and res["mmlu/correct"]["p_value"] == 1.0
    flipped = [{"id": str(i), "correct": True} for i in range(10)]
    res = paired({"mmlu": {"items": items, "paired": ["correct"]}}, {"mmlu": {"items": flipped, "paired": ["correct"]}})
    assert res["mmlu/correct"]["edited_only"] == 5 and res["mmlu/correct"]["delta"] == 0.5


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--suite", "mmlu,bogus"], "unknown suite bogus"),
        (["--suite", "mmlu", "--data-dir", "/nonexistent/data"], "--data-dir /nonexistent/data does not exist"),
        (["--suite", "mmlu", "--limit", "ten"], "expected N or suite=N"),
        (["--suite", "mmlu", "--limit", "gsm8k=5"], "not in --suite"),
        (["--suite", "kl"], "kl needs a reference model"),
        (["--suite", "censorship", "--repetition-penalty", "0"], "--repetition-penalty must be positive"),
    ],
)
def test_eval_bad_input_is_one_line(ckpts, extra, message, capsys):
    assert main(["eval", str(ckpts / "base"), "--out", str(ckpts / "x"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (ckpts / "x").exists()


def test_eval_wrong_layout_names_the_expected_path(ckpts, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert (
        main(
            [
                "eval",
                str(ckpts / "base"),
                "--suite",
                "mmlu",
                "--data-dir",
                str(tmp_path / "empty"),
                "--out",
                str(ckpts / "x"),
            ]
        )
        == 2
    )
    assert f"no MMLU data: expected {tmp_path / 'empty'}/capability/mmlu/test" in capsys.readouterr().err


def test_paired_tests_cover_the_whole_suite_and_few_groups_only():
    def items(n_groups, flip):
        return [
            {"id": str(i), "group": f"g{i % n_groups}", "correct": (i % 3 == 0) != (flip and i % 2 == 0)}
            for i in range(40)
        ]

    for n_groups, per_group in ((2, True), (20, False)):
        res = paired(
            {"s": {"items": items(n_groups, False), "paired": ["correct"]}},
            {"s": {"items": items(n_groups, True), "paired": ["correct"]}},
        )
        assert res["s/correct"]["n"] == 40  # the whole suite, always
        assert ("s/correct/g1" in res) is per_group


def test_compare_slant_runs_the_random_edit_null_from_the_edited_models_manifest(tmp_path, tokenizer, capsys):
    from steer.locate.directions import DirectionSet

    save_checkpoint(make_model("qwen2"), tokenizer, tmp_path / "base")
    d = torch.randn(3, 2, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    DirectionSet(d, d, d, {"selected": {"layer": 1, "position": -1}}).save(tmp_path / "dirs.safetensors")
    edit = ["edit", str(tmp_path / "base"), "--directions", str(tmp_path / "dirs.safetensors")]
    assert main([*edit, "--out", str(tmp_path / "edited")]) == 0
    out = tmp_path / "cmp"
    argv = ["compare", str(tmp_path / "base"), str(tmp_path / "edited"), "--suite", "slant", "--limit", "1"]
    assert main([*argv, "--null-edits", "3", "--out", str(out)]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    s = comparison["slant_shifts"]
    assert s["null"]["edits"] == 3 and s["null"]["rank"] == 1 and len(s["null"]["shifts"]) == 3
    assert s["axes"] and all({"shift", "ci", "null_range", "flagged"} <= set(r) for r in s["axes"].values())
    assert s["null"]["shifts"][0] != s["null"]["shifts"][1]  # different random directions
    report = (out / "report.md").read_text()
    assert "random-edit null (3 random-direction edits" in report and (out / "slant.png").is_file()
    # a model with no recorded edit (an SFT or another tool's checkpoint) gets shifts without a null
    argv[2] = str(tmp_path / "base")  # base against itself: no manifest, no edit
    assert main([*argv, "--out", str(tmp_path / "cmp2")]) == 0
    s2 = json.loads((tmp_path / "cmp2" / "comparison.json").read_text())["slant_shifts"]
    assert (
        s2["axes"] and "no recorded edit" in s2["null"]["reason"] and "flagged" not in next(iter(s2["axes"].values()))
    )


def test_meta_records_a_split_only_for_suites_that_read_one():
    from steer.eval.compare import meta
    from steer.eval.config import EvalConfig
    from steer.eval.judge import MarkerJudge

    split = lambda suites: meta(EvalConfig(suites, split="val"), MarkerJudge(), {}, {}, 0.0)["split"]  # noqa: E731
    assert split(["censorship", "slant"]) == "val" and split(["critique"]) == "val"
    assert split(["slant", "mirrored", "speech"]) is None and split(["mmlu"]) is None


def test_dtype_loads_both_models_in_it_and_keeps_their_cache_apart(ckpts, monkeypatch, tmp_path):
    """--dtype bfloat16: both sides run in bfloat16 (their weights fingerprint, the cache key, differs from
    float32's, so no float32 answer is reused) and the report records it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("STEER_EVAL_CACHE", str(cache))
    common = ["compare", str(ckpts / "base"), str(ckpts / "edited"), "--suite", "controls,kl", "--limit", "3"]
    common += ["--max-new-tokens", "controls=4"]
    for dtype in ("float32", "bfloat16"):
        assert main([*common, "--dtype", dtype, "--out", str(ckpts / dtype)]) == 0
        meta = json.loads((ckpts / dtype / "comparison.json").read_text())["meta"]
        assert meta["dtype"] == dtype
    assert len(list(cache.glob("*.jsonl"))) == 4  # base and edited, float32 and bfloat16


@pytest.mark.parametrize("command", ["compare", "eval"])
def test_kl_never_holds_two_models(ckpts, monkeypatch, command):
    """compare (and eval --reference) spill the base's KL logits to disk and free it before the other model
    loads: peak memory is one model's, not two."""
    import gc
    import weakref

    from steer.eval import compare

    real, held = compare.load_model, []

    def load(*args, **kwargs):
        gc.collect()
        assert all(ref() is None for ref in held), "a model was still alive when the next one loaded"
        loaded = real(*args, **kwargs)
        held.append(weakref.ref(loaded.model))
        return loaded

    monkeypatch.setattr(compare, "load_model", load)
    base, edited, out = str(ckpts / "base"), str(ckpts / "edited"), str(ckpts / command)
    models = [base, edited] if command == "compare" else [edited, "--reference", base]
    assert main([command, *models, "--suite", "kl", "--limit", "3", "--out", out]) == 0
    name = "comparison.json" if command == "compare" else "summary.json"
    kl = json.loads((ckpts / command / name).read_text())["edited" if command == "compare" else "results"]["kl"]
    assert len(held) == 2 and kl["metrics"]["kl/first_token"]["value"] > 0
