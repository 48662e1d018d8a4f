"""The command line as a user runs it, on tiny checkpoints: outputs, errors, determinism."""

import json

import pytest
import torch
from conftest import make_model

from steer.checkpoint.save import save_checkpoint
from steer.cli.main import main
from steer.locate.directions import DirectionSet, diff_in_means
from steer.model.adapters import resolve
from steer.model.collect import residual_means
from steer.model.load import checkpoint_hash, load_model
from steer.prompts import chat_texts, post_instruction_length


@pytest.fixture
def setup(tmp_path, tokenizer):
    model = make_model("llama")
    save_checkpoint(model, tokenizer, tmp_path / "model")
    n_pos = post_instruction_length(tokenizer)
    a = residual_means(model, tokenizer, chat_texts(tokenizer, ["Tell me about 1989.", "Who rules?"]), n_pos)
    b = residual_means(model, tokenizer, chat_texts(tokenizer, ["Bake bread.", "Sum 2 and 3."]), n_pos)
    DirectionSet(diff_in_means(a, b), a, b, {"selected": {"layer": 1, "position": -1}}).save(
        tmp_path / "directions.safetensors"
    )
    return tmp_path


def test_help_explains_itself(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("abliterate", "directions", "edit", "generate", "chat", "steer[demo]"):
        assert word in out


def test_edit_writes_a_loadable_orthogonalized_checkpoint(setup):
    before = checkpoint_hash(setup / "model")
    assert (
        main(["edit", str(setup / "model"), "--directions", str(setup), "--out", str(setup / "edited"), "--hash"]) == 0
    )
    assert checkpoint_hash(setup / "model") == before  # input untouched
    edited = load_model(str(setup / "edited")).model
    r = DirectionSet.load(setup / "directions.safetensors").vector()
    for layer in resolve(edited).writers:
        for writer in layer:
            assert (r @ writer.weight).abs().max() < 1e-5
    manifest = json.loads((setup / "edited" / "steer_manifest.json").read_text())
    assert manifest["input"]["sha256"] == before and manifest["direction"]["layer"] == 1
    assert manifest["output_sha256"] == checkpoint_hash(setup / "edited")


def test_same_inputs_give_byte_identical_weights(setup):
    for out in ("a", "b"):
        assert main(["edit", str(setup / "model"), "--directions", str(setup), "--out", str(setup / out)]) == 0
    assert checkpoint_hash(setup / "a") == checkpoint_hash(setup / "b")
    assert (setup / "a" / "model.safetensors").read_bytes() == (setup / "b" / "model.safetensors").read_bytes()


def _fails(argv, capsys, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # progress lines may come first; the error is the last line
    assert last.startswith("steer: error:") and message in last and "Traceback" not in err


def test_bad_input_is_one_clear_line(setup, capsys, tmp_path):
    model, dirs = str(setup / "model"), str(setup)
    (setup / "exists").mkdir()
    _fails(["edit", model, "--directions", dirs, "--out", str(setup / "exists")], capsys, "already exists")
    _fails(
        ["edit", str(tmp_path / "missing"), "--directions", dirs, "--out", str(setup / "o1")],
        capsys,
        "no such model folder",
    )
    _fails(
        ["edit", model, "--directions", str(tmp_path / "x.safetensors"), "--out", str(setup / "o2")],
        capsys,
        "no such directions file",
    )
    _fails(
        ["edit", model, "--directions", dirs, "--layer", "99", "--out", str(setup / "o3")],
        capsys,
        "no direction at layer 99",
    )
    (setup / "empty.txt").write_text("")
    _fails(["directions", model, "--target", str(setup / "empty.txt"), "--out", str(setup / "o4")], capsys, "is empty")
    assert not any((setup / f"o{i}").exists() for i in range(1, 5))
    assert [p.name for p in setup.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_hidden_size_mismatch(setup, capsys, tokenizer):
    other = make_model("qwen2")
    other.config.hidden_size = 64
    d = torch.randn(3, 2, 32, dtype=torch.float64)
    DirectionSet(d, d, d, {"selected": {"layer": 0, "position": -1}}).save(setup / "small.safetensors")
    _fails(
        ["edit", str(setup / "model"), "--directions", str(setup / "small.safetensors"), "--out", str(setup / "o")],
        capsys,
        "hidden size 32, model has 64",
    )


def test_model_that_never_refuses_is_reported(setup, capsys):
    """A random tiny model refuses nothing: `directions` must say so, not crash."""
    _fails(["directions", str(setup / "model"), "--n-val", "2", "--out", str(setup / "d")], capsys, "refused none of")


def test_generate_prints_answers(setup, capsys):
    assert main(["generate", str(setup / "model"), "Hello?", "--max-new-tokens", "4"]) == 0
    assert ">>> Hello?" in capsys.readouterr().out


def test_generate_with_ablation_preview_leaves_weights(setup, capsys):
    before = checkpoint_hash(setup / "model")
    assert main(["generate", str(setup / "model"), "Hello?", "--max-new-tokens", "4", "--ablate", str(setup)]) == 0
    assert ">>> Hello?" in capsys.readouterr().out
    assert checkpoint_hash(setup / "model") == before


def test_chat_keeps_history_and_quits_on_empty_line(setup, capsys, monkeypatch):
    lines = iter(["Hello?", "And again?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", str(setup / "model"), "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.count("model> ") == 2


def test_search_writes_the_pareto_front(setup, monkeypatch, capsys):
    from steer.locate import scores

    monkeypatch.setattr(scores, "find_refusal_tokens", lambda *a, **k: [70, 71])
    out = setup / "search"
    rc = main(
        [
            "search",
            str(setup / "model"),
            "--out",
            str(out),
            "--trials",
            "3",
            "--k-max",
            "2",
            "--n-val",
            "4",
            "--confirm",
            "1",
            "--study",
            str(setup / "study.journal"),
            "--optimize-steps",
            "2",
        ]
    )
    assert rc == 0
    data = json.loads((out / "pareto.json").read_text())
    assert data["front"] and len(data["trials"]) == 3 and data["confirm"]["chosen"]["params"]["k"] in (1, 2)
    assert data["trials"][0]["params"]["contrast"] == "optimized" and len(data["prepare"]["optimize"]["history"]) == 2
    assert "Optimized direction from censorship/projected at layer 1: 2 steps" in (out / "search.md").read_text()
    for name in ("pareto.png", "cosines.png", "contrasts.safetensors", "search.md"):
        assert (out / name).is_file(), name
    assert main(["search", str(setup / "model"), "--out", str(setup / "x"), "--keep-fraction", "2"]) == 2
    assert "--keep-fraction must be in (0, 1]" in capsys.readouterr().err


def test_device_map_flags_are_checked_before_loading(setup, capsys):
    model = str(setup / "model")
    _fails(
        ["directions", model, "--device-map", "{not json", "--out", str(setup / "d1")],
        capsys,
        "--device-map: not valid JSON",
    )
    _fails(
        ["directions", model, "--max-memory", "{", "--out", str(setup / "d2")], capsys, "--max-memory: not valid JSON"
    )


def test_export_gguf_command(tmp_path, tokenizer, capsys):
    from steer.checkpoint.gguf_io import GGUFSource

    model = make_model("qwen2")
    save_checkpoint(model, tokenizer, tmp_path / "model")
    out = tmp_path / "model-f32.gguf"
    assert main(["export-gguf", str(tmp_path / "model"), "--out", str(out), "--type", "f32"]) == 0
    state = model.state_dict()
    got = dict(GGUFSource(out).tensors())
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in got)
    _fails(["export-gguf", str(tmp_path / "model"), "--out", str(out)], capsys, "already exists")
    _fails(
        ["export-gguf", str(tmp_path / "nope"), "--out", str(tmp_path / "x.gguf")], capsys, "no such checkpoint folder"
    )


def test_targeted_flags_reach_the_settings(capsys):
    from steer.cli.main import _targeted, build_parser
    from steer.targeted.settings import TARGET_FLOOR, TargetedSettings

    args = build_parser().parse_args(
        [
            "abliterate",
            "--out",
            "x",
            "--keep-safety",
            "--search-kl-max",
            "0.2",
            "--keep-layers",
            "same",
            "--trials",
            "7",
            "--optimize-steps",
            "0",
            "--search-contrasts",
            "all",
            "--search-target-floor",
            "-3.5",
        ]
    )
    ts = _targeted(args)
    assert (ts.kl_max, ts.keep_layers, ts.trials, ts.optimize_steps, ts.search_contrasts) == (0.2, "same", 7, 0, "all")
    assert ts.target_floor == -3.5
    ts = _targeted(
        build_parser().parse_args(
            [
                "abliterate",
                "--out",
                "x",
                "--keep-safety",
                "--readout-steps",
                "5",
                "--readout-kl-tokens",
                "3",
                "--readout-kl",
                "bound",
            ]
        )
    )
    assert (ts.readout_steps, ts.readout_kl_tokens, ts.readout_kl) == (5, 3, "kl_ucb")
    ts, lib = _targeted(build_parser().parse_args(["abliterate", "--out", "x", "--keep-safety"])), TargetedSettings()
    assert (ts.readout_steps, ts.readout_kl_tokens, ts.readout_kl) == (
        lib.readout_steps,
        lib.readout_kl_tokens,
        lib.readout_kl,
    )
    assert main(["abliterate", "--out", "x", "--keep-safety", "--readout-steps", "-1"]) == 2
    assert "--readout-steps must be 0 or more" in capsys.readouterr().err
    default = _targeted(build_parser().parse_args(["search", "--out", "x"]))
    assert (default.kl_max, default.keep_layers, default.optimize_steps, default.search_contrasts) == (
        0.05,
        "all",
        48,
        "optimized",
    )
    assert default.target_floor == TargetedSettings().target_floor == TARGET_FLOOR  # the CLI's default is the library's
    assert (
        _targeted(build_parser().parse_args(["search", "--out", "x", "--search-target-floor", "none"])).target_floor
        is None
    )
    assert main(["search", "--out", "x", "--search-kl-max", "0"]) == 2
    assert "--search-kl-max must be positive" in capsys.readouterr().err
    assert main(["search", "--out", "x", "--optimize-steps", "-1"]) == 2
    assert "--optimize-steps must be 0 or more" in capsys.readouterr().err
    ts = _targeted(build_parser().parse_args(["search", "--out", "x", "--target-sets", "sensitive"]))
    assert ts.target_sets == "sensitive" and default.target_sets == "sensitive,critique"
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["search", "--out", "x", "--target-sets", "harmful"])
    assert exit_.value.code == 2 and "target sets are 'sensitive' followed by" in capsys.readouterr().err
    own = _targeted(build_parser().parse_args(["search", "--out", "x", "--own-direction", "critique"]))
    assert own.own_direction == "critique" == default.own_direction  # auto: every target set after 'sensitive'
    none = _targeted(build_parser().parse_args(["search", "--out", "x", "--own-direction", "none"]))
    assert none.own_direction == ""
    assert main(["search", "--out", "x", "--own-direction", "sensitive"]) == 2
    assert "--own-direction names target sets after 'sensitive'" in capsys.readouterr().err


def test_without_flags_every_setting_is_its_dataclass_default_and_same_named_fields_stay_apart():
    from steer.cli.main import _settings, _targeted, build_parser
    from steer.locate.settings import Settings
    from steer.targeted.settings import TargetedSettings

    args = build_parser().parse_args(["abliterate", "--out", "x", "--keep-safety"])
    assert _settings(args) == Settings() and _targeted(args) == TargetedSettings()
    assert (Settings().kl_max, TargetedSettings().kl_max) == (0.1, 0.05)  # --kl-max and --search-kl-max
    args = build_parser().parse_args(["abliterate", "--out", "x", "--keep-safety", "--kl-max", "0.3"])
    assert (_settings(args).kl_max, _targeted(args).kl_max) == (0.3, 0.05)
    args = build_parser().parse_args(["abliterate", "--out", "x", "--keep-safety", "--search-kl-max", "0.02"])
    assert (_settings(args).kl_max, _targeted(args).kl_max) == (0.1, 0.02)


def test_the_before_after_split_flag_reaches_the_evaluation():
    from steer.cli.main import _settings, build_parser
    from steer.eval.before_after import eval_config

    args = build_parser().parse_args(["abliterate", "--out", "x", "--keep-safety", "--eval-split", "val"])
    assert eval_config(_settings(args)).split == "val"
    assert eval_config(_settings(build_parser().parse_args(["abliterate", "--out", "x"]))).split == "test"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["abliterate", "--out", "x", "--eval-split", "dev"])
