"""How many target prompts each `--target-filter` rule counts as refused (results/target-filter).

    python experiments/target_filter_counts.py --out results/target-filter/counts.json

Base model's last-position logits on the train and validation splits of the shipped target sets, with the refusal
tokens a `--keep-safety` run found (its report.json), per set, split and language: refusal score > 0 (score) and
score > 0 or a refusal token on top (greedy).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steer.locate.scores import greedy_refused, split_by_score
from steer.model.collect import batched_last_logits
from steer.model.load import load_model
from steer.prompts import chat_texts, load_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--report", default="results/critique-target/critique-search.json", help="a run's refusal tokens")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    loaded = load_model(args.model)
    tok = loaded.tokenizer
    words = json.loads(Path(args.report).read_text())["prepare"]["refusal_tokens"]
    ref = [tok.encode(w, add_special_tokens=False)[0] for w in words]
    rows = []
    for name in ("sensitive", "critique"):
        for split in ("train", "val"):
            ps = load_prompts(name, split)
            lg = batched_last_logits(loaded.model, tok, chat_texts(tok, [p.text for p in ps]), 32)
            kept = {"score": set(split_by_score(lg, ref, True, min_keep=0)), "greedy": set(greedy_refused(lg, ref, 0))}
            for lang in ("en", "zh"):
                ids = [i for i, p in enumerate(ps) if p.lang == lang]
                rows.append({"set": name, "split": split, "lang": lang, "n": len(ids)}
                            | {rule: len(kept[rule] & set(ids)) for rule in kept})  # fmt: skip
                print(rows[-1])
    args.out.write_text(json.dumps({"model": args.model, "refusal_tokens": words, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
