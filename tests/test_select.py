"""Selection: the lazy scoring of the shortlist chooses what scoring every candidate in full chooses."""

import copy

import pytest
import torch
from conftest import make_model

from steer.locate.directions import DirectionSet
from steer.locate.select import _choose, score_candidate, select_direction
from steer.model.collect import batched_last_logits

TARGET = ["tell me about the square", "what happened in june", "who was the man", "why the tanks"]
HARMLESS = ["a poem about rain", "sum 2 and 3", "name a colour", "boil an egg", "a riddle", "plant a tree"]


def _setup(seed: int):
    torch.manual_seed(seed)
    model = make_model("qwen2", seed=seed)
    dirs = torch.randn(3, 2, model.config.hidden_size, dtype=torch.float64)
    means = torch.zeros_like(dirs)
    return model, DirectionSet(dirs, means, means.clone())


@pytest.mark.parametrize("kl_max", [1e-9, 0.05, 10.0])
@pytest.mark.parametrize("tokens", [list(range(3, 10)), list(range(3, 230))])
def test_lazy_scoring_chooses_what_full_scoring_chooses(tokenizer, kl_max, tokens):
    model, dirs = _setup(0)
    kwargs = dict(kl_max=kl_max, screen=4, screen_prompts=2, batch_size=4)
    sel = select_direction(model, tokenizer, dirs, TARGET, HARMLESS, tokens, **kwargs)
    base_h = batched_last_logits(model, tokenizer, HARMLESS, 4)
    full = [copy.copy(c) for c in sel.candidates if c.bypass is not None]
    assert len(full) == 4  # every shortlisted candidate has its bypass
    for c in full:
        score_candidate(model, tokenizer, dirs, c, TARGET, HARMLESS, tokens, base_h, kl_max, 4)
    best, fallback = _choose(full, kl_max)
    assert (sel.layer, sel.position, sel.fallback) == (best.layer, best.position, fallback)
    for lazy in sel.candidates:
        if lazy.kl is not None:  # a score that was computed equals the full one
            ref = next(c for c in full if (c.layer, c.position) == (lazy.layer, lazy.position))
            assert lazy.kl == pytest.approx(ref.kl) and lazy.bypass == pytest.approx(ref.bypass)


def test_scores_a_choice_cannot_need_are_skipped(tokenizer):
    model, dirs = _setup(1)
    tokens = list(range(3, 230))  # most of the vocabulary: the added direction "induces" easily
    # No KL bound can be met: every shortlisted candidate gets KL, none gets induce.
    sel = select_direction(model, tokenizer, dirs, TARGET, HARMLESS, tokens, kl_max=0.0, screen=4, screen_prompts=2)
    shortlist = [c for c in sel.candidates if c.bypass is not None]
    assert all(c.kl is not None and c.induce is None and c.passes is False for c in shortlist)
    assert sel.fallback is not None
    # Every bound met: the lowest bypass passes (if it induces) and nothing after it is scored.
    sel = select_direction(model, tokenizer, dirs, TARGET, HARMLESS, tokens, kl_max=1e9, screen=4, screen_prompts=2)
    shortlist = sorted((c for c in sel.candidates if c.bypass is not None), key=lambda c: c.bypass)
    chosen = next(i for i, c in enumerate(shortlist) if c.passes)
    assert (shortlist[chosen].layer, shortlist[chosen].position) == (sel.layer, sel.position)
    assert all(c.kl is None for c in shortlist[chosen + 1 :]) and chosen < len(shortlist) - 1


def _cand(layer, bypass, kl_ucb, induce=None):
    from steer.locate.select import Candidate

    c = Candidate(layer, -1, bypass - 0.5, bypass, induce, kl_ucb / 2, kl_ucb)
    c.passes = induce is not None and induce > 0 and kl_ucb < 0.1
    return c


def test_choice_order_pass_then_within_kl_then_lowest_kl_bound():
    strong, mild, weak = _cand(21, -5.3, 0.127), _cand(19, -3.3, 0.102), _cand(18, -3.0, 0.111)
    # Nothing within the bound: the candidate closest to it (least damage), not the strongest bypass.
    best, why = _choose([strong, mild, weak], 0.1)
    assert (best.layer, why) == (19, "no candidate had kl_ucb < kl_max; took the lowest kl_ucb")
    # One within the bound: the lowest bypass among those within it.
    best, why = _choose([strong, mild, weak], 0.105)
    assert best.layer == 19 and why.endswith("took the lowest bypass with kl_ucb < kl_max")
    # A passing candidate wins outright.
    passing = _cand(20, -1.0, 0.05, induce=1.0)
    assert _choose([strong, mild, passing], 0.1) == (passing, None)


def test_greedy_refused_adds_prompts_whose_top_token_refuses_below_even_odds():
    from steer.locate.scores import greedy_refused, refusal_score, split_by_score

    logits = torch.zeros(6, 10)
    logits[0, 3] = 5.0  # refusal token 3 takes almost all the mass: score > 0
    logits[1, 3] = 1.5  # token 3 on top (e^1.5 + 1 of e^1.5 + 9): under half the mass, score < 0, greedy refuses
    logits[2, 5] = 5.0  # an answer token on top
    logits[3, 4] = 1.5  # refusal token 4 on top, but token 6 close behind
    logits[3, 6] = 1.4
    refs = [3, 4]
    scores = refusal_score(logits, refs)
    assert scores[0] > 0 and scores[1] < 0 and scores[3] < 0
    assert split_by_score(logits, refs, True, min_keep=1) == [0]
    assert greedy_refused(logits, refs, min_keep=1) == [0, 1, 3]
    assert greedy_refused(logits, refs, min_keep=4) == list(range(6))  # too few: all, as split_by_score
