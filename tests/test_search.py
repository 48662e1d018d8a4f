"""The edit-parameter search on a tiny model: bases, reversible previews, seeded and resumable studies."""

import pytest
import torch
from conftest import PROMPTS, make_model

from steer.edit.preview import preview
from steer.edit.project import Profile
from steer.errors import SteerError
from steer.locate.scores import refusal_score
from steer.model.collect import batched_last_logits
from steer.prompts import chat_texts
from steer.targeted import search
from steer.targeted.search import (
    NEAR_REFUSAL,
    EditParams,
    SearchInputs,
    ValData,
    edit_basis,
    fingerprint,
    pareto,
    run_search,
    score,
    trial_rows,
)


def inputs(d=64, layers=3, pos=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return SearchInputs(
        {"censorship/projected": r(layers, pos, d), "censorship/plain": r(layers, pos, d)},
        components=r(layers, pos, 2, d),
        keep=r(layers, pos, 1, d),
    )


def test_edit_basis_is_orthonormal_and_orthogonal_to_keep():
    inp = inputs()
    p = EditParams(index=1.3, position=-1, k=3)
    basis = edit_basis(inp, p)
    assert basis.shape == (3, 64)
    assert torch.allclose(basis @ basis.T, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert (basis @ inp.keep[1, -1, 0]).abs().max() < 1e-10
    assert edit_basis(inp, EditParams(index=1.0, position=-2, k=1)).shape == (1, 64)


def test_norm_preserving_preview_is_undone(tokenizer):
    model = make_model("gemma2")  # tied embeddings and post-norms
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = EditParams(index=1.0, position=-1, preserve_norm=True, attn=Profile(peak=0.8, center=1, width=2, floor=0.2))
    texts = chat_texts(tokenizer, PROMPTS)
    base = batched_last_logits(model, tokenizer, texts)
    with preview(model, p.edit(edit_basis(inputs(), p))):
        during = batched_last_logits(model, tokenizer, texts)
    after = model.state_dict()
    assert (during - base).abs().max() > 1e-4
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight


def _val(model, tokenizer):
    t, k, h = (chat_texts(tokenizer, PROMPTS[i::3]) for i in range(3))
    logits = lambda x: batched_last_logits(model, tokenizer, x)  # noqa: E731
    return ValData(t, k, h, logits(t), logits(k), logits(h), refusal_tokens=[70, 71])


def test_score_is_zero_kl_for_a_zero_strength_edit(tokenizer, monkeypatch):
    model = make_model("qwen2")
    val = _val(model, tokenizer)
    zero = Profile(peak=0.0, floor=0.0)
    p = EditParams(index=1.0, position=-1, attn=zero, mlp=zero, embed=0.0)
    basis = edit_basis(inputs(), p)
    m = score(model, tokenizer, basis, p, val)
    assert m["kl"] < 1e-9
    base = refusal_score(val.base_target, [70, 71])
    assert m["target_raw"] == pytest.approx(float(base.mean()), abs=1e-5)
    assert m["target_high"] == float((base > NEAR_REFUSAL).double().mean())
    # the objective counts scores below the floor as done: a floor between the prompts' scores clamps some
    floor = float(base.min() + base.max()) / 2
    assert base.min() < floor < base.max()
    clamped = score(model, tokenizer, basis, p, val, target_floor=floor)
    assert clamped["target_score"] == pytest.approx(float(base.clamp(min=floor).mean()), abs=1e-5)
    assert clamped["target_score"] > clamped["target_raw"] + 1e-6
    plain = score(model, tokenizer, basis, p, val, target_floor=None)
    assert plain["target_score"] == pytest.approx(plain["target_raw"])
    # the share near refusal counts the prompts above the threshold (moved between the two here)
    monkeypatch.setattr(search, "NEAR_REFUSAL", floor)
    high = score(model, tokenizer, basis, p, val)["target_high"]
    assert high == float((base > floor).double().mean()) and 0 < high < 1


def test_search_is_reproducible_with_a_seed_and_resumes(tokenizer, tmp_path):
    model = make_model("qwen2")
    val = _val(model, tokenizer)
    a = run_search(model, tokenizer, inputs(), val, n_trials=4, seed=3, keep_floor=-100.0)
    b = run_search(model, tokenizer, inputs(), val, n_trials=4, seed=3, keep_floor=-100.0)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.values for t in a.trials] == [t.values for t in b.trials]
    store = tmp_path / "study.log"
    first = run_search(model, tokenizer, inputs(), val, n_trials=2, seed=3, storage=store)
    resumed = run_search(model, tokenizer, inputs(), val, n_trials=4, seed=3, storage=store)
    assert len(resumed.trials) == 4 and resumed.trials[0].params == first.trials[0].params
    other = inputs()  # a direction that changed (new code or data): the journal must not be resumed
    name = sorted(other.directions)[0]
    other.directions[name] = other.directions[name] + 1e-6
    assert fingerprint(other, val) != fingerprint(inputs(), val) == fingerprint(inputs(), val)
    with pytest.raises(SteerError, match="other directions"):
        run_search(model, tokenizer, other, val, n_trials=5, seed=3, storage=store)
    # the same inputs, another objective (a KL bound, another keep or target floor): not resumed either
    with pytest.raises(SteerError, match="another objective"):
        run_search(model, tokenizer, inputs(), val, n_trials=5, seed=3, storage=store, kl_max=0.05)
    with pytest.raises(SteerError, match="another objective"):
        run_search(model, tokenizer, inputs(), val, n_trials=5, seed=3, storage=store, keep_floor=0.5)
    with pytest.raises(SteerError, match="another objective"):  # another target floor
        run_search(model, tokenizer, inputs(), val, n_trials=5, seed=3, storage=store, target_floor=None)
    assert len(run_search(model, tokenizer, inputs(), val, n_trials=5, seed=3, storage=store).trials) == 5
    front = pareto(a)
    assert front and all(set(r) >= {"trial", "kl", "target_score", "params"} for r in front)
    assert EditParams.from_dict(front[0]["params"]).to_dict() == front[0]["params"]


def test_kl_bounded_search_minimizes_the_target_and_its_front_is_non_dominated(tokenizer):
    model = make_model("qwen2")
    val = _val(model, tokenizer)
    free = run_search(model, tokenizer, inputs(), val, n_trials=6, seed=1, keep_floor=-100.0, kl_max=1e9)
    assert len(free.directions) == 1 and all(len(t.values) == 1 for t in free.trials)
    assert [t.values[0] for t in free.trials] == [t.user_attrs["target_score"] for t in free.trials]
    rows, front = trial_rows(free), pareto(free)
    assert all(r["violation"] <= 0 for r in rows) and front
    beats = lambda a, b: a["target_score"] <= b["target_score"] and a["kl"] <= b["kl"] and a != b  # noqa: E731
    assert not any(beats(a, b) for a in front for b in front)
    assert all(any(beats(f, r) for f in front) for r in rows if r["trial"] not in {f["trial"] for f in front})
    # a bound no edit meets: every trial with a measurable KL is infeasible and off the front
    tight = run_search(model, tokenizer, inputs(), val, n_trials=6, seed=1, keep_floor=-100.0, kl_max=1e-12)
    assert all(r["violation"] == pytest.approx(r["kl_ucb"] - 1e-12) for r in trial_rows(tight))
    assert all(r["kl_ucb"] <= 1e-12 for r in pareto(tight))


def test_extra_directions_join_every_basis_and_key_the_fingerprint():
    from dataclasses import replace

    from steer.locate.directions import remove_span
    from steer.targeted.search import ValData, fingerprint

    inp = inputs()
    extra = torch.randn(1, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = edit_basis(replace(inp, extra=extra), EditParams(index=1.0, position=-1, k=2))
    assert got.shape == (3, 64) and torch.allclose(got @ got.T, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(got[:2], edit_basis(inp, EditParams(index=1.0, position=-1, k=2)), atol=1e-12)
    keep = inp.keep[1, -1, 0]
    assert (got @ keep).abs().max() < 1e-10
    resid = remove_span(extra[0], torch.cat([keep.reshape(1, -1), got[:2]]))
    assert torch.allclose(got[2].abs(), (resid / resid.norm()).abs(), atol=1e-10)
    val = ValData(["a"], ["b"], ["c"], torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), [0])
    assert fingerprint(replace(inp, extra=extra), val) != fingerprint(inp, val)
