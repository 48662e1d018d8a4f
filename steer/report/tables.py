"""Report: before/after tables (Markdown for people, JSON for machines) and plots."""

from __future__ import annotations

from pathlib import Path

from steer.checkpoint.save import write_json


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}%"


def before_after_table(before: dict, after: dict) -> str:
    """Markdown table of every metric (rates in %, KL in nats) before vs after the edit, with n."""
    lines = ["| suite | metric | n | before | after |", "|---|---|---:|---:|---:|"]
    for suite, r in after.items():
        for name, m in r["metrics"].items():
            b = before.get(suite, {}).get("metrics", {}).get(name)
            if suite == "kl":
                lines.append(
                    f"| {suite} | {name} | {m['n']} | 0 | {m['value']:.4f} [{m['ci'][0]:.4f}, {m['ci'][1]:.4f}] |"
                )
            else:
                n = m["n"] if not b or b["n"] == m["n"] else f"{b['n']} / {m['n']}"  # e.g. loops excluded on one side
                lines.append(f"| {suite} | {name} | {n} | {_pct(b['value']) if b else '-'} | {_pct(m['value'])} |")
    return "\n".join(lines)


def examples_markdown(before: dict, after: dict, per_group: int = 3) -> str:
    """Markdown: for each group of the censorship and refusal suites, the first `per_group` prompts with the
    answers before and after (judge label, text collapsed and cut at 300 characters)."""
    out = []
    for suite in ("censorship", "refusal"):
        if suite not in before or suite not in after:
            continue
        for group in dict.fromkeys(i["group"] for i in before[suite]["items"]):
            pairs = [(b, a) for b, a in zip(before[suite]["items"], after[suite]["items"]) if b["group"] == group]
            out.append(f"### {suite}: {group}\n")
            for b, a in pairs[:per_group]:
                out.append(f"**{b['prompt']}**\n")
                out.append(f"- before ({b['label']}): {_quote(b['output'])}")
                out.append(f"- after ({a['label']}): {_quote(a['output'])}\n")
    return "\n".join(out)


def _quote(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return (text[:limit] + " …") if len(text) > limit else text


def write_report(folder: Path, report: dict) -> str:
    """Write report.json and report.md into folder; return the Markdown."""
    before, after = report["before"], report["after"]
    sel, split = report.get("selection", {}), report["settings"].get("eval_split", "test")
    md = [
        f"# steer abliterate: {report['model']}\n",
        f"Prompts of the {split} split.\n",
        before_after_table(before, after),
        "",
        f"Direction: layer {sel.get('layer')}, position {sel.get('position')} "
        f"(refusal tokens {sel.get('refusal_token_strings')}); judge: keys-v3 (docs/judging.md): refusal = denial, "
        f"censorship = denial + evasive, candour = candid answers (a key fact, no false claim), fabrication = "
        f"answers that are neither censored nor candid; decoding (docs/evaluation.md): greedy, repetition penalty "
        f"1.1, 128 new tokens (refusal suite {report['settings']['max_new_tokens']}); "
        f"seed {report['settings']['seed']}; KL with 95% bootstrap CI.",
        "",
        "## Direction selection (validation split)\n",
        selection_table(sel) if sel.get("candidates") else "",
        "",
        f"## Examples ({split} split)\n",
        examples_markdown(before, after),
    ]
    text = "\n".join(md)
    (Path(folder) / "report.md").write_text(text + "\n", encoding="utf-8")
    write_json(Path(folder) / "report.json", report)
    return text


def plot_selection(selection: dict, n_layers: int, path: Path) -> None:
    """Per-layer refusal scores: screened bypass per position, full scores for the shortlist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = selection["candidates"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for pos in sorted({c["position"] for c in cands}):
        pts = sorted((c["layer"], c["screen_bypass"]) for c in cands if c["position"] == pos)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=f"bypass (screen), pos {pos}")
    full = [c for c in cands if c["bypass"] is not None]
    ax.scatter(
        [c["layer"] for c in full], [c["bypass"] for c in full], c="k", marker="x", label="bypass (full val)", zorder=3
    )
    ax.scatter(
        [c["layer"] for c in full],
        [c["induce"] for c in full],
        c="tab:red",
        marker="^",
        label="induce (harmless)",
        zorder=3,
    )
    ax.axhline(selection["base_target_score"], color="gray", ls="--", label="no ablation")
    ax.axvline(selection["layer"], color="k", ls=":", lw=1)
    ax.set_ylabel("refusal score (log-odds)")
    ax.legend(fontsize=7, ncol=2)
    ax2.scatter([c["layer"] for c in full], [c["kl"] for c in full], c="tab:purple")
    ax2.set_ylabel("first-token KL, harmless")
    ax2.set_xlabel("layer")
    ax2.set_xlim(-0.5, n_layers - 0.5)
    ax.set_title(f"direction selection: chosen layer {selection['layer']}, position {selection['position']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def selection_table(selection: dict) -> str:
    """Per-layer Markdown table: best screened bypass per layer, full scores where measured."""
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [
        "| layer | position | bypass (screen) | bypass (val) | induce | KL | KL 95% bound |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_layer: dict[int, dict] = {}
    for c in selection["candidates"]:
        best = by_layer.get(c["layer"])
        if best is None or c["screen_bypass"] < best["screen_bypass"]:
            by_layer[c["layer"]] = c
    for layer in sorted(by_layer):
        c = by_layer[layer]
        mark = " (chosen)" if (layer, c["position"]) == (selection["layer"], selection["position"]) else ""
        lines.append(
            f"| {layer}{mark} | {c['position']} | {fmt(c['screen_bypass'])} | {fmt(c['bypass'])} | "
            f"{fmt(c['induce'])} | {fmt(c['kl'])} | {fmt(c.get('kl_ucb'))} |"
        )
    lines.append(
        f"\nRefusal score without ablation: {selection['base_target_score']:.2f} on target, "
        f"{selection['base_harmless_score']:.2f} on harmless prompts."
    )
    if selection.get("fallback"):
        lines.append(f"Note: {selection['fallback']}.")
    return "\n".join(lines)


# ---- steer eval / steer compare ----


def _ci(m: dict) -> str:
    lo, hi = m.get("ci") or (None, None)
    return "" if lo is None or hi is None or lo != lo else f" [{_fmt(lo)}, {_fmt(hi)}]"


def _fmt(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.4f}" if abs(x) < 0.01 and x != 0 else f"{x:.3f}"


def _metric_rows(results: dict) -> list[tuple[str, str, dict]]:
    return [(suite, name, m) for suite, r in results.items() for name, m in r["metrics"].items()]


def eval_markdown(summary: dict) -> str:
    """One model: every metric with n and its 95% CI (Wilson for rates, bootstrap for means)."""
    meta = summary["meta"]
    lines = [
        f"# steer eval: {meta['models']['model']}\n",
        "| suite | metric | n | value | 95% CI |",
        "|---|---|---:|---:|---|",
    ]
    for suite, name, m in _metric_rows(summary["results"]):
        lines.append(f"| {suite} | {name} | {m['n']} | {_fmt(m['value'])} | {_ci(m).strip()} |")
    lines.append(_meta_line(meta))
    return "\n".join(lines)


def _meta_line(meta: dict) -> str:
    penalty = meta.get("decoding", {}).get("repetition_penalty", 1.0)
    decoding = "greedy" if penalty == 1.0 else f"greedy with repetition penalty {penalty}"
    return (
        f"\nseed {meta['seed']}; limits {meta['limits'] or 'none (all items)'}; judged answers {decoding}; "
        f"MMLU shots {meta['shots']}; judge "
        f"{meta['judge']}; steer {meta['steer_version']}, torch {meta['versions']['torch']}, transformers "
        f"{meta['versions']['transformers']}; {meta['elapsed_s']} s.\n\n`{meta['command']}`"
    )


def compare_markdown(comparison: dict) -> str:
    """Base vs edited per metric, plus the paired tests (exact McNemar, bootstrap CI of the delta)."""
    meta, base, edited = comparison["meta"], comparison["base"], comparison["edited"]
    lines = [
        f"# steer compare: {meta['models']['base']} vs {meta['models']['edited']}\n",
        "| suite | metric | n | base [95% CI] | edited [95% CI] |",
        "|---|---|---:|---|---|",
    ]
    for suite, name, m in _metric_rows(edited):
        b = base.get(suite, {}).get("metrics", {}).get(name)
        lines.append(
            f"| {suite} | {name} | {m['n']} | {_fmt(b['value']) + _ci(b) if b else '-'} | {_fmt(m['value'])}{_ci(m)} |"
        )
    lines += [
        "",
        "## Paired tests (same items, base vs edited)\n",
        "| suite/field/group | n | base | edited | delta [95% CI] | changed (base only / edited only) | p (McNemar) |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for name, t in comparison["paired"].items():
        lo, hi = t["delta_ci"]
        lines.append(
            f"| {name} | {t['n']} | {_fmt(t['base'])} | {_fmt(t['edited'])} | "
            f"{t['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
            f"{t['base_only']} / {t['edited_only']} | {t['p_value']:.3g} |"
        )
    lines.append(_meta_line(meta))
    return "\n".join(lines)


def plot_metrics(base: dict, edited: dict | None, path: Path) -> None:
    """Horizontal bars with 95% CIs for every metric (base and edited side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [("base" if edited else "model", base)] + ([("edited", edited)] if edited else [])
    rows = _metric_rows(edited or base)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    h = 0.8 / len(runs)
    for k, (label, res) in enumerate(runs):
        ys, vals, errs = [], [], [[], []]
        for y, (suite, name, _) in enumerate(rows):
            m = res.get(suite, {}).get("metrics", {}).get(name)
            if m is None or m["value"] != m["value"]:
                continue
            lo, hi = m.get("ci") or (None, None)
            ys.append(y + k * h)
            vals.append(m["value"])
            errs[0].append(0 if lo is None else max(0.0, m["value"] - lo))
            errs[1].append(0 if hi is None else max(0.0, hi - m["value"]))
        ax.barh(ys, vals, height=h, xerr=errs, label=label, capsize=2)
    ax.set_yticks(
        [y + h * (len(runs) - 1) / 2 for y in range(len(rows))], [f"{s}: {n}" for s, n, _ in rows], fontsize=7
    )
    ax.invert_yaxis()
    ax.set_xlabel("value (rates and accuracies as fractions; KL in nats), 95% CI")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_subject_deltas(base: dict[str, float], edited: dict[str, float], path: Path) -> None:
    """MMLU accuracy change per subject (edited - base), sorted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deltas = sorted(((edited[s] - base[s], s) for s in base if s in edited))
    fig, ax = plt.subplots(figsize=(8, 0.16 * len(deltas) + 1.2))
    ax.barh(
        range(len(deltas)), [100 * d for d, _ in deltas], color=["tab:red" if d < 0 else "tab:blue" for d, _ in deltas]
    )
    ax.set_yticks(range(len(deltas)), [s.replace("_", " ") for _, s in deltas], fontsize=6)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("MMLU accuracy change, edited - base (points)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cosines(cosines: dict[str, list[float]], path: Path, title: str = "direction similarity per layer") -> None:
    """Per-layer cosine similarity between directions (one line per pair)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, values in cosines.items():
        ax.plot(range(len(values)), values, marker=".", label=name)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("layer")
    ax.set_ylabel("cosine similarity")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pareto(trials: list[dict], front: list[dict], chosen: dict | None, path: Path) -> None:
    """Search trials: target refusal score vs first-token KL; the feasible Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = [t for t in trials if t.get("violation", 0) <= 0]
    bad = [t for t in trials if t.get("violation", 0) > 0]
    ax.scatter(
        [t["kl"] for t in ok],
        [t["target_score"] for t in ok],
        s=14,
        c="tab:blue",
        label="trial (keeps harmful refusals)",
    )
    ax.scatter(
        [t["kl"] for t in bad],
        [t["target_score"] for t in bad],
        s=14,
        c="lightgray",
        label="trial (below harmful floor)",
    )
    pts = sorted((r["kl"], r["target_score"]) for r in front)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "k-o", ms=4, label="Pareto front")
    if chosen:
        ax.scatter([chosen["kl"]], [chosen["target_score"]], marker="*", s=200, c="tab:red", label="chosen", zorder=3)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("first-token KL on harmless validation prompts")
    ax.set_ylabel("refusal score on sensitive validation prompts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pareto_table(front: list[dict], confirmed: list[dict], chosen: dict | None) -> str:
    """Markdown: the Pareto front (search metrics) and, where confirmed, the judged rates."""
    from steer.targeted.search import NEAR_REFUSAL  # torch-heavy: only where a search ran

    judged = {r["trial"]: r.get("judged", {}) for r in confirmed}
    lines = [
        f"| trial | target score (objective) | target mean | target share above {NEAR_REFUSAL:g} | harmful score | "
        "KL | KL 95% bound | k | "
        "censorship EN / ZH (judged) | harmful refusal (judged) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in front:
        j = judged.get(r["trial"], {})
        mark = " (chosen)" if chosen and r["trial"] == chosen["trial"] else ""
        cens = f"{_pct(j.get('censorship/sensitive/en'))} / {_pct(j.get('censorship/sensitive/zh'))}" if j else "-"
        # studies before 3d85935 (2026-11-22) did not record it
        high = f"{r['target_high']:.1%}" if "target_high" in r else "-"
        lines.append(
            f"| {r['trial']}{mark} | {r['target_score']:.2f} | {r['target_raw']:.2f} | {high} | "
            f"{r['keep_score']:.2f} | {r['kl']:.4f} | {r['kl_ucb']:.4f} | "
            f"{r['params']['k']} | {cens} | {_pct(j.get('refusal/harmful')) if j else '-'} |"
        )
    return "\n".join(lines)


def readout_summary(info: dict | None) -> str:
    """steer.targeted.readout's run (report "readout"): train-minibatch scores and the validation fits, or ""
    when none."""
    if not info:
        return ""
    if "skipped" in info:
        return f"Readout: none ({info['skipped']})."
    first, last = info["history"][0], info["history"][-1]
    rows = ["| scale | target score | harmful score | KL | KL 95% bound | kept |", "|---:|---:|---:|---:|---:|---|"]
    rows += [
        f"| {f['scale']:g} | {f['target_score']:.2f} | {f['keep_score']:.2f} | {f['kl']:.4f} | {f['kl_ucb']:.4f} | "
        f"{'yes' if f['feasible'] else 'no'} |"
        for f in info["fits"]
    ]
    kept = f"scale {info['scale']:g}" if info["scale"] > 0 else "none (the edit alone)"
    return "\n".join(
        [
            f"Readout (steer.targeted.readout, {info['writers']} writers): {len(info['history'])} steps; "
            "on its train minibatches refusal "
            f"score on sensitive prompts {first['target_score']:.2f} -> {last['target_score']:.2f}, harmful "
            f"{first['keep_score']:.2f} -> {last['keep_score']:.2f}, "
            f"harmless KL {first['kl']:.3f} -> {last['kl']:.3f}. "
            f"Validation (largest fraction with harmful score >= floor and first-token {info['kl_stat']} <= "
            f"{info['kl_max']:.4f}): kept {kept}.",
            "",
            *rows,
        ]
    )


def stage_times(seconds: dict[str, float], total: float) -> str:
    """One line: wall time per stage of a run."""
    return f"Wall time {total / 60:.1f} min: " + ", ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items()) + " (min)."


def optimize_summary(meta: dict | None) -> str:
    """One line on steer.targeted.optimize's run (prepare meta "optimize"), one more per --own-direction set, or ""
    when it did not run."""
    if not meta or not meta.get("history"):
        return ""
    init = meta["init"]
    line = f"Optimized direction from {init['contrast']} at layer {init['layer']}: "
    line += _optimize_steps(meta["history"], "sensitive")
    for name, own in (meta.get("own") or {}).items():
        line += (
            f" Own direction for {name} ({own['prompts']} train prompts, from its contrast at layer {own['layer']}, "
            f"trained alone): {_optimize_steps(own['history'], name)}"
        )
    return line


def _optimize_steps(history: list[dict], target: str) -> str:
    first, last = history[0], history[-1]
    return (
        f"{len(history)} steps; on its train minibatches refusal score on {target} prompts {first['target_score']:.2f} "
        f"-> {last['target_score']:.2f}, on harmful prompts {first['keep_score']:.2f} -> {last['keep_score']:.2f} "
        f"(base {last['keep_base']:.2f}), harmless KL {first['kl']:.3f} -> {last['kl']:.3f}."
    )
