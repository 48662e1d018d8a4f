"""Behaviour check of a code change: do two runs of `steer abliterate` (plain or --keep-safety) make
the same choices and write the same weights?

    python experiments/behaviour_check.py RUN_A RUN_B [--out results/behaviour-check/NAME.json]

Compares the output folders' manifests and reports: the weights' sha256 (and verify's per-tensor
comparison when they differ), the selected direction (plain) or the chosen search trial, edit
parameters, refusal tokens and readout scale (--keep-safety), and the before/after metrics both
folders report. Prints a Markdown table; --out writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steer.checkpoint.verify import compare


def _read(folder: Path) -> dict:
    m = json.loads((folder / "steer_manifest.json").read_text())
    report = json.loads((folder / "report.json").read_text())
    out = {"sha256": m["output_sha256"], "machine": m.get("machine"), "versions": m.get("versions")}
    if "direction" in m:
        out["choice"] = {k: m["direction"][k] for k in ("layer", "position", "refusal_tokens")}
    else:
        conf = report["confirm"]["chosen"]
        out["choice"] = {
            "trial": conf["trial"],
            "edit": report["edit"],
            "refusal_tokens": report["prepare"]["refusal_tokens"],
            "readout_scale": (report.get("readout") or {}).get("scale"),
        }
    out["metrics"] = {
        f"{side}/{suite}/{name}": v["value"]
        for side in ("before", "after")
        for suite, r in report[side].items()
        for name, v in r["metrics"].items()
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    a, b = _read(args.a), _read(args.b)
    result = {
        "a": str(args.a),
        "b": str(args.b),
        "same_weights": a["sha256"] == b["sha256"],
        "same_choice": a["choice"] == b["choice"],
        "choice_a": a["choice"],
        "choice_b": b["choice"],
        "sha256": [a["sha256"], b["sha256"]],
        "machine": [a["machine"], b["machine"]],
        "versions": [a["versions"], b["versions"]],
    }
    if not result["same_weights"] and all((f / "model.safetensors").is_file() for f in (args.a, args.b)):
        result["tensors"] = compare(args.a, args.b).summary()  # a committed result folder keeps no weights
    shared = sorted(set(a["metrics"]) & set(b["metrics"]))
    result["metrics"] = {k: [a["metrics"][k], b["metrics"][k]] for k in shared}
    print(f"| | {args.a} | {args.b} |\n|---|---|---|")
    print(f"| weights sha256 | {a['sha256'][:16]} | {b['sha256'][:16]} |")
    print(f"| choice | {json.dumps(a['choice'])} | {json.dumps(b['choice'])} |")
    for k in shared:
        print(f"| {k} | {a['metrics'][k]:.4f} | {b['metrics'][k]:.4f} |")
    print(f"\nsame weights: {result['same_weights']}; same choice: {result['same_choice']}")
    if "tensors" in result:
        print(result["tensors"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
