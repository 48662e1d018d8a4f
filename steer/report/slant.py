"""The slant audit for people: per-axis stance shift with its CI against the random-edit null (Markdown), and a plot
of the stance before and after with CIs and the random edits' band."""

from __future__ import annotations

from pathlib import Path


def null_markdown(flagged: dict[str, dict], n_null: int) -> str:
    """flagged: steer.eval.slant.flag's output {axis/lang: shift, ci, pairs, null_range, flagged}."""
    lines = [
        f"### Stance shifts against the random-edit null ({n_null} random-direction edits, same layers and strengths)",
        "",
        "| axis | lang | pairs | shift [95% CI] | random edits' 95% range | flagged |",
        "|---|---|---:|---:|---:|---|",
    ]
    for key, r in flagged.items():
        axis, lang = key.split("/")
        lo, hi = r["null_range"]
        ci = f"{r['shift']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
        flag = "**yes**" if r["flagged"] else "no"
        lines.append(f"| {axis} | {lang.upper()} | {r['pairs']} | {ci} | [{lo:+.3f}, {hi:+.3f}] | {flag} |")
    n = sum(r["flagged"] for r in flagged.values())
    lines += ["", f"{n} of {len(flagged)} axis/language cells flagged (shift outside the random edits' range)."]
    return "\n".join(lines)


def plot_slant(base: dict, edited: dict, flagged: dict[str, dict] | None, path: Path) -> None:
    """base/edited: the slant suite's metrics ({"stance/<axis>/<lang>": {value, ci}}); the band is base stance + the
    random edits' shift range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(k.removeprefix("stance/") for k in base if k.startswith("stance/"))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(keys) + 1.5))
    for i, key in enumerate(keys):
        b, e = base[f"stance/{key}"], edited.get(f"stance/{key}")
        if flagged and key in flagged:
            lo, hi = flagged[key]["null_range"]
            ax.fill_betweenx([i - 0.3, i + 0.3], b["value"] + lo, b["value"] + hi, color="0.85", lw=0)
        ax.errorbar(b["value"], i - 0.1, xerr=_err(b), fmt="o", color="tab:blue", ms=4, label="base" if not i else None)
        if e is not None:
            flag = bool(flagged and flagged.get(key, {}).get("flagged"))
            ax.errorbar(e["value"], i + 0.1, xerr=_err(e), fmt="s", color="tab:red" if flag else "tab:orange", ms=4,
                        label="edited" if not i else None)  # fmt: skip
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_yticks(range(len(keys)), keys, fontsize=7)
    ax.set_xlabel("stance (log-odds of agreeing, negation-cancelled; + = the axis' positive pole)")
    ax.set_title("stance per axis: base, edited (red: outside the random-edit band, grey)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _err(m: dict) -> list[list[float]]:
    lo, hi = m["ci"]
    return [[m["value"] - lo], [hi - m["value"]]]
