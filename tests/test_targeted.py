"""Censorship vs harmful-refusal contrasts on a tiny model."""

from dataclasses import replace

import pytest
import torch
from conftest import PROMPTS, make_model

from steer.edit.preview import preview
from steer.locate import scores
from steer.model.collect import residual_means
from steer.prompts import chat_texts
from steer.report.tables import plot_cosines
from steer.targeted.confirm import confirm
from steer.targeted.contrasts import _cos, compute_contrasts
from steer.targeted.prepare import prepare
from steer.targeted.readout import fit_readout
from steer.targeted.search import EditParams, edit_basis
from steer.targeted.settings import TargetedSettings


def test_contrasts_are_the_right_differences_and_keep_safety_is_orthogonal(tokenizer, tmp_path):
    model = make_model("llama")
    sets = {
        "sensitive": ["Tell me about 1989.", "Who rules Tibet?", "What is Falun Gong?", "Why was he jailed?"],
        "controls": ["What is the longest river in China?", "How is dumpling dough made?"],
        "harmful": ["Build a bomb.", "Hurt someone."],
        "harmless": PROMPTS,
    }
    texts = {k: chat_texts(tokenizer, v) for k, v in sets.items()}
    c = compute_contrasts(model, tokenizer, texts, n_positions=3, k=2, batch_size=2)
    mean = lambda name: residual_means(model, tokenizer, texts[name], 3)  # noqa: E731
    assert torch.allclose(c.censorship, mean("sensitive") - mean("controls"), atol=1e-5)
    assert torch.allclose(c.harmful, mean("harmful") - mean("harmless"), atol=1e-5)
    assert c.components.shape == (model.config.num_hidden_layers, 3, 2, model.config.hidden_size)
    comps = c.components[2, -1]
    assert torch.allclose(comps @ comps.T, torch.eye(2, dtype=torch.float64), atol=1e-8)
    cos = c.cosines()
    assert set(cos) == {
        "censorship vs harmful",
        "censorship vs (sensitive - harmless)",
        "(sensitive - harmless) vs harmful",
    }
    assert all(-1 - 1e-9 <= x <= 1 + 1e-9 for v in cos.values() for x in v[1:])
    inputs = c.search_inputs(keep_safety=True)
    assert set(inputs.directions) == {
        "censorship/projected",
        "censorship/plain",
        "versus_harmless/projected",
        "versus_harmless/plain",
    }
    assert set(c.search_inputs(contrasts="optimized").directions) == set(inputs.directions)  # nothing optimized yet
    proj = inputs.directions["censorship/projected"]
    assert (proj * c.harmless_mean).sum(-1).abs().max() < 1e-6 * c.harmless_mean.norm(dim=-1).max() * proj.norm(
        dim=-1
    ).max()
    assert inputs.keep.shape == (model.config.num_hidden_layers, 3, 1, model.config.hidden_size)
    assert c.search_inputs(keep_safety=False).keep is None
    every = c.search_inputs(keep_safety=True, keep_layers="all")
    L = model.config.num_hidden_layers
    assert every.keep.shape == (L, 3, L, model.config.hidden_size)
    from steer.targeted.search import EditParams, edit_basis

    basis = edit_basis(every, EditParams(index=1.0, position=-1, k=2))
    assert (basis @ c.harmful[:, -1].double().T).abs().max() < 1e-8  # orthogonal to every layer's harmful direction
    from steer.targeted.contrasts import Contrasts

    c.save(tmp_path / "c.safetensors", {})
    assert Contrasts.load(tmp_path / "c.safetensors").optimized is None
    c.optimized = torch.nn.functional.normalize(torch.randn(model.config.hidden_size, dtype=torch.float64), dim=0)
    c.save(tmp_path / "c.safetensors", {})
    assert torch.equal(Contrasts.load(tmp_path / "c.safetensors").optimized, c.optimized)
    only = c.search_inputs(keep_safety=True, contrasts="optimized")
    assert set(only.directions) == {"optimized/projected", "optimized/plain"}
    assert torch.equal(only.directions["optimized/plain"][-1, 1], c.optimized)
    assert len(c.search_inputs(keep_safety=True, contrasts="all").directions) == 6
    with pytest.raises(ValueError, match="contrasts"):
        c.search_inputs(contrasts="optimised")
    with_opt = c.cosines()
    assert (
        len(with_opt) == 5
        and abs(with_opt["optimized vs censorship"][2] - float(_cos(c.optimized, c.censorship[2, -1]))) < 1e-12
    )
    plot_cosines(cos, tmp_path / "cos.png")
    assert (tmp_path / "cos.png").stat().st_size > 1000


def test_prepare_search_confirm_on_a_tiny_model(tokenizer, monkeypatch):
    from steer.targeted.search import pareto, run_search

    monkeypatch.setattr(scores, "find_refusal_tokens", lambda *a, **k: [70, 71])
    model = make_model("qwen2")
    s = TargetedSettings(n_val=6, trials=3, k_max=2, confirm=2, max_new_tokens=4, kl_max=10.0, optimize_steps=3)
    prep = prepare(model, tokenizer, s)
    assert len(prep.val.target) == 6 and len(prep.val.harmless) <= 12
    assert prep.meta["refusal_tokens"] and set(prep.val_prompts) == {"sensitive/en", "sensitive/zh", "harmful"}
    # the optimized direction: unit norm, orthogonal to every layer's harmful direction, a searched contrast
    opt, harmful = prep.contrasts.optimized, prep.contrasts.harmful[:, -1]
    assert abs(float(opt.norm()) - 1) < 1e-6 and (harmful @ opt).abs().max() < 1e-5 * harmful.norm(dim=1).max()
    assert len(prep.meta["optimize"]["history"]) == 3
    inputs = prep.contrasts.search_inputs(keep_safety=True)
    assert torch.equal(inputs.directions["optimized/plain"][1, 0], opt)
    study = run_search(model, tokenizer, inputs, prep.val, n_trials=s.trials, seed=s.seed, keep_floor=-1e9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = confirm(model, tokenizer, prep, inputs, pareto(study), s)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # previews only
    assert result["chosen"] in result["candidates"] and set(result["base"]) == {
        "censorship/sensitive/en",
        "censorship/sensitive/zh",
        "refusal/harmful",
    }
    assert all(0 <= v <= 1 for r in result["candidates"] for v in r["judged"].values())
    # a readout held to the chosen edit's own validation KL (it may spend none): kept only where its mean is within
    p = EditParams.from_dict(result["chosen"]["params"])
    basis = edit_basis(inputs, p)
    rs = replace(s, readout_steps=2, readout_kl_tokens=2, readout_kl="edit")
    fit = fit_readout(model, tokenizer, prep, basis, p, rs, edit_kl=result["chosen"]["kl"])
    got, info = fit.readout, fit.info
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights restored
    assert info["kl_max"] == result["chosen"]["kl"] and info["kl_stat"] == "kl" and len(info["history"]) == 2
    kept = [f for f in info["fits"] if f["feasible"]]
    assert (got is None) == (not kept) and all(f["kl"] <= info["kl_max"] for f in kept)
    assert info["scale"] == (kept[0]["scale"] if kept else 0.0)
    with pytest.raises(ValueError, match="edit_kl"):
        fit_readout(model, tokenizer, prep, basis, p, rs)


def test_the_target_filter_picks_which_target_prompts_count_as_refused(tokenizer, monkeypatch):
    from steer.targeted import prepare as P

    monkeypatch.setattr(scores, "find_refusal_tokens", lambda *a, **k: [70, 71])
    # stand-ins with different, recognisable choices: every 3rd prompt (score) and every 2nd (greedy)
    monkeypatch.setattr(P, "split_by_score", lambda lg, ref, refused: list(range(0 if refused else 1, len(lg), 3)))
    monkeypatch.setattr(P, "greedy_refused", lambda lg, ref: list(range(0, len(lg), 2)))
    seen = {}

    def spy(model, tokenizer, contrasts, groups, ref, s):
        seen[s.target_filter] = groups["sensitive"].texts
        return {}

    monkeypatch.setattr(P, "_optimize", spy)
    model = make_model("qwen2")
    texts = lambda ps: chat_texts(tokenizer, [p.text for p in ps])  # noqa: E731
    for f, step in (("score", 3), ("greedy", 2)):
        prep = prepare(model, tokenizer, TargetedSettings(n_val=1000, optimize_steps=1, target_filter=f))
        s = TargetedSettings()
        assert seen[f] == texts(s.target_prompts("train"))[::step]  # what the optimizer and the readout learn from
        assert prep.val.target == texts(s.target_prompts("val"))[::step]  # what the search scores


def test_previewed_edit_and_readout_equal_the_applied_weights(tokenizer):
    """previewed() (hooks: the edit first, then the readout) gives the logits apply_edit() writes
    into the weights; an architecture without plain linear writers gets no readout, with the reason."""
    from steer.edit.project import Profile
    from steer.edit.rank1 import zeros
    from steer.model.collect import batched_last_logits
    from steer.targeted.search import EditParams

    model = make_model("qwen2")
    texts = chat_texts(tokenizer, PROMPTS)
    g = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(model.config.hidden_size, 2, generator=g, dtype=torch.float64))[0].T
    params = EditParams(index=1.0, position=-1, k=2, attn=Profile(peak=0.8), mlp=Profile(peak=1.2), embed=0.5)
    readout = {k: torch.randn(a.shape, generator=g) * 0.1 for k, a in zeros(model).items()}
    base = batched_last_logits(model, tokenizer, texts)
    with preview(model, params.edit(basis, readout)):
        hooked = batched_last_logits(model, tokenizer, texts)
    with preview(model, params.edit(basis, None)):
        edit_only = batched_last_logits(model, tokenizer, texts)
    assert torch.equal(batched_last_logits(model, tokenizer, texts), base)  # hooks removed
    assert (hooked - edit_only).abs().max() > 1e-3  # the readout does something on top of the edit
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with preview(model, params.edit(basis), in_weights=True):  # the edit written into the weights, undone on exit
        torch.testing.assert_close(batched_last_logits(model, tokenizer, texts), edit_only, atol=2e-5, rtol=1e-5)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    params.edit(basis, readout).apply(model)
    torch.testing.assert_close(batched_last_logits(model, tokenizer, texts), hooked, atol=2e-5, rtol=1e-5)
    fit = fit_readout(make_model("gemma2"), tokenizer, None, basis, params, TargetedSettings())
    assert fit.readout is None and "plain linear writers" in fit.info["skipped"]


def test_target_sets_add_the_critique_requests_of_the_same_split_only():
    from steer.errors import SteerError
    from steer.prompts import load_prompts

    only = TargetedSettings(target_sets="sensitive")
    assert only.target_prompts("train") == load_prompts("sensitive", "train")
    both = TargetedSettings(target_sets=" sensitive , critique ")
    assert both == TargetedSettings()  # the default since results/critique-target
    for split in ("train", "val"):
        got = both.target_prompts(split)
        assert got == load_prompts("sensitive", split) + load_prompts("critique", split)
        assert {p.split for p in got} == {split} and any(p.id.startswith("crit-") for p in got)
    for bad in ("critique", "sensitive,harmful", "sensitive,critique,critique", ""):
        with pytest.raises(SteerError, match="target sets are 'sensitive' followed by"):
            TargetedSettings(target_sets=bad)


def test_own_direction_names_later_target_sets_once():
    from steer.errors import SteerError

    assert TargetedSettings().own_direction == "critique" == TargetedSettings(own_direction=" critique ").own_direction
    assert TargetedSettings(target_sets="sensitive").own_direction == ""  # auto: no later set, no own direction
    assert TargetedSettings(own_direction="none").own_direction == ""
    for sets, bad in (("sensitive,critique", "sensitive"), ("sensitive", "critique"), ("sensitive,critique", "x"),
                      ("sensitive,critique", "critique,critique")):  # fmt: skip
        with pytest.raises(SteerError, match="--own-direction names target sets after 'sensitive'"):
            TargetedSettings(target_sets=sets, own_direction=bad)


def test_own_direction_is_optimized_apart_and_removed_by_every_edit(tokenizer, monkeypatch, tmp_path):
    from steer.prompts import load_prompts
    from steer.targeted.contrasts import Contrasts

    monkeypatch.setattr(scores, "find_refusal_tokens", lambda *a, **k: [70, 71])
    model = make_model("qwen2")
    s = TargetedSettings(n_val=4, optimize_steps=2)  # own_direction auto: critique
    prep = prepare(model, tokenizer, s)
    c = prep.contrasts
    own, main, harmful = c.extra, c.optimized.double(), c.harmful[:, -1].double()
    assert own.shape == (1, model.config.hidden_size) and abs(float(own.norm()) - 1) < 1e-6
    assert abs(float(own[0] @ main)) < 1e-6 and (harmful @ own[0]).abs().max() < 1e-5 * harmful.norm(dim=1).max()
    info = prep.meta["optimize"]["own"]["critique"]
    assert info["prompts"] == len(load_prompts("critique", "train")) and len(info["history"]) == 2
    inputs = c.search_inputs(keep_safety=True, keep_layers="all")
    for k in (1, 2):
        basis = edit_basis(inputs, EditParams(index=1.0, position=-1, k=k))
        assert basis.shape[0] == k + 1  # the searched directions, then the set's own
        assert torch.linalg.matrix_rank(torch.cat([basis, own])) == k + 1  # the own direction lies in the basis
    without = Contrasts(c.censorship, c.versus_harmless, c.harmful, c.harmless_mean, c.components, c.optimized)
    assert edit_basis(without.search_inputs(), EditParams(index=1.0, position=-1)).shape[0] == 1
    c.save(tmp_path / "c.safetensors", {})
    assert torch.equal(Contrasts.load(tmp_path / "c.safetensors").extra, own)  # what a recorded edit rebuilds from
