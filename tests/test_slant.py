"""Slant stance probes: negation pairs cancel a yes-bias exactly, the shipped statements are balanced, the random
null is seeded and keeps the real edit's layers and strengths, and a planted shift is flagged."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model

from steer.edit.preview import Edit, preview
from steer.edit.project import Profile
from steer.errors import SteerError
from steer.eval import slant
from steer.eval.slant import Stance, StancePair, by_axis, flag, load_statements, random_like, shifts, stances

PAIRS = [
    StancePair("t-1", "axis-a", "en", "Rivers are good.", "Rivers are not good.", 1),
    StancePair("t-2", "axis-a", "en", "Hills are bad.", "Hills are not bad.", -1),
    StancePair("t-3", "axis-b", "en", "Tea is best.", "Tea is not best.", 1),
]
ONE_TOKEN = [("Statement: {s} Agree?", "A", "D"), ("Claim: {s} Yes?", "A", "D"), ("{s} - do you agree?", "A", "D")]


def yes_bias(model, token: int, bias: float):
    """Raise the next-token logit of `token` by `bias` everywhere (a hook on the output layer): a constant yes-bias
    on a one-token agree answer, since log p(A) - log p(D) moves by exactly `bias` at the answer position."""
    shift = torch.zeros(model.config.vocab_size)
    shift[token] = bias
    return model.lm_head.register_forward_hook(lambda m, i, out: out + shift)


def test_negation_pairs_cancel_a_constant_yes_bias_exactly(tokenizer, monkeypatch):
    monkeypatch.setitem(slant.PHRASINGS, "en", ONE_TOKEN)
    model = make_model("qwen2")
    plain = stances(model, tokenizer, PAIRS)
    token = tokenizer("A", add_special_tokens=False)["input_ids"][0]
    handle = yes_bias(model, token, 5.0)
    biased = stances(model, tokenizer, PAIRS)
    handle.remove()
    assert len(plain) == len(PAIRS) * len(ONE_TOKEN)
    for p, b in zip(plain, biased):
        assert b.yes_bias == pytest.approx(p.yes_bias + 5.0, abs=1e-3)  # the bias is there ...
        assert b.stance == pytest.approx(p.stance, abs=1e-4)  # ... and cancels in the stance


def test_stance_sign_follows_the_pole():
    assert slant.pair_stance(2.0, -1.0, 1) == (1.5, 0.5)
    assert slant.pair_stance(2.0, -1.0, -1) == (-1.5, 0.5)


def test_the_shipped_statements_are_balanced_pairs_in_both_languages():
    pairs = load_statements()
    axes = {p.axis for p in pairs}
    assert len(pairs) >= 240 and {"china-taiwan", "us-left-right", "neutral"} <= axes
    for axis in axes:
        for lang in ("en", "zh"):
            signs = [p.sign for p in pairs if p.axis == axis and p.lang == lang]
            assert signs and sum(signs) == 0, (axis, lang)
    assert all(p.statement != p.negation for p in pairs)
    assert len(slant.PHRASINGS["en"]) >= 3 and len(slant.PHRASINGS["zh"]) >= 3


def test_a_malformed_statement_file_fails_with_its_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"id": "x", "axis": "a", "lang": "en", "statement": "s", "negation": "n"}) + "\n")
    with pytest.raises(SteerError, match=r"s.jsonl:1: expected id, axis"):
        load_statements(path)


def test_random_null_is_seeded_and_keeps_layers_and_strengths():
    torch.manual_seed(0)
    real = Edit(
        torch.nn.functional.normalize(torch.randn(2, 64), dim=-1),
        profiles={"attn": Profile(peak=1.0, center=3.0, width=2.0, floor=0.1)},
        embed=0.5,
        preserve_norm=True,
    )
    a, b, c = random_like(real, 7), random_like(real, 7), random_like(real, 8)
    assert torch.equal(a.basis, b.basis) and not torch.equal(a.basis, c.basis)
    assert a.basis.shape == real.basis.shape
    assert torch.allclose(a.basis @ a.basis.T, torch.eye(2), atol=1e-5)  # orthonormal
    assert (a.profiles, a.embed, a.preserve_norm) == (real.profiles, real.embed, real.preserve_norm)
    assert abs(float(a.basis[0] @ real.basis[0])) < 0.5


def test_random_null_edits_run_on_a_model(tokenizer, monkeypatch):
    monkeypatch.setitem(slant.PHRASINGS, "en", ONE_TOKEN)
    model = make_model("llama")
    base = stances(model, tokenizer, PAIRS)
    with preview(model, random_like(Edit(torch.randn(64)), 0)):
        edited = stances(model, tokenizer, PAIRS)
    assert [r.stance for r in base] != [r.stance for r in edited]
    assert [r.stance for r in stances(model, tokenizer, PAIRS)] == [r.stance for r in base]  # preview undone


def test_cached_scores_resume_and_the_null_is_shared_between_edits_of_one_shape(tokenizer, tmp_path, monkeypatch):
    from steer.eval.engine import ItemCache

    monkeypatch.setitem(slant.PHRASINGS, "en", ONE_TOKEN)
    model = make_model("qwen2")
    scores = slant.Scores(ItemCache(tmp_path / "c.jsonl"), "base-weights")
    base = stances(model, tokenizer, PAIRS, scores=scores)
    assert [round(r.stance, 4) for r in base] == [round(r.stance, 4) for r in stances(model, tokenizer, PAIRS)]
    a, b = Edit(torch.randn(64)), Edit(torch.randn(64))  # two real edits: same shape, layers and strengths
    null_a = slant.null_shifts(model, tokenizer, a, PAIRS, base, 2, scores=scores)
    broken = make_model("qwen2")
    broken.forward = None  # any forward pass would fail: everything must come from the cache
    reread = slant.Scores(ItemCache(tmp_path / "c.jsonl"), "base-weights")
    assert slant.null_shifts(broken, tokenizer, b, PAIRS, base, 2, scores=reread) == null_a
    other = slant.Scores(ItemCache(tmp_path / "c.jsonl"), "other-weights")
    with pytest.raises(TypeError):
        stances(broken, tokenizer, PAIRS, scores=other)  # another model's weights: not read from the cache
    assert slant.edit_digest(random_like(a, 0)) != slant.edit_digest(random_like(a, 1))


def _rows(shift_a: float, noise: float, seed: int) -> list[Stance]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for axis, n, planted in (("axis-a", 12, shift_a), ("axis-b", 12, 0.0)):
        for i in range(n):
            for k in range(3):
                value = planted + noise * float(torch.randn(1, generator=g))
                out.append(Stance(f"{axis}-{i}", axis, "en", k, value, 0.0))
    return out


def test_a_planted_shift_is_flagged_and_an_unshifted_axis_is_not():
    base = _rows(0.0, 0.1, seed=0)
    real = shifts(base, _rows(2.0, 0.1, seed=1))
    null = [shifts(base, _rows(0.0, 0.1, seed=10 + s)) for s in range(10)]
    flags = flag(real, null)
    assert flags["axis-a/en"]["flagged"] and not flags["axis-b/en"]["flagged"]
    assert flags["axis-a/en"]["shift"] == pytest.approx(2.0, abs=0.2)
    lo, hi = flags["axis-a/en"]["ci"]
    assert lo < 2.0 < hi
    summary = by_axis(base)
    assert summary["axis-a/en"]["pairs"] == 12 and len(summary["axis-a/en"]["per_phrasing"]) == 3
    with pytest.raises(SteerError, match="at least one random edit"):
        flag(real, [])


def test_slant_mirrored_and_speech_suites_report_per_language(tokenizer, tmp_path):
    from steer.eval.engine import ItemCache, fingerprint
    from steer.eval.suites import Ctx, EvalConfig, run_suites

    model = make_model("qwen2")
    config = EvalConfig(["slant", "mirrored", "speech"], None, {"slant": 1, "mirrored": 2, "speech": 2})
    config.max_new_tokens = {"mirrored": 4, "speech": 4}
    ctx = Ctx(model, tokenizer, fingerprint(model), ItemCache(tmp_path / "c.jsonl"), config)
    res = run_suites(ctx)
    stance = res["slant"]["metrics"]
    assert {"stance/china-taiwan/en", "stance/neutral/zh", "phrasings/guns/en"} <= set(stance)
    assert stance["stance/guns/en"]["n"] == 1 and stance["phrasings/guns/en"]["n"] == 3
    mirrored = res["mirrored"]
    assert {i["group"] for i in mirrored["items"]} == {"en", "zh"} and len(mirrored["items"]) == 8  # 2 pairs x 2
    for lang in ("en", "zh"):
        assert mirrored["metrics"][f"asymmetry/refusal/{lang}"]["n"] == 2
        assert res["speech"]["metrics"][f"complete/{lang}"]["n"] == 2


ROW = {"id": "s1", "axis": "guns", "lang": "en", "statement": "Guns should be banned.", "sign": 1}


@pytest.mark.parametrize(
    "rows, error",
    [
        (
            [{**ROW, "negation": "Guns should not be banned."}, {**ROW, "id": "s2", "negation": ""}],
            "s2 has no negation",
        ),
        ([{**ROW, "negation": "Guns should not be banned.", "axis": "cats"}], "unknown axis 'cats'; known: china"),
        ([], "no stance statements"),
        ([{**ROW, "negation": "No."}, {**ROW, "negation": "No."}], "duplicate id s1"),
    ],
)
def test_bad_statement_sets_fail_in_one_line_from_the_cli(rows, error, tmp_path, tokenizer, capsys):
    from conftest import make_model

    from steer.checkpoint.save import save_checkpoint
    from steer.cli.main import main

    path = tmp_path / "statements.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_checkpoint(make_model("qwen2"), tokenizer, tmp_path / "m")
    capsys.readouterr()  # the save's progress bar
    argv = ["eval", str(tmp_path / "m"), "--suite", "slant", "--slant-file", str(path), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert error in err and "\n" not in err and not (tmp_path / "o").exists()
