"""Report: before/after tables (Markdown for people, JSON for machines) and plots."""

from __future__ import annotations

from pathlib import Path

from .save import write_json

ROW_LABELS = {
    "sensitive/en": "refusal, sensitive prompts (English)",
    "sensitive/zh": "refusal, sensitive prompts (Chinese)",
    "harmless": "refusal, harmless prompts",
    "harmful": "refusal, harmful prompts",
}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def before_after_table(before: dict, after: dict) -> str:
    """Markdown table of refusal rates per group and harmless KL, before vs after the edit."""
    lines = ["| metric | n | before | after |", "|---|---:|---:|---:|"]
    for group, b in before["groups"].items():
        a = after["groups"][group]
        label = ROW_LABELS.get(group, f"refusal, {group}")
        lines.append(f"| {label} | {b['n']} | {_pct(b['refusal_rate'])} | {_pct(a['refusal_rate'])} |")
    for key, label in (("kl_harmless", "harmless prompts"), ("kl_harmless_answered", "harmless prompts the base model answers")):
        kl = after.get(key)
        if kl is not None:
            lines.append(f"| first-token KL vs base, {label} | {kl['n']} | 0 | {kl['mean']:.4f} |")
    return "\n".join(lines)


def examples_markdown(before: dict, after: dict, per_group: int = 3) -> str:
    out = []
    for group, b in before["groups"].items():
        a = after["groups"][group]
        out.append(f"### {group}\n")
        for item_b, item_a in list(zip(b["items"], a["items"]))[:per_group]:
            out.append(f"**{item_b['prompt']}**\n")
            out.append(f"- before: {_quote(item_b['answer'])}")
            out.append(f"- after: {_quote(item_a['answer'])}\n")
    return "\n".join(out)


def _quote(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return (text[:limit] + " …") if len(text) > limit else text


def write_report(folder: Path, report: dict) -> str:
    """Write report.json and report.md into folder; return the Markdown."""
    before, after = report["before"], report["after"]
    sel = report.get("selection", {})
    md = [
        f"# steer abliterate: {report['model']}\n",
        before_after_table(before, after),
        "",
        f"Direction: layer {sel.get('layer')}, position {sel.get('position')} "
        f"(refusal tokens {sel.get('refusal_token_strings')}); judge: refusal markers (docs/judging.md); "
        f"greedy decoding, {report['settings']['max_new_tokens']} new tokens; seed {report['settings']['seed']}.",
        "",
        "## Direction selection (validation split)\n",
        selection_table(sel) if sel.get("candidates") else "",
        "",
        "## Examples (held-out test split)\n",
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
    ax.scatter([c["layer"] for c in full], [c["bypass"] for c in full], c="k", marker="x", label="bypass (full val)", zorder=3)
    ax.scatter([c["layer"] for c in full], [c["induce"] for c in full], c="tab:red", marker="^", label="induce (harmless)", zorder=3)
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
    lines = ["| layer | position | bypass (screen) | bypass (val) | induce | KL | KL 95% bound |", "|---:|---:|---:|---:|---:|---:|---:|"]
    by_layer: dict[int, dict] = {}
    for c in selection["candidates"]:
        best = by_layer.get(c["layer"])
        if best is None or c["screen_bypass"] < best["screen_bypass"]:
            by_layer[c["layer"]] = c
    for layer in sorted(by_layer):
        c = by_layer[layer]
        mark = " (chosen)" if (layer, c["position"]) == (selection["layer"], selection["position"]) else ""
        lines.append(f"| {layer}{mark} | {c['position']} | {fmt(c['screen_bypass'])} | {fmt(c['bypass'])} | "
                     f"{fmt(c['induce'])} | {fmt(c['kl'])} | {fmt(c.get('kl_ucb'))} |")
    lines.append(f"\nRefusal score without ablation: {selection['base_target_score']:.2f} on target, "
                 f"{selection['base_harmless_score']:.2f} on harmless prompts.")
    if selection.get("fallback"):
        lines.append(f"Note: {selection['fallback']}.")
    return "\n".join(lines)
