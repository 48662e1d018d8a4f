"""Diagnostic: how a committed targeted edit's refusal score on each sensitive validation prompt
relates to its greedy answer (what the search's no-decoding score can and cannot see).

    python experiments/near_refusal.py [--run session8] [--out results/near-refusal] [--name DATE-COMMIT]

Applies the edit recorded with a committed run (the contrasts file committed with that run, read
from git history, rebuilt exactly as `steer edit` would), then for every sensitive validation
prompt (English and Chinese, as the confirmation step judges them) records the refusal score (the
log-odds of the run's refusal tokens at the first answer position), the greedy answer and the
judge's label. Writes NAME.json and NAME.md to --out, NAME by default today's date (UTC) and the
commit, as results/README.md names runs. Validation split only: nothing here looks at the test split.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch
from targeted_setup import ROOT, RUNS, head_commit, prepared, run_name

from steer.eval.judge import MarkerJudge
from steer.locate.scores import refusal_score
from steer.model.collect import batched_last_logits
from steer.model.generation import generate
from steer.prompts import chat_texts
from steer.targeted.contrasts import rebuild


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="session8", choices=sorted(RUNS))
    ap.add_argument("--out", default="results/near-refusal")
    ap.add_argument("--name", default=None, help="file name stem (default: DATE-COMMIT of this run)")
    args = ap.parse_args()
    loaded, ts, prep = prepared()
    m, tok = loaded.model, loaded.tokenizer
    prompts = prep.val_prompts["sensitive/en"] + prep.val_prompts["sensitive/zh"]
    texts = chat_texts(tok, [p.text for p in prompts])
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("contrasts.safetensors", "contrasts.json"):
            blob = subprocess.run(
                ["git", "show", f"{RUNS[args.run]}:results/targeted-embedded/{name}"],
                cwd=ROOT,
                capture_output=True,
                check=True,
            ).stdout
            (Path(tmp) / name).write_bytes(blob)
        base = refusal_score(batched_last_logits(m, tok, texts, ts.batch_size), prep.val.refusal_tokens)
        params = rebuild(m, Path(tmp) / "contrasts.safetensors")
    edited = refusal_score(batched_last_logits(m, tok, texts, ts.batch_size), prep.val.refusal_tokens)
    answers = generate(m, tok, texts, ts.max_new_tokens, ts.batch_size)
    labels = MarkerJudge().classify([p.text for p in prompts], answers)
    rows = sorted(
        (
            {
                "id": p.id,
                "lang": p.lang,
                "base_score": round(float(b), 3),
                "score": round(float(s), 3),
                "label": lab,
                "answer": a[:160],
            }
            for p, b, s, lab, a in zip(prompts, base, edited, labels, answers)
        ),
        key=lambda r: -r["score"],
    )
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    commit = head_commit()
    stem = args.name or run_name(commit)
    meta = {
        "command": f"python experiments/near_refusal.py --run {args.run}",
        "commit": commit,
        "run_commit": RUNS[args.run],
        "model": loaded.source,
        "split": "val",
        "seed": ts.seed,
        "max_new_tokens": ts.max_new_tokens,
        "refusal_tokens": prep.meta["refusal_tokens"],
        "edit": params.to_dict(),
        "versions": {"torch": torch.__version__},
    }
    (out / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2, ensure_ascii=False) + "\n")
    lines = ["| id | lang | base score | edited score | label | answer (start) |", "|---|---|---:|---:|---|---|"]
    lines += [
        f"| {r['id']} | {r['lang']} | {r['base_score']:.2f} | {r['score']:.2f} | {r['label']} | "
        f"{r['answer'][:70].replace('|', '/').replace(chr(10), ' ')} |"
        for r in rows
    ]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:30]))


if __name__ == "__main__":
    main()
