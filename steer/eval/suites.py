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
from tqdm.auto import tqdm

from steer.errors import SteerError
from steer.eval import capability, knowledge, slant
from steer.eval.benchmarks import sample
from steer.eval.candour import KeyJudge, Verdict, judge_answers
from steer.eval.config import EvalConfig
from steer.eval.engine import GenSpec, ItemCache, generate_cached
from steer.eval.judge import Judge, degenerate
from steer.eval.keys import KeySet
from steer.eval.stats import mean, rate
from steer.model.collect import input_device
from steer.prompts import Prompt, chat_texts, load_prompts

# The decoding protocol (docs/evaluation.md): greedy with the model's published repetition penalty (EvalConfig);
# 128 tokens where facts are checked, 48 where only refusal is (the opening decides a refusal).
JUDGED_TOKENS = 48
CANDOUR_TOKENS = 128
KL_TOKENS = 32  # tokens of the base model's greedy continuation used for multi-token KL


@dataclass
class Ctx:
    """One model under evaluation: model, tokenizer, weights fingerprint, per-item cache, config, judge, and the
    reference (base) model's context for the kl suite."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str  # weights fingerprint (engine.fingerprint): cache key
    cache: ItemCache
    config: EvalConfig
    judge: Judge = field(default_factory=KeyJudge)
    keys: KeySet | None = None  # answer keys by prompt id (judge v3's candour); None: three classes only
    reference: Ctx | None = None  # base model for KL

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


KL_ROWS = 8  # rows per KL forward: 2 x [8, 33, 152k] float32 logits = 0.3 GB, not 1.3 GB at batch 32


@torch.inference_mode()
def token_kl(
    base_fn: Callable,
    new_fn: Callable,
    pad_id: int,
    seqs: list[list[int]],
    n_prompt: list[int],
    batch_size: int = 16,
    desc: str | None = None,
) -> list[list[float]]:
    """Per-token KL(base || new) along teacher-forced sequences.

    seqs[i] = prompt ids + the base model's greedy continuation; n_prompt[i] = prompt length.
    base_fn/new_fn map (left-padded batch {input_ids, attention_mask, position_ids}, keep) to the
    logits of the last `keep` positions [B, keep, vocab]: only positions that predict answer
    tokens are computed, so memory grows with the continuation, not the prompt. Returns, per
    sequence, the KL at each predicted continuation token: entry 0 is the first answer token
    (first-token KL), entry j the (j+1)-th.
    """
    out: list[list[float]] = [[] for _ in seqs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=desc is None, leave=False):
        idx = order[start : start + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, width - len(seqs[i]) :], mask[r, width - len(seqs[i]) :] = torch.tensor(seqs[i]), 1
        batch = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        n_cont = [len(seqs[i]) - n_prompt[i] for i in idx]
        keep = max(n_cont) + 1  # the last prompt position predicts the first answer token
        for r, i in enumerate(idx):  # row by row: [keep, vocab] in float64 stays small
            if r % KL_ROWS == 0:  # both models' logits for KL_ROWS rows at a time: [KL_ROWS, keep, vocab] each
                part = {k: v[r : r + KL_ROWS] for k, v in batch.items()}
                base, new = base_fn(part, keep), new_fn(part, keep)
            lp, lq = torch.log_softmax(base[r % KL_ROWS].double(), -1), torch.log_softmax(new[r % KL_ROWS].double(), -1)
            kl = (lp.exp() * (lp - lq)).sum(-1)  # [keep]; the last position predicts past the answer
            first = keep - 1 - n_cont[r]
            out[i] = kl[first : keep - 1].tolist() if n_cont[r] > 0 else kl[first : first + 1].tolist()
    return out


def logits_fn(model: torch.nn.Module) -> Callable:
    """(batch, keep) -> float32 logits of the last `keep` positions [B, keep, vocab] (on CPU)."""
    device = input_device(model)
    return lambda b, keep: (
        model(**{k: v.to(device) for k, v in b.items()}, logits_to_keep=keep, use_cache=False).logits.float().cpu()
    )


def suite_kl(ctx: Ctx, new_fn: Callable | None = None) -> dict:
    """First-token and multi-token KL(base || model) on harmless test prompts.

    Multi-token KL is teacher-forced on the base model's own greedy continuation
    (KL_TOKENS tokens, cached) and averaged over its tokens per prompt. First-token KL is also
    reported over the prompts whose base continuation the judge does not label a denial.
    """
    ref = ctx.reference
    if ref is None:
        raise SteerError(
            "suite kl needs a reference model: `steer eval MODEL --reference BASE`, or use `steer compare`"
        )
    prompts = sample(load_prompts("harmless", ctx.config.split), ctx.config.limit("kl"), ctx.config.seed)
    texts = chat_texts(ctx.tokenizer, [p.text for p in prompts])
    cont = generate_cached(
        ref.model,
        ref.tokenizer,
        texts,
        GenSpec(KL_TOKENS),
        ref.cache,
        ref.model_id,
        ctx.config.batch_size,
        desc="kl: base",
    )
    prompt_ids = ctx.tokenizer(texts, add_special_tokens=False)["input_ids"]
    seqs = [p + c["ids"] for p, c in zip(prompt_ids, cont)]
    per_token = token_kl(
        logits_fn(ref.model),
        new_fn or logits_fn(ctx.model),
        ctx.tokenizer.pad_token_id,
        seqs,
        [len(p) for p in prompt_ids],
        ctx.config.batch_size,
        desc="kl",
    )
    labels = ctx.judge.classify([p.text for p in prompts], [c["text"] for c in cont])
    items = [_kl_item(p, c, k, lab) for p, c, k, lab in zip(prompts, cont, per_token, labels)]
    s = ctx.config.seed
    answered = [i["kl_first"] for i in items if i["base_label"] != "denial"]
    # the few harmless prompts the base model refuses weigh heavily: an edit that answers one moves
    # its first token from "I'm sorry" to an answer (KL ~1); the split shows that apart from damage
    return {
        "metrics": {
            "kl/first_token": mean([i["kl_first"] for i in items], s),
            "kl/first_token_base_answered": mean(answered, s),
            "kl/multi_token": mean([i["kl_mean"] for i in items], s),
        },
        "items": items,
        "paired": [],
    }


def _kl_item(p: Prompt, c: dict, k: list[float], label: str) -> dict:
    """One harmless prompt's KL record: the base continuation, its label, first-token and mean KL."""
    return {
        "id": p.id,
        "prompt": p.text,
        "base_continuation": c["text"],
        "base_label": label,
        "kl_first": k[0],
        "kl_mean": sum(k) / len(k),
        "kl_tokens": [round(x, 6) for x in k],
    }


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
    return {name: SUITES[name](ctx) for name in (suites or ctx.config.suites)}
