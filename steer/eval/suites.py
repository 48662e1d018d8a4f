"""Evaluate: run named suites on one model with the cached engine; judge, KL and damage checks.

Suites (see SUITES): censorship, refusal, xstest, controls, mirrored, speech (judged answers); kl (needs a reference
model); knowledge and slant (scored without decoding); mmlu, gsm8k, math500, aime24, aime25
(steer.eval.capability). Each returns
    {"metrics": {name: {"value", "ci": [lo, hi], "n"}}, "items": [per-item dicts], "paired": [...]}
where `paired` names the boolean item fields that `steer compare` tests item by item.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from steer.errors import SteerError
from steer.eval import capability, knowledge, slant
from steer.eval.benchmarks import sample
from steer.eval.candour import KeyJudge, Verdict, judge_answers
from steer.eval.config import EvalConfig
from steer.eval.engine import GenSpec, ItemCache, generate_cached
from steer.eval.judge import Judge, degenerate
from steer.eval.keys import KeySet
from steer.eval.kl import Reference, suite_kl
from steer.eval.stats import rate
from steer.prompts import Prompt, chat_texts, load_prompts

# The decoding protocol (docs/evaluation.md): greedy with the model's published repetition penalty (EvalConfig);
# 128 tokens where facts are checked, 48 where only refusal is (the opening decides a refusal).
JUDGED_TOKENS = 48
CANDOUR_TOKENS = 128


@dataclass
class Ctx:
    """One model under evaluation: model, tokenizer, weights fingerprint, per-item cache, config, judge, and the
    base side of the kl suite."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str  # weights fingerprint (engine.fingerprint): cache key
    cache: ItemCache
    config: EvalConfig
    judge: Judge = field(default_factory=KeyJudge)
    keys: KeySet | None = None  # answer keys by prompt id (judge v3's candour); None: three classes only
    reference: Reference | None = None  # the base side of the kl suite (steer.eval.kl)

    def data_dir(self, suite: str) -> Path:
        if self.config.data_dir is None:
            raise SteerError(f"suite {suite} reads benchmark data: pass --data-dir (e.g. ../shared/data)")
        if not Path(self.config.data_dir).is_dir():
            raise SteerError(f"data folder {self.config.data_dir} does not exist (suite {suite})")
        return Path(self.config.data_dir)


def judged(ctx: Ctx, suite: str, groups: dict[str, list[Prompt]]) -> dict:
    """Greedy answers (cached) for every group, judged (with each prompt's answer key where the judge uses keys);
    rates per group."""
    flat = [(g, p) for g, ps in groups.items() for p in ps]
    default = CANDOUR_TOKENS if suite in ("censorship", "controls") else JUDGED_TOKENS
    spec = GenSpec(ctx.config.tokens(suite, default), repetition_penalty=ctx.config.repetition_penalty)
    texts = chat_texts(ctx.tokenizer, [p.text for _, p in flat])
    outs = generate_cached(
        ctx.model, ctx.tokenizer, texts, spec, ctx.cache, ctx.model_id, ctx.config.batch_size, desc=suite
    )
    keys = [ctx.keys.get(p.id) if ctx.keys is not None else None for _, p in flat]
    verdicts = judge_answers(ctx.judge, [p.text for _, p in flat], [o["text"] for o in outs], keys)
    items = [_judged_item(g, p, o["text"], v) for (g, p), o, v in zip(flat, outs, verdicts)]
    metrics = {}
    for g in groups:
        rows = [i for i in items if i["group"] == g]
        metrics[f"refusal/{g}"] = rate([i["refused"] for i in rows])
        if suite in ("censorship", "controls", "critique"):
            metrics |= _censorship_metrics(g, rows)
    metrics["degenerate"] = rate([i["degenerate"] for i in items])
    paired = ["refused", "censored", "degenerate"] + (["candid"] if any("candid" in i for i in items) else [])
    return {"metrics": metrics, "items": items, "paired": paired}


def _judged_item(group: str, p: Prompt, output: str, v: Verdict) -> dict:
    return {
        "id": p.id,
        "group": group,
        "lang": p.lang,
        "topic": p.topic,
        "prompt": p.text,
        "output": output,
        **v.as_dict(),
        "refused": v.label == "denial",
        "censored": v.label != "complete",
        "degenerate": degenerate(output),
    }


def _censorship_metrics(g: str, rows: list[dict]) -> dict:
    """censorship/<g>; the loop-free diagnostic; candour and fabrication over the answers that have a key."""
    out = {f"censorship/{g}": rate([i["censored"] for i in rows])}
    # diagnostic beside it, never instead: a repetition loop is not an answer (so it counts as
    # censored above), but it is a decoding failure of small models rather than a deflection
    fluent = [i["censored"] for i in rows if not i["degenerate"]]
    if fluent:
        out[f"censorship_without_loops/{g}"] = rate(fluent)
    keyed = [i for i in rows if "candid" in i]
    if keyed:
        out[f"candour/{g}"] = rate([i["candid"] for i in keyed])
        out[f"fabrication/{g}"] = rate([i["label"] == "complete" and not i["candid"] for i in keyed])
    return out


def _by_language(ctx: Ctx, suite: str, prompt_set: str) -> dict:
    """A shipped set's configured split (default test), English and Chinese groups, judged."""
    lim, s = ctx.config.limit(suite), ctx.config.seed
    return judged(
        ctx, suite, {lang: sample(load_prompts(prompt_set, ctx.config.split, lang), lim, s) for lang in ("en", "zh")}
    )


def suite_censorship(ctx: Ctx) -> dict:
    """Refusal and censorship rates on the sensitive set's split (default test), English and Chinese, judged."""
    return _by_language(ctx, "censorship", "sensitive")


def suite_critique(ctx: Ctx) -> dict:
    """Refusal and censorship rates on requests to criticise or satirise China's leaders and party-state
    (steer/data/prompts/critique.jsonl, default test split), English and Chinese, judged (no answer keys)."""
    return _by_language(ctx, "critique", "critique")


def suite_controls(ctx: Ctx) -> dict:
    """The censorship metrics on topic-matched controls (China questions nobody censors, default test split):
    the rate the judge gives answers that are not censorship (loops, echoes, invented deflections),
    so the floor under the censorship suite's rates."""
    return _by_language(ctx, "controls", "controls")


def suite_refusal(ctx: Ctx) -> dict:
    """Refusal rates on the harmful and harmless sets' split (default test), judged."""
    lim, s = ctx.config.limit("refusal"), ctx.config.seed
    return judged(
        ctx, "refusal", {g: sample(load_prompts(g, ctx.config.split), lim, s) for g in ("harmful", "harmless")}
    )


def load_xstest(data_dir: Path) -> list[Prompt]:
    """XSTest's safe prompts from data_dir/overrefusal/xstest_prompts.csv (columns id, prompt, type, label); the
    type becomes the topic."""
    path = data_dir / "overrefusal" / "xstest_prompts.csv"
    if not path.exists():
        raise SteerError(f"no XSTest data: expected {path}")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"id", "prompt", "type", "label"} <= set(rows[0]):
        raise SteerError(f"{path}: expected columns id, prompt, type, label")
    return [Prompt(f"xstest-{r['id']}", r["prompt"], "en", r["type"]) for r in rows if r["label"] == "safe"]


def suite_xstest(ctx: Ctx) -> dict:
    """Over-refusal: the refusal rate on XSTest's safe prompts (--data-dir), judged."""
    prompts = sample(load_xstest(ctx.data_dir("xstest")), ctx.config.limit("xstest"), ctx.config.seed)
    return judged(ctx, "xstest", {"safe": prompts})


SLANT_DATA = Path(__file__).resolve().parents[1] / "data" / "slant"


def suite_mirrored(ctx: Ctx) -> dict:
    """Even-handedness: pairs of opposite requests (steer/data/slant/mirrored.jsonl; "the strongest case that X" /
    "... not X", satire of politicians of different sides), judged. asymmetry/refusal/<lang>: share of pairs where
    exactly one side is refused; asymmetry/complete/<lang>: where exactly one side gets a complete answer.
    --limit caps the pairs per language (seeded)."""
    groups = {}
    for lang in ("en", "zh"):
        prompts = load_prompts(str(SLANT_DATA / "mirrored.jsonl"), lang=lang)
        keys = sorted({_pair_of(p.id) for p in prompts})
        lim = ctx.config.limit("mirrored")
        keep = set(keys if lim is None else random.Random(ctx.config.seed).sample(keys, min(lim, len(keys))))
        groups[lang] = [p for p in prompts if _pair_of(p.id) in keep]
    res = judged(ctx, "mirrored", groups)
    for lang in groups:
        sides: dict[str, list[dict]] = {}
        for i in res["items"]:
            if i["group"] == lang:
                sides.setdefault(_pair_of(i["id"]), []).append(i)
        pairs = [v for v in sides.values() if len(v) == 2]
        res["metrics"][f"asymmetry/refusal/{lang}"] = rate([a["refused"] != b["refused"] for a, b in pairs])
        res["metrics"][f"asymmetry/complete/{lang}"] = rate([a["censored"] != b["censored"] for a, b in pairs])
        res["metrics"][f"complete/{lang}"] = rate([not i["censored"] for v in pairs for i in v])
    return res


def _pair_of(item_id: str) -> str:
    """mir-001-a-en -> mir-001-en: the two sides of a mirrored pair share it."""
    return re.sub(r"-[ab](?=-[a-z]+$)", "", item_id)


def suite_speech(ctx: Ctx) -> dict:
    """Political speech beyond China (steer/data/slant/speech.jsonl, SpeechMap-style themes), judged:
    refusal/<lang>, censorship/<lang> (denial + evasive) and complete/<lang>."""
    lim, seed = ctx.config.limit("speech"), ctx.config.seed
    path = str(SLANT_DATA / "speech.jsonl")
    res = judged(ctx, "speech", {lang: sample(load_prompts(path, lang=lang), lim, seed) for lang in ("en", "zh")})
    for lang in ("en", "zh"):
        rows = [i for i in res["items"] if i["group"] == lang]
        res["metrics"][f"censorship/{lang}"] = rate([i["censored"] for i in rows])
        res["metrics"][f"complete/{lang}"] = rate([not i["censored"] for i in rows])
    return res


def _capability(name: str) -> Callable[[Ctx], dict]:
    return lambda ctx: capability.run(name, ctx)


SUITES: dict[str, Callable[[Ctx], dict]] = {
    "censorship": suite_censorship,
    "refusal": suite_refusal,
    "xstest": suite_xstest,
    "controls": suite_controls,
    "critique": suite_critique,
    "kl": suite_kl,
    "knowledge": knowledge.suite_knowledge,
    "slant": slant.suite_slant,
    "mirrored": suite_mirrored,
    "speech": suite_speech,
    **{name: _capability(name) for name in ("mmlu", "gsm8k", "math500", "aime24", "aime25")},
}


def parse_suites(spec: str) -> list[str]:
    """Suite names from a comma-separated list ("all": every suite in SUITES); an unknown name is a SteerError."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return list(SUITES)
    unknown = [s for s in names if s not in SUITES]
    if unknown or not names:
        raise SteerError(f"unknown suite {', '.join(unknown) or repr(spec)}: choose from {', '.join(SUITES)} (or all)")
    return names


def run_suites(ctx: Ctx, suites: list[str] | None = None) -> dict[str, dict]:
    """Every suite in order; a suite's failure on bad data stops the run with its message."""
    random.seed(ctx.config.seed)
    torch.manual_seed(ctx.config.seed)
    return {name: SUITES[name](ctx) for name in (ctx.config.suites if suites is None else suites)}
