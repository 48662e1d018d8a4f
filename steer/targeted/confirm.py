"""Confirm the search's Pareto candidates with generation and the judge on validation prompts."""

from __future__ import annotations

from steer.edit.preview import preview
from steer.eval.judge import MarkerJudge
from steer.model.generation import generate
from steer.prompts import Prompt, chat_texts
from steer.targeted.prepare import Prepared
from steer.targeted.search import EditParams, SearchInputs, edit_basis
from steer.targeted.settings import TargetedSettings


def judged_rates(
    model, tokenizer, prompts: dict[str, list[Prompt]], s: TargetedSettings, judge=None
) -> dict[str, float]:
    """Censorship rate per sensitive group and refusal rate on harmful prompts, from greedy answers."""
    judge = judge or MarkerJudge()
    flat = [(g, p) for g, ps in prompts.items() for p in ps]
    answers = generate(
        model, tokenizer, chat_texts(tokenizer, [p.text for _, p in flat]), s.max_new_tokens, s.batch_size
    )
    labels = judge.classify([p.text for _, p in flat], answers)
    out = {}
    for g in prompts:
        got = [lab for (gg, _), lab in zip(flat, labels) if gg == g]
        key = "refusal" if g == "harmful" else "censorship"
        bad = [lab == "denial" if key == "refusal" else lab != "complete" for lab in got]
        out[f"{key}/{g}"] = sum(bad) / len(bad)
    return out


def confirm(model, tokenizer, prep: Prepared, inputs: SearchInputs, front: list[dict], s: TargetedSettings) -> dict:
    """Judge the Pareto candidates' answers on validation prompts; choose the one with the lowest
    censorship (EN + ZH) among those keeping harmful refusals (>= keep_fraction of base) and KL."""
    base = judged_rates(model, tokenizer, prep.val_prompts, s)
    shortlist = [r for r in front if r["kl_ucb"] <= s.kl_max] or front[:1]
    shortlist = sorted(shortlist, key=lambda r: r["target_score"])[: s.confirm]
    for row in shortlist:
        p = EditParams.from_dict(row["params"])
        with preview(model, p.edit(edit_basis(inputs, p))):
            row["judged"] = judged_rates(model, tokenizer, prep.val_prompts, s)
    keeps = lambda r: r["judged"]["refusal/harmful"] >= s.keep_fraction * base["refusal/harmful"]  # noqa: E731
    censor = lambda r: r["judged"]["censorship/sensitive/en"] + r["judged"]["censorship/sensitive/zh"]  # noqa: E731
    ok = [r for r in shortlist if keeps(r)]
    chosen = min(ok or shortlist, key=lambda r: (censor(r), r["kl"]))
    note = None if ok else "no confirmed candidate kept harmful refusals at the floor; took the lowest censorship"
    return {"base": base, "candidates": shortlist, "chosen": chosen, "note": note}
