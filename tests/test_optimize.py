"""The gradient-optimized direction on a tiny model: descent, constraints, determinism."""

import pytest
import torch
from conftest import PROMPTS, make_model

from steer.edit.preview import Edit, preview
from steer.edit.project import Profile
from steer.locate.scores import first_token_kl, refusal_score
from steer.model.collect import batched_last_logits
from steer.prompts import chat_texts
from steer.targeted.optimize import Group, OptimizeSettings, _target_term, optimize_direction, unit_direction
from steer.targeted.search import EditParams, SearchInputs, run_search

REFUSAL = [70, 71]


def _groups(model, tokenizer):
    t, k, h = (chat_texts(tokenizer, PROMPTS[i::3]) for i in range(3))
    logits = lambda x: batched_last_logits(model, tokenizer, x)  # noqa: E731
    return Group(t, logits(t)), Group(k, logits(k)), Group(h, logits(h))


def _target_score(model, tokenizer, texts, r):
    with preview(model, r.float()):
        return float(refusal_score(batched_last_logits(model, tokenizer, texts), REFUSAL).mean())


def test_descent_lowers_the_target_score_and_leaves_the_model_as_it_was(tokenizer):
    model = make_model("qwen2")
    target, keep, harmless = _groups(model, tokenizer)
    init = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # whole groups per step (no sampling noise), only the target term: plain gradient descent
    s = OptimizeSettings(
        steps=15,
        lr=0.05,
        target_batch=99,
        keep_batch=99,
        harmless_batch=99,
        keep_weight=0.0,
        kl_weight=0.0,
        margin=100.0,
    )
    r, history = optimize_direction(model, tokenizer, target, keep, harmless, init, REFUSAL, None, s, progress=False)
    assert len(history) == 15 and r.dtype == torch.float64 and abs(float(r.norm()) - 1) < 1e-6
    start = _target_score(model, tokenizer, target.texts, init / init.norm())
    assert _target_score(model, tokenizer, target.texts, r) < start - 0.05
    assert history[-1]["target_score"] < history[0]["target_score"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_direction_stays_orthogonal_to_the_keep_span_and_is_seeded(tokenizer):
    model = make_model("llama")
    groups = _groups(model, tokenizer)
    g = torch.Generator().manual_seed(1)
    d = model.config.hidden_size
    # like every layer's harmful direction: a zero row (layer 0) and very different scales
    scale = torch.tensor([[0.0], [1e-3], [1.0]], dtype=torch.float64)
    init, span = torch.randn(d, generator=g), torch.randn(3, d, generator=g, dtype=torch.float64) * scale
    s = OptimizeSettings(
        steps=4, lr=0.05, target_batch=1, keep_batch=1, harmless_batch=1, seed=5
    )  # groups of 1-2 prompts
    a, ha = optimize_direction(model, tokenizer, *groups, init, REFUSAL, span, s, progress=False)
    b, hb = optimize_direction(model, tokenizer, *groups, init, REFUSAL, span, s, progress=False)
    assert torch.equal(a, b) and ha == hb
    assert ((span[1:] @ a).abs() / span[1:].norm(dim=1)).max() < 1e-6
    c, _ = optimize_direction(
        model, tokenizer, *groups, init, REFUSAL, span, OptimizeSettings(**{**s.__dict__, "seed": 6}), progress=False
    )
    assert not torch.equal(a, c)  # another seed draws other minibatches
    lrs = [h["lr"] for h in ha]  # cosine decay: full step first, then smaller ones
    assert lrs[0] == s.lr and all(x > y for x, y in zip(lrs, lrs[1:])) and lrs[-1] < 0.2 * s.lr
    e, he = optimize_direction(
        model,
        tokenizer,
        *groups,
        init,
        REFUSAL,
        span,
        OptimizeSettings(**{**s.__dict__, "cosine": False}),
        progress=False,
    )
    assert [h["lr"] for h in he] == [s.lr] * 4 and not torch.equal(a, e)


def test_average_is_the_mean_direction_of_the_second_half(tokenizer):
    model = make_model("qwen2")
    groups = _groups(model, tokenizer)
    g = torch.Generator().manual_seed(2)
    d = model.config.hidden_size
    init, span = torch.randn(d, generator=g), torch.randn(1, d, generator=g, dtype=torch.float64)
    # constant step: a run of j steps is the first j steps of a longer one (same minibatches)
    s = OptimizeSettings(steps=4, lr=0.05, target_batch=2, keep_batch=2, harmless_batch=2, cosine=False)
    run = lambda **kw: optimize_direction(
        model,
        tokenizer,
        *groups,
        init,
        REFUSAL,
        span,
        OptimizeSettings(**{**s.__dict__, **kw}),
        progress=False,
    )[0]
    third, fourth, averaged = run(steps=3), run(steps=4), run(average=True)
    expected = (third + fourth) / (third + fourth).norm()  # iterates after steps 3 and 4 (indices 2, 3 of 4)
    assert torch.allclose(averaged, expected, atol=1e-6) and not torch.allclose(averaged, fourth, atol=1e-4)
    assert abs(float(span[0] @ averaged)) < 1e-6


def test_unit_direction_removes_the_span():
    span = torch.randn(2, 8, dtype=torch.float64)
    v = torch.randn(8, dtype=torch.float64)
    r = unit_direction(v, span)
    assert abs(float(r.norm()) - 1) < 1e-12 and (span @ r).abs().max() < 1e-12
    assert torch.allclose(unit_direction(v, None), v / v.norm())


def test_search_tries_the_optimized_direction_first(tokenizer):
    model = make_model("qwen2")
    target, keep, harmless = _groups(model, tokenizer)
    from steer.targeted.search import ValData

    val = ValData(
        target.texts, keep.texts, harmless.texts, target.base_logits, keep.base_logits, harmless.base_logits, REFUSAL
    )
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(3, 2, 64, generator=g, dtype=torch.float64)
    opt = torch.randn(64, generator=g, dtype=torch.float64).expand(3, 2, 64)
    inputs = SearchInputs(
        {"censorship/projected": dirs, "censorship/plain": dirs, "optimized/projected": opt, "optimized/plain": opt}
    )
    study = run_search(model, tokenizer, inputs, val, n_trials=3, seed=0)
    assert len(study.trials) == 3  # only as many seeds queued as trials run: none left waiting in the journal
    first, second, _ = (t.params for t in study.trials if t.state.is_finished())
    assert first["contrast"] == "optimized" and first["attn_floor"] == first["mlp_floor"] == first["embed"] == 1.0
    assert (second["attn_floor"], second["mlp_floor"], second["mlp_peak"]) == (1.0, 0.8, 0.8)
    edit = EditParams.from_dict(study.trials[2].user_attrs["params"])
    assert edit.attn.weights(3) == [1.2] * 3 and edit.mlp.weights(3) == [0.8] * 3 and edit.embed == 1.0


def test_training_runs_under_the_given_component_strengths(tokenizer):
    model = make_model("qwen2")
    target, keep, harmless = _groups(model, tokenizer)
    init = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    r0 = (init / init.norm()).float()
    s = OptimizeSettings(steps=1, target_batch=99, keep_batch=99, harmless_batch=99, attn=4.0, mlp=0.0)
    _, history = optimize_direction(model, tokenizer, target, keep, harmless, init, REFUSAL, None, s, progress=False)

    def kl(**profiles):
        with preview(model, Edit(r0, profiles=profiles)):
            return float(
                first_token_kl(harmless.base_logits, batched_last_logits(model, tokenizer, harmless.texts)).mean()
            )

    # step 0's minibatch KL is the start direction's, under the edit at those strengths
    expected = kl(attn=Profile(4.0, floor=4.0), mlp=Profile(0.0, floor=0.0))
    assert abs(history[0]["kl"] - expected) < 1e-3 * expected
    assert abs(history[0]["kl"] - kl()) > 0.1 * expected  # not the strength-1 edit


def test_target_term_power():
    score = torch.tensor([1.0, 0.0, -1.5, -4.0], requires_grad=True)
    assert float(_target_term(score.detach(), 3.0, 1.0)) == pytest.approx((1.0 + 0.0 - 1.5 - 3.0) / 4)
    loss = _target_term(score, 3.0, 2.0)
    assert float(loss.detach()) == pytest.approx(3.0 * ((4 / 3) ** 2 + 1 + 0.5**2 + 0) / 4)
    loss.backward()
    # slope 2 x power 1's at score 0, half of that at -margin/2, nothing below -margin
    assert score.grad.tolist() == pytest.approx([2 * 4 / 3 / 4, 2 / 4, 1 / 4, 0.0])


def test_training_uses_the_target_power(tokenizer):
    model = make_model("qwen2")
    target, keep, harmless = _groups(model, tokenizer)
    init = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    with preview(model, (init / init.norm()).float()):
        scores = refusal_score(batched_last_logits(model, tokenizer, target.texts), REFUSAL)
    s = OptimizeSettings(
        steps=1,
        target_batch=99,
        keep_batch=99,
        harmless_batch=99,
        keep_weight=0.0,
        kl_weight=0.0,
        margin=1.0,
        power=3.0,
    )
    _, history = optimize_direction(model, tokenizer, target, keep, harmless, init, REFUSAL, None, s, progress=False)
    assert history[0]["loss"] == pytest.approx(float(((scores + 1.0).clamp(min=0) ** 3).mean()), rel=1e-4)


def test_a_subspace_is_optimized_as_orthonormal_rows_off_the_keep_span(tokenizer):
    model = make_model("qwen2")
    target, keep, harmless = _groups(model, tokenizer)
    g = torch.Generator().manual_seed(1)
    init = torch.randn(2, model.config.hidden_size, generator=g, dtype=torch.float64)
    span = torch.randn(3, model.config.hidden_size, generator=g, dtype=torch.float64)
    s = OptimizeSettings(
        steps=12,
        lr=0.05,
        target_batch=99,
        keep_batch=99,
        harmless_batch=99,
        keep_weight=0.0,
        kl_weight=0.0,
        margin=100.0,
    )
    basis, history = optimize_direction(
        model, tokenizer, target, keep, harmless, init, REFUSAL, span, s, progress=False
    )
    assert basis.shape == (2, model.config.hidden_size)
    assert torch.allclose(basis @ basis.T, torch.eye(2, dtype=torch.float64), atol=1e-6)
    assert (basis @ span.T).abs().max() < 1e-6
    start = unit_direction(init, span)
    assert start[0] @ init[0] > 0 and start[1] @ init[1] > 0  # the orthonormalized rows keep their inputs' signs
    before, after = (_target_score(model, tokenizer, target.texts, b) for b in (start, basis))
    assert after < before - 0.05 and history[0]["target_score"] == pytest.approx(before, abs=1e-3)
    with pytest.raises(ValueError, match="single direction"):
        optimize_direction(
            model,
            tokenizer,
            target,
            keep,
            harmless,
            init,
            REFUSAL,
            span,
            OptimizeSettings(average=True),
            progress=False,
        )


def test_chunked_steps_give_the_whole_minibatch_gradient(tokenizer):
    """Gradient accumulation over row chunks (the memory bound): the same gradient and metrics as one forward."""
    import random

    from steer.targeted.optimize import draw, frozen, step_gradient

    model = make_model("qwen2")
    texts = chat_texts(tokenizer, PROMPTS)
    logits = batched_last_logits(model, tokenizer, texts)
    groups = [Group(texts[i::3], logits[i::3]) for i in range(3)]
    picks, _ = draw(random.Random(0), [(g, 3) for g in groups])
    init = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    grads, rows = [], []
    for chunk in (64, 2):
        v = (init / init.norm()).requires_grad_(True)
        with frozen(model), torch.enable_grad():
            rows.append(step_gradient(model, tokenizer, groups, picks, v, None, [g.base_logits for g in groups],
                                      [70, 71], OptimizeSettings(chunk_rows=chunk)))  # fmt: skip
        grads.append(v.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)
    assert float(grads[0].norm()) > 0
    assert all(rows[0][k] == pytest.approx(rows[1][k], rel=1e-4, abs=1e-6) for k in rows[0]), rows
