"""`abliterate` end to end on a tiny random model.

A random model refuses nothing, so the refusal tokens are fixed here (monkeypatched);
everything else (filtering, collection, selection, evaluation, edit, save) runs for real.
"""

import json

import pytest
import torch
import transformers
from conftest import make_model, make_tokenizer

from steer.checkpoint.save import save_checkpoint
from steer.locate import scores
from steer.model.load import checkpoint_hash, load_model
from steer.pipeline import Settings, abliterate


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    save_checkpoint(make_model("qwen2"), make_tokenizer(), tmp_path / "model")
    monkeypatch.setattr(scores, "find_refusal_tokens", lambda *a, **k: [70, 71])
    return tmp_path


def tiny_targeted(**changes):
    """TargetedSettings a tiny model runs in seconds: 3 trials, 2 readout steps, a loose KL bound."""
    from steer.targeted.settings import TargetedSettings

    small = dict(n_val=4, trials=3, k_max=2, confirm=2, max_new_tokens=4, kl_max=10.0, readout_steps=2)
    return TargetedSettings(**(small | dict(readout_kl="kl", readout_kl_tokens=2) | changes))


def _run(tiny, name):
    settings = Settings(n_val=4, screen=2, screen_prompts=2, eval_limit=3, max_new_tokens=4)
    return abliterate(str(tiny / "model"), tiny / name, settings)


def test_abliterate_end_to_end_is_deterministic(tiny):
    input_hash = checkpoint_hash(tiny / "model")
    report = _run(tiny, "a")
    _run(tiny, "b")
    assert checkpoint_hash(tiny / "model") == input_hash  # input untouched
    assert (tiny / "a" / "model.safetensors").read_bytes() == (tiny / "b" / "model.safetensors").read_bytes()
    for name in (
        "report.md",
        "report.json",
        "directions.safetensors",
        "directions.json",
        "selection.png",
        "steer_manifest.json",
    ):
        assert (tiny / "a" / name).is_file(), name
    manifest = json.loads((tiny / "a" / "steer_manifest.json").read_text())
    assert manifest["input"]["sha256"] == input_hash
    assert manifest["output_sha256"] == checkpoint_hash(tiny / "a")
    assert manifest["settings"]["seed"] == 0 and manifest["prompts"]["target_train"]["sha256"]
    assert set(report["before"]) == {"censorship", "refusal"} and set(report["after"]) == {
        "censorship",
        "refusal",
        "kl",
    }
    assert set(report["before"]["censorship"]["metrics"]) >= {"refusal/en", "censorship/zh", "degenerate"}
    assert report["after"]["kl"]["metrics"]["kl/first_token"]["value"] >= 0
    assert report["cost"]["tokens"]["forward"] > 0 and report["cost"]["tokens"]["train"] == 0  # no gradients
    saved = json.loads((tiny / "a" / "report.json").read_text())  # stage times and peak memory, for benchmarks
    assert set(saved["seconds"]) == {"load", "directions", "evaluate", "save"}
    assert sum(saved["seconds"].values()) == pytest.approx(saved["elapsed_s"], abs=0.5)
    assert (
        0 < saved["peak_rss_gb_by_stage"]["load"] <= saved["peak_rss_gb_by_stage"]["evaluate"] <= saved["peak_rss_gb"]
    )
    md = (tiny / "a" / "report.md").read_text()
    assert "| censorship | refusal/en | 3 |" in md and "| kl | kl/multi_token |" in md
    assert "(chosen)" in md and "## Direction selection" in md
    # The saved checkpoint is a normal Hugging Face one.
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny / "a")
    layer, pos = manifest["direction"]["layer"], manifest["direction"]["position"]
    dirs = json.loads((tiny / "a" / "directions.json").read_text())
    assert dirs["selected"] == {"layer": layer, "position": pos}
    assert isinstance(model, transformers.Qwen2ForCausalLM)


def test_selection_respects_layer_cutoff_and_reports_all_candidates(tiny):
    _run(tiny, "a")
    sel = json.loads((tiny / "a" / "directions.json").read_text())["selection"]
    n_layers = load_model(str(tiny / "model")).model.config.num_hidden_layers
    layers = {c["layer"] for c in sel["candidates"]}
    assert max(layers) < max(1, int(0.8 * n_layers))
    scored = [c for c in sel["candidates"] if c["bypass"] is not None]
    assert len(scored) == 2
    best = min((c for c in scored if c["passes"]), key=lambda c: c["bypass"], default=None)
    if best is not None:
        assert (sel["layer"], sel["position"]) == (best["layer"], best["position"])


def test_refusal_score_and_kl():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    score = scores.refusal_score(logits, [0])
    assert score[0] == pytest.approx(torch.log(torch.tensor(1 / 3)).item(), abs=1e-6)  # p = 1/4 -> log(1/4 / 3/4)
    assert score[1] == pytest.approx(10 - torch.log(torch.tensor(3.0)).item(), abs=1e-6)  # odds e^10 / 3
    kl = scores.first_token_kl(logits, logits)
    assert torch.allclose(kl, torch.zeros(2, dtype=kl.dtype))
    assert scores.first_token_kl(logits[:1], logits[1:])[0] > 0


def test_directions_then_edit_cli(tiny, capsys):
    """`steer directions` then `steer edit` gives the same weights as `abliterate`'s edit."""
    from steer.cli.main import main

    args = ["--n-val", "4", "--screen", "2", "--screen-prompts", "2"]
    assert main(["directions", str(tiny / "model"), "--out", str(tiny / "d")] + args) == 0
    out = capsys.readouterr().out
    assert "(chosen)" in out and "selected layer" in out
    assert (tiny / "d" / "directions.safetensors").is_file() and (tiny / "d" / "selection.png").is_file()
    assert main(["edit", str(tiny / "model"), "--directions", str(tiny / "d"), "--out", str(tiny / "e")]) == 0
    _run(tiny, "a")
    assert checkpoint_hash(tiny / "e") == checkpoint_hash(tiny / "a")


def test_bfloat16_run_measures_in_bfloat16_and_saves_the_input_dtype_edit(tiny, monkeypatch):
    """--dtype bfloat16: forward passes in bfloat16; the saved weights are the float32 input edited along the
    chosen direction, byte for byte what `steer edit` writes from the saved directions."""
    from steer.checkpoint.rebuild import apply_recorded, recorded
    from steer.locate import run

    seen = []
    real = run.directions
    monkeypatch.setattr(
        "steer.pipeline.directions", lambda loaded, s: seen.append(loaded.model.dtype) or real(loaded, s)
    )
    settings = Settings(n_val=4, screen=2, screen_prompts=2, eval_limit=3, max_new_tokens=4, dtype="bfloat16")
    report = abliterate(str(tiny / "model"), tiny / "b", settings)
    assert seen == [torch.bfloat16]
    assert (
        report["settings"]["dtype"] == "bfloat16" and report["after"]["kl"]["metrics"]["kl/first_token"]["value"] >= 0
    )
    saved = transformers.AutoModelForCausalLM.from_pretrained(tiny / "b")
    assert saved.dtype == torch.float32 and not (tiny / "b" / "weights").exists()
    apply_recorded(str(tiny / "model"), recorded(tiny / "b"), tiny / "e")
    assert (tiny / "b" / "model.safetensors").read_bytes() == (tiny / "e" / "model.safetensors").read_bytes()
    manifest = json.loads((tiny / "b" / "steer_manifest.json").read_text())
    assert manifest["output_sha256"] == checkpoint_hash(tiny / "b") and manifest["settings"]["dtype"] == "bfloat16"


def test_keep_safety_in_bfloat16_measures_in_bfloat16_and_saves_the_streamed_float32_edit(tiny, monkeypatch):
    """--keep-safety --dtype bfloat16: search, readout and before/after on a bfloat16 model; the saved weights are
    the float32 input with the chosen edit and readout, byte for byte what `steer edit` rebuilds from the contrasts."""
    from steer.cli.main import main
    from steer.targeted import run

    seen, real = [], run.search
    monkeypatch.setattr(run, "search", lambda loaded, *a: seen.append(loaded.model.dtype) or real(loaded, *a))
    ts = tiny_targeted(confirm=1)
    settings = Settings(eval_limit=2, max_new_tokens=4, dtype="bfloat16")
    report = run.targeted_abliterate(str(tiny / "model"), tiny / "t", ts, settings, study=tiny / "s.journal")
    assert seen == [torch.bfloat16] and report["settings"]["dtype"] == "bfloat16" and report["readout"]["scale"] > 0
    saved = transformers.AutoModelForCausalLM.from_pretrained(tiny / "t")
    assert saved.dtype == torch.float32 and not (tiny / "t" / "weights").exists()
    assert main(["edit", str(tiny / "model"), "--directions", str(tiny / "t"), "--out", str(tiny / "rebuilt")]) == 0
    assert (tiny / "rebuilt" / "model.safetensors").read_bytes() == (tiny / "t" / "model.safetensors").read_bytes()
    manifest = json.loads((tiny / "t" / "steer_manifest.json").read_text())
    assert manifest["output_sha256"] == checkpoint_hash(tiny / "t")


def test_targeted_abliterate_end_to_end_is_deterministic(tiny, monkeypatch):
    from steer.targeted.contrasts import Contrasts
    from steer.targeted.run import targeted_abliterate

    monkeypatch.setattr(scores, "find_refusal_tokens", lambda *a, **k: [70, 71])
    ts = tiny_targeted()
    settings = Settings(eval_limit=3, max_new_tokens=4)
    input_hash = checkpoint_hash(tiny / "model")
    report = targeted_abliterate(str(tiny / "model"), tiny / "t1", ts, settings, study=tiny / "s1.journal")
    targeted_abliterate(str(tiny / "model"), tiny / "t2", ts, settings, study=tiny / "s2.journal")
    assert checkpoint_hash(tiny / "model") == input_hash
    assert (tiny / "t1" / "model.safetensors").read_bytes() == (tiny / "t2" / "model.safetensors").read_bytes()
    for name in (
        "report.md",
        "report.json",
        "contrasts.safetensors",
        "cosines.png",
        "pareto.png",
        "steer_manifest.json",
    ):
        assert (tiny / "t1" / name).is_file(), name
    manifest = json.loads((tiny / "t1" / "steer_manifest.json").read_text())
    assert manifest["edit"] == report["edit"] and manifest["output_sha256"] == checkpoint_hash(tiny / "t1")
    assert manifest["kernel"] in ("native", "blocked") and manifest["versions"]["torch"] == torch.__version__
    assert set(report["after"]) == {"censorship", "refusal", "kl"} and report["pareto"]
    md = (tiny / "t1" / "report.md").read_text()
    assert "## Pareto front" in md and "Optimized direction from " in md and f": {ts.optimize_steps} steps;" in md
    row = report["pareto"][0]  # the objective (target scores clamped at the floor) beside the plain mean
    assert row["target_score"] >= row["target_raw"]
    assert f"| {row['target_score']:.2f} | {row['target_raw']:.2f} | {row['target_high']:.1%} |" in md
    # the readout: trained, kept at the largest fraction within the (loose) bound, and saved beside the contrasts
    assert len(report["readout"]["history"]) == 2 and report["readout"]["scale"] == 1.0
    assert report["cost"]["tokens"]["forward"] > 0 and report["cost"]["tokens"]["train"] > 0  # optimizer, readout
    assert "Readout (steer.targeted.readout, 6 writers): 2 steps" in md and "Wall time" in md
    assert set(report["seconds"]) == {"prepare", "search", "confirm", "readout", "evaluate", "load_save"}
    saved = Contrasts.load(tiny / "t1" / "contrasts.safetensors").readout
    assert set(saved) == {f"{i}.{c}" for i in range(3) for c in ("attn", "mlp")} and any(
        a.abs().sum() > 0 for a in saved.values()
    )


def test_targeted_edit_is_rebuilt_exactly_from_its_contrasts(tiny, monkeypatch):
    from steer.cli.main import main
    from steer.targeted.run import targeted_abliterate

    monkeypatch.setattr(scores, "find_refusal_tokens", lambda *a, **k: [70, 71])
    ts = tiny_targeted(confirm=1)
    targeted_abliterate(
        str(tiny / "model"), tiny / "t", ts, Settings(eval_limit=2, max_new_tokens=4), study=tiny / "s.journal"
    )
    assert main(["edit", str(tiny / "model"), "--directions", str(tiny / "t"), "--out", str(tiny / "rebuilt")]) == 0
    assert (tiny / "rebuilt" / "model.safetensors").read_bytes() == (tiny / "t" / "model.safetensors").read_bytes()


def test_search_journal_key_ignores_settings_used_only_after_the_search():
    from dataclasses import fields, replace

    from steer.targeted.settings import AFTER_SEARCH, TargetedSettings, search_settings

    ts = TargetedSettings()
    assert set(AFTER_SEARCH) < {f.name for f in fields(TargetedSettings)}  # no stale names
    later = replace(
        ts, confirm=5, max_new_tokens=9, readout_steps=3, readout_lr=1.0, readout_kl_tokens=2, readout_kl="kl_ucb"
    )
    assert search_settings(later) == search_settings(ts)
    for change in ({"trials": 7}, {"kl_max": 0.2}, {"seed": 1}, {"optimize_steps": 5}, {"n_val": 3}):
        assert search_settings(replace(ts, **change)) != search_settings(ts), change


def test_targeted_abliterate_without_a_readout_on_post_norm_writers(tmp_path, monkeypatch):
    """Gemma's writers go through a norm before the residual add: no readout, the report says why,
    and the edit is saved and rebuilt as without one."""
    from steer.cli.main import main
    from steer.targeted.contrasts import Contrasts
    from steer.targeted.run import targeted_abliterate
    from steer.targeted.settings import TargetedSettings

    save_checkpoint(make_model("gemma2"), make_tokenizer(), tmp_path / "model")
    monkeypatch.setattr(scores, "find_refusal_tokens", lambda *a, **k: [70, 71])
    ts = TargetedSettings(
        n_val=4,
        trials=2,
        k_max=1,
        confirm=1,
        max_new_tokens=4,
        kl_max=10.0,
        optimize_steps=0,
        readout_steps=2,
        readout_kl_tokens=2,
    )
    report = targeted_abliterate(
        str(tmp_path / "model"),
        tmp_path / "t",
        ts,
        Settings(eval_limit=2, max_new_tokens=4),
        study=tmp_path / "s.journal",
    )
    assert "plain linear writers" in report["readout"]["skipped"]
    assert "Readout: none (" in (tmp_path / "t" / "report.md").read_text()
    assert Contrasts.load(tmp_path / "t" / "contrasts.safetensors").readout is None
    assert (
        main(["edit", str(tmp_path / "model"), "--directions", str(tmp_path / "t"), "--out", str(tmp_path / "r")]) == 0
    )
    from safetensors.torch import load_file

    got, want = load_file(tmp_path / "r" / "model.safetensors"), load_file(tmp_path / "t" / "model.safetensors")
    assert set(got) == set(want)
    for k in want:  # streamed vs in memory: equal up to float rounding (post-norm bases are computed per writer)
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5)
