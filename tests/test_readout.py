"""The learned readout (steer.targeted.readout) on tiny models: hooks equal the baked weights, the update
is rank 1 along r, training descends and is seeded, unsupported writers are refused."""

import pytest
import torch
from conftest import PROMPTS, make_model

from steer.edit.preview import Edit, preview
from steer.edit.rank1 import bake, zeros
from steer.errors import SteerError
from steer.locate.scores import refusal_score
from steer.model.adapters import resolve
from steer.model.collect import batched_last_logits
from steer.prompts import chat_texts
from steer.targeted.optimize import Group, OptimizeSettings
from steer.targeted.readout import Continuations, ReadoutSettings, continuations, fit_scale, train_readout

REFUSAL = [70, 71]


def _random_readout(model, seed: int = 0, scale: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(a.shape, generator=g) * scale for k, a in zeros(model).items()}


def _unit(d: int, seed: int = 1) -> torch.Tensor:
    r = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return r / r.norm()


@pytest.mark.parametrize("arch", ["qwen2", "llama", "phi3"])
def test_hooks_equal_the_baked_weights_and_zero_changes_nothing(arch, tokenizer):
    model = make_model(arch)
    texts = chat_texts(tokenizer, PROMPTS[:6])
    base = batched_last_logits(model, tokenizer, texts)
    r = _unit(model.config.hidden_size)
    with preview(model, Edit(r, project=False, readout=zeros(model))):
        assert torch.equal(batched_last_logits(model, tokenizer, texts), base)
    readout = _random_readout(model)
    with preview(model, Edit(r, project=False, readout=readout)):
        hooked = batched_last_logits(model, tokenizer, texts)
    assert (hooked - base).abs().max() > 1e-3  # the readout does something
    assert torch.equal(batched_last_logits(model, tokenizer, texts), base)  # hooks removed
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert bake(model, r, readout) == 2 * model.config.num_hidden_layers
    torch.testing.assert_close(batched_last_logits(model, tokenizer, texts), hooked, atol=2e-5, rtol=1e-5)
    # the update is rank 1 along r in every writer, and nothing else changed
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.endswith(("o_proj.weight", "down_proj.weight")) for k in changed)
    for k in changed:
        delta = (model.state_dict()[k] - before[k]).double()
        off = delta - torch.outer(r.double(), r.double() @ delta)
        assert off.abs().max() < 1e-6 * delta.abs().max()


@pytest.mark.parametrize("arch", ["gemma2", "qwen2_moe"])
def test_writers_that_are_not_plain_linear_maps_are_refused(arch):
    with pytest.raises(SteerError, match="plain linear writers"):
        zeros(make_model(arch))


def _groups(model, tokenizer):
    t, k = (chat_texts(tokenizer, PROMPTS[i::3]) for i in range(2))
    h = chat_texts(tokenizer, PROMPTS)  # several harmless prompts, so the KL's 95% bound is above its mean
    logits = lambda x: batched_last_logits(model, tokenizer, x)  # noqa: E731
    return Group(t, logits(t)), Group(k, logits(k)), Group(h, logits(h))


def test_training_lowers_the_target_score_and_restores_the_model(tokenizer):
    model = make_model("qwen2")
    target, keep, harmless = _groups(model, tokenizer)
    # a direction the refusal tokens' logits read (through the final norm): a random one barely moves them
    u = (model.lm_head.weight[REFUSAL].mean(0) - model.lm_head.weight.mean(0)) * model.model.norm.weight
    r = (u / u.norm()).detach()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = OptimizeSettings(
        target_batch=99, keep_batch=99, harmless_batch=99, keep_weight=0.0, kl_weight=0.0, margin=100.0
    )
    s = ReadoutSettings(steps=10, lr=0.05, l2=0.0, loss=loss)
    readout, history = train_readout(model, tokenizer, target, keep, harmless, r, REFUSAL, s, progress=False)
    assert len(history) == 10 and history[-1]["target_score"] < history[0]["target_score"] - 0.05
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    with preview(model, Edit(r, project=False, readout=readout)):
        after = refusal_score(batched_last_logits(model, tokenizer, target.texts), REFUSAL).mean()
    assert after < refusal_score(target.base_logits, REFUSAL).mean() - 0.05


def test_l2_penalty_shrinks_what_is_written(tokenizer):
    model = make_model("llama")
    groups = _groups(model, tokenizer)
    r = _unit(model.config.hidden_size)
    loss = OptimizeSettings(target_batch=99, keep_batch=99, harmless_batch=99, margin=100.0)
    size = {}
    for l2 in (0.0, 100.0):
        readout, _ = train_readout(
            model, tokenizer, *groups, r, REFUSAL, ReadoutSettings(steps=6, lr=0.05, l2=l2, loss=loss), progress=False
        )
        size[l2] = sum(float(a.norm()) for a in readout.values())
    assert size[100.0] < size[0.0]


def test_training_is_seeded(tokenizer):
    model = make_model("qwen2")
    groups = _groups(model, tokenizer)
    r = _unit(model.config.hidden_size)
    run = lambda seed: train_readout(
        model,
        tokenizer,
        *groups,
        r,
        REFUSAL,
        ReadoutSettings(
            steps=3,
            lr=0.01,
            components=("mlp",),
            loss=OptimizeSettings(target_batch=1, keep_batch=1, harmless_batch=1, seed=seed),
        ),
        progress=False,
    )
    (a, ha), (b, hb), (c, _) = run(3), run(3), run(4)
    assert set(a) == {f"{i}.mlp" for i in range(len(resolve(model).layers))}
    assert ha == hb and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_fit_scale_takes_the_largest_fraction_that_meets_the_constraints(tokenizer):
    from steer.targeted.search import ValData

    model = make_model("qwen2")
    t, k = (chat_texts(tokenizer, PROMPTS[i::3]) for i in range(2))
    h = chat_texts(tokenizer, PROMPTS)  # several harmless prompts, so the KL's 95% bound is above its mean
    logits = lambda x: batched_last_logits(model, tokenizer, x)  # noqa: E731
    val = ValData(t, k, h, logits(t), logits(k), logits(h), REFUSAL)
    r, readout = _unit(model.config.hidden_size), _random_readout(model, scale=0.3)
    scale, rows = fit_scale(model, tokenizer, r, readout, val, keep_floor=None, kl_max=10.0)
    assert scale == 1.0 and len(rows) == 1 and rows[0]["feasible"]
    kls = [fit_scale(model, tokenizer, r, readout, val, None, kl_max=1e-12)[1]][0]
    assert [row["scale"] for row in kls] == [1.0, 0.75, 0.5, 0.25] and not any(row["feasible"] for row in kls)
    assert kls[0]["kl"] > kls[-1]["kl"] > 0  # a smaller fraction moves the model less
    between = (kls[1]["kl_ucb"] + kls[2]["kl_ucb"]) / 2  # admits 0.5 and 0.25, not 0.75
    scale, rows = fit_scale(model, tokenizer, r, readout, val, None, kl_max=between)
    assert scale == 0.5 and [row["scale"] for row in rows] == [1.0, 0.75, 0.5]
    # the mean criterion: a bound between 0.75's mean and its 95% bound admits 0.75 by its mean only
    mean = (kls[1]["kl"] + min(kls[1]["kl_ucb"], kls[0]["kl"])) / 2
    assert kls[1]["kl"] < mean < kls[1]["kl_ucb"] and kls[0]["kl"] > mean
    assert fit_scale(model, tokenizer, r, readout, val, None, kl_max=mean)[0] < 0.75
    assert fit_scale(model, tokenizer, r, readout, val, None, kl_max=mean, kl_stat="kl")[0] == 0.75
    with pytest.raises(ValueError, match="kl_stat"):
        fit_scale(model, tokenizer, r, readout, val, None, kl_max=mean, kl_stat="median")
    floor = fit_scale(model, tokenizer, r, readout, val, keep_floor=1e9, kl_max=None)
    assert floor[0] == 0.0  # no fraction keeps an unreachable harmful score: the edit stays as it was


def test_later_token_kl_lines_up_with_the_base_models_answer(tokenizer):
    model = make_model("qwen2")
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # peaked next-token distributions, so positions can be told apart
    target, keep, harmless = _groups(model, tokenizer)
    cont = continuations(model, tokenizer, harmless.texts, 3)
    assert cont.base_logp.shape == (len(cont.ids), 3, model.config.vocab_size) and len(cont.ids) == len(harmless.texts)
    prompt_len = [len(ids) for ids in tokenizer(harmless.texts, add_special_tokens=False)["input_ids"]]
    assert [len(ids) - n for ids, n in zip(cont.ids, prompt_len)] == [2] * len(cont.ids)
    # the first of the n positions is the first answer token: the prompts' last-position logits
    torch.testing.assert_close(
        cont.base_logp[:, 0].float(), torch.log_softmax(harmless.base_logits, -1), atol=0.1, rtol=0.02
    )
    r = _unit(model.config.hidden_size)
    s = ReadoutSettings(
        steps=1, lr=0.0, kl_tokens=3, loss=OptimizeSettings(target_batch=2, keep_batch=2, harmless_batch=4)
    )
    run = lambda c: train_readout(model, tokenizer, target, keep, harmless, r, REFUSAL, s, cont=c, progress=False)[1][0]
    row = run(cont)
    # nothing edited: the model is the base model at every position (up to bfloat16 storage)
    assert row["kl"] < 1e-2 and row["kl_later"] < 1e-2
    shifted = run(Continuations(cont.ids, cont.base_logp.roll(1, dims=1)))  # base positions off by one
    assert shifted["kl_later"] > 100 * row["kl_later"] + 0.1
    with pytest.raises(ValueError, match="continuations"):
        train_readout(model, tokenizer, target, keep, harmless, r, REFUSAL, s, progress=False)


def test_bake_refuses_a_readout_that_does_not_fit_before_writing():
    model = make_model("qwen2")
    r, state = _unit(model.config.hidden_size), {k: v.clone() for k, v in model.state_dict().items()}
    good = _random_readout(model)
    with pytest.raises(SteerError, match="readout vector for 9.mlp .* no such writer"):
        bake(model, r, {**good, "9.mlp": good["0.mlp"]})
    with pytest.raises(SteerError, match=r"readout vector for 1.attn \(shape \[3\]\) .* input size"):
        bake(model, r, {**good, "1.attn": torch.zeros(3)})
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # nothing written


@pytest.mark.parametrize("kl_tokens", [1, 3])
def test_chunked_steps_give_the_whole_minibatch_gradient(tokenizer, kl_tokens):
    """Gradient accumulation over row chunks (the memory bound) changes nothing but float rounding: one step's
    gradient and metrics equal those of one forward over the whole minibatch."""
    from steer.edit.rank1 import writers
    from steer.targeted.optimize import draw, frozen
    from steer.targeted.readout import _accumulate

    model = make_model("qwen2")
    groups = _groups(model, tokenizer)
    cont = continuations(model, tokenizer, groups[2].texts, kl_tokens) if kl_tokens > 1 else None
    if cont is not None:
        groups = (*groups[:2], Group([str(i) for i in range(len(cont.ids))], cont.base_logp[:, 0]))
    r = _unit(model.config.hidden_size)
    picks, _ = draw(__import__("random").Random(0), [(g, n) for g, n in zip(groups, (3, 3, 5))])
    base = [g.base_logits.float() for g in groups]
    grads, rows = [], []
    for chunk in (64, 2):  # one chunk holding every row; then chunks of 2 rows, groups split across chunks
        loss = OptimizeSettings(target_batch=3, keep_batch=3, harmless_batch=5, chunk_rows=chunk)
        s = ReadoutSettings(l2=10.0, kl_tokens=kl_tokens, loss=loss)
        params = {k: a.requires_grad_(True) for k, a in _random_readout(model, scale=0.05).items()}
        with frozen(model), torch.enable_grad():
            rows.append(_accumulate(model, tokenizer, list(groups), picks, r, params, writers(model, s.components),
                                    cont, base, REFUSAL, s))  # fmt: skip
        grads.append({k: a.grad.clone() for k, a in params.items()})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-6, rtol=1e-4)
    assert any(float(g.norm()) > 0 for g in grads[0].values())
    assert rows[0].keys() == rows[1].keys()
    assert all(rows[0][k] == pytest.approx(rows[1][k], rel=1e-4, abs=1e-6) for k in rows[0]), rows
    assert ("kl_later" in rows[0]) == (kl_tokens > 1)
