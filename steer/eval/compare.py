"""`steer eval` and `steer compare`: run suites on one model, or on a base and an edited model
with paired tests on the same items, and write JSON, per-item JSONL, Markdown and plots.

Output folder (written atomically; cached items live in $STEER_CACHE/eval, keyed by weights):
    summary.json / comparison.json   metrics with 95% CIs (and paired tests)
    report.md                        the same as Markdown tables
    items/<suite>.jsonl              one line per item: id, prompt, output, extracted/label, correct
    *.png                            metric bars with CIs; MMLU per-subject deltas
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

from steer import __version__
from steer.checkpoint.manifest import machine, versions
from steer.checkpoint.save import atomic_dir, check_output, write_json
from steer.errors import SteerError
from steer.eval import slant
from steer.eval.candour import KeyJudge
from steer.eval.engine import ItemCache, fingerprint
from steer.eval.judge import Judge
from steer.eval.keys import load_keys
from steer.eval.kl import spilled
from steer.eval.stats import mcnemar_exact, paired_bootstrap_ci
from steer.eval.suites import Ctx, EvalConfig, run_suites
from steer.model.load import COMPUTE_DTYPES, Loaded, cache_dir, load_model
from steer.report.memory import peak_rss_gb
from steer.report.tables import compare_markdown, eval_markdown, plot_metrics, plot_subject_deltas


def _log(msg: str) -> None:
    print(f"[steer] {msg}", file=sys.stderr, flush=True)


def context(loaded: Loaded, config: EvalConfig, judge: Judge | None = None, cache: bool = True) -> Ctx:
    """The evaluation context of a loaded model: its weights fingerprint, its per-item cache under
    $STEER_EVAL_CACHE (default $STEER_CACHE/eval; cache=False keeps it in memory), config and judge
    (judge v3, KeyJudge, when None) and the shipped answer keys."""
    model_id = fingerprint(loaded.model)
    folder = Path(os.environ.get("STEER_EVAL_CACHE") or cache_dir() / "eval")
    store = ItemCache(folder / f"{model_id[:24]}.jsonl" if cache else None)
    return Ctx(loaded.model, loaded.tokenizer, model_id, store, config, judge or KeyJudge(), keys=load_keys())


# suites that read the shipped prompt sets' configured split (the rest: slant sets, benchmarks, XSTest)
SPLIT_SUITES = {"censorship", "controls", "critique", "refusal", "kl", "knowledge"}


def meta(config: EvalConfig, judge: Judge, models: dict[str, str], weights: dict[str, str], elapsed: float) -> dict:
    """The run record stored under "meta" in summary.json and comparison.json: command, models, their weights
    fingerprints (steer.eval.engine.fingerprint: what was evaluated, wherever its files lay), suites, limits, seed,
    shots, judge, decoding, data folder, elapsed seconds, versions and machine (steer.checkpoint.manifest)."""
    return {
        "steer_version": __version__,
        "command": " ".join(sys.argv),
        "models": models,
        "weights": weights,
        "suites": config.suites,
        "limits": config.limits,
        "split": config.split if set(config.suites) & SPLIT_SUITES else None,  # the other suites' sets have none
        "seed": config.seed,
        "shots": config.shots,
        "dtype": config.dtype,
        "judge": judge.name,
        "decoding": {
            "greedy": True,
            "repetition_penalty": config.repetition_penalty,
            "max_new_tokens": config.max_new_tokens,
        },
        "data_dir": str(config.data_dir) if config.data_dir else None,
        "elapsed_s": round(elapsed, 1),
        "peak_rss_gb": peak_rss_gb(),  # the whole process so far (GB): both models, every suite
        "versions": versions(),
        "machine": machine(),
    }


def _summary(results: dict[str, dict]) -> dict:
    return {suite: {k: v for k, v in r.items() if k not in ("items", "paired")} for suite, r in results.items()}


def _write_items(folder: Path, results: dict[str, dict]) -> None:
    (folder / "items").mkdir(exist_ok=True)
    for suite, r in results.items():
        with open(folder / "items" / f"{suite}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in r["items"])


def evaluate_model(
    model: str | None,
    config: EvalConfig,
    out: Path,
    *,
    reference: str | None = None,
    judge: Judge | None = None,
    force: bool = False,
    cache: bool = True,
) -> dict:
    """`steer eval`: suites on one model (kl against `reference`)."""
    check_output(out, force)
    if "kl" in config.suites and reference is None:
        raise SteerError("suite kl needs a reference model: add --reference BASE (or use steer compare)")
    started = time.time()
    ref = None
    if reference is not None and "kl" in config.suites:  # its logits spilled to disk before the model loads
        ref = spilled(context(load_model(reference, dtype=COMPUTE_DTYPES[config.dtype]), config, judge, cache))
        gc.collect()
    loaded = load_model(model, dtype=COMPUTE_DTYPES[config.dtype])
    ctx = context(loaded, config, judge, cache)
    ctx.reference = ref
    _log(f"evaluating {loaded.source} on {', '.join(config.suites)}")
    results = run_suites(ctx)
    summary = {
        "meta": meta(
            config,
            ctx.judge,
            {"model": loaded.source, "reference": reference},
            {"model": ctx.model_id},
            time.time() - started,
        ),
        "results": _summary(results),
    }
    with atomic_dir(out, force) as tmp:
        write_json(tmp / "summary.json", summary)
        _write_items(tmp, results)
        md = eval_markdown(summary)
        (tmp / "report.md").write_text(md + "\n", encoding="utf-8")
        plot_metrics(summary["results"], None, tmp / "metrics.png")
    print(md)
    return summary


MAX_GROUPS = 8


def paired(base: dict[str, dict], edited: dict[str, dict]) -> dict[str, dict]:
    """Per suite and paired field: exact McNemar test and a bootstrap CI of the difference,
    on the items both runs share (matched by suite, group and id)."""
    out = {}
    for suite, e in edited.items():
        if suite not in base:
            continue
        b_items = {(i.get("group"), i["id"]): i for i in base[suite]["items"]}
        for fld in e["paired"]:
            rows = [
                (b_items[k][fld], i[fld], i.get("group"))
                for i in e["items"]
                if (k := (i.get("group"), i["id"])) in b_items
            ]
            groups = sorted({g for _, _, g in rows}, key=str)
            # Always the whole suite; per group too when there are few groups (MATH-500 has 35
            # subject/level groups of 1-4 items: no test on those would mean anything).
            for g in [None] + (groups if 1 < len(groups) <= MAX_GROUPS else []):
                sel = [(x, y) for x, y, gg in rows if g is None or gg == g]
                bs, es = [bool(x) for x, _ in sel], [bool(y) for _, y in sel]
                test = mcnemar_exact(bs, es)
                test["delta_ci"] = list(paired_bootstrap_ci(bs, es))
                test["base"], test["edited"] = sum(bs) / len(bs), sum(es) / len(es)
                out[f"{suite}/{fld}" + (f"/{g}" if g else "")] = test
    return out


def _slant_null(bctx: Ctx, edited: str, b_res: dict, config: EvalConfig) -> dict:
    """The random-edit null of the slant suite: {"edits": [shifts per random edit], "seed"}, or {"reason"} when
    there is none (no slant suite, --null-edits 0, or EDITED records no edit: an SFT model, another tool's)."""
    if "slant" not in b_res or not config.null_edits:
        return {"edits": [], "reason": "--null-edits 0" if "slant" in b_res else "no slant suite"}
    from steer.checkpoint.verify import recorded_edit_of

    try:
        edit = recorded_edit_of(Path(edited))
    except SteerError as exc:
        _log(f"slant: no random-edit null ({exc})")
        return {"edits": [], "reason": f"no recorded edit: {exc}"}
    base_rows = slant.from_items(b_res["slant"]["items"])
    _log(f"slant: {config.null_edits} random-direction edits like the recorded one (the null)")
    pairs = slant.load_statements(config.slant_file)
    edits = slant.null_shifts(
        bctx.model, bctx.tokenizer, edit, pairs, base_rows, config.null_edits, config.seed, config.batch_size,
        slant.Scores(bctx.cache, bctx.model_id),
    )  # fmt: skip
    return {"edits": edits, "seed": config.seed, "rank": int(edit.basis.reshape(-1, edit.basis.shape[-1]).shape[0])}


def _slant_shifts(b_res: dict, e_res: dict, null: dict, config: EvalConfig) -> dict:
    """Per axis/lang: the edited model's stance shift with its CI, and (with a null) the random edits' range and
    the flag."""
    real = slant.shifts(
        slant.from_items(b_res["slant"]["items"]), slant.from_items(e_res["slant"]["items"]), config.seed
    )
    if not null["edits"]:
        return {"axes": real, "null": {k: v for k, v in null.items() if k != "edits"}}
    return {"axes": slant.flag(real, null["edits"]), "null": {"edits": len(null["edits"]), "seed": null["seed"],
            "rank": null["rank"], "shifts": null["edits"]}}  # fmt: skip


def _slant_report(comparison: dict, folder: Path) -> str:
    from steer.report.slant import null_markdown, plot_slant

    s = comparison["slant_shifts"]
    flagged = s["axes"] if s["null"].get("edits") else None
    plot_slant(comparison["base"]["slant"]["metrics"], comparison["edited"]["slant"]["metrics"], flagged,
               folder / "slant.png")  # fmt: skip
    if flagged is None:
        return f"Slant: no random-edit null ({s['null'].get('reason')}); shifts without flags in comparison.json."
    return null_markdown(flagged, s["null"]["edits"])


def compare_models(
    base: str | None,
    edited: str,
    config: EvalConfig,
    out: Path,
    *,
    judge: Judge | None = None,
    force: bool = False,
    cache: bool = True,
) -> dict:
    """`steer compare`: the same suites and items on both models, paired tests, plots."""
    check_output(out, force)
    started = time.time()
    b = load_model(base, dtype=COMPUTE_DTYPES[config.dtype])
    bctx = context(b, config, judge, cache)
    _log(f"base model {b.source}: {', '.join(s for s in config.suites if s != 'kl')}")
    b_res = run_suites(bctx, [s for s in config.suites if s != "kl"])
    b_source, b_id = b.source, bctx.model_id
    null = _slant_null(bctx, edited, b_res, config)  # on the base weights, before they are freed
    ref = spilled(bctx) if "kl" in config.suites else None  # the base's KL logits on disk
    b = bctx = None  # one model in memory at a time
    gc.collect()
    e = load_model(edited, dtype=COMPUTE_DTYPES[config.dtype])
    ectx = context(e, config, judge, cache)
    ectx.reference = ref
    _log(f"edited model {e.source}: {', '.join(config.suites)}")
    e_res = run_suites(ectx)
    tests = paired(b_res, e_res)
    comparison = {
        "meta": meta(
            config,
            ectx.judge,
            {"base": b_source, "edited": e.source},
            {"base": b_id, "edited": ectx.model_id},
            time.time() - started,
        ),
        "base": _summary(b_res),
        "edited": _summary(e_res),
        "paired": tests,
    }
    if "slant" in e_res:
        comparison["slant_shifts"] = _slant_shifts(b_res, e_res, null, config)
    with atomic_dir(out, force) as tmp:
        write_json(tmp / "comparison.json", comparison)
        for name, res in (("base", b_res), ("edited", e_res)):
            (tmp / name).mkdir()
            _write_items(tmp / name, res)
        md = compare_markdown(comparison)
        if "slant_shifts" in comparison:
            md += "\n\n" + _slant_report(comparison, tmp)
        (tmp / "report.md").write_text(md + "\n", encoding="utf-8")
        plot_metrics(comparison["base"], comparison["edited"], tmp / "metrics.png")
        if "mmlu" in b_res and "mmlu" in e_res:
            plot_subject_deltas(
                comparison["base"]["mmlu"]["per_subject"],
                comparison["edited"]["mmlu"]["per_subject"],
                tmp / "mmlu_subjects.png",
            )
    print(md)
    return comparison
