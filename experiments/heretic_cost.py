"""heretic's route cost as steer counts its own: tokens through the model, FLOPs here and at 7B / 70B.

    python experiments/heretic_cost.py results/candour-headline/heretic_run.json

heretic is another program, so its tokens are not counted by hooks but estimated from what its run did (the prompt
files and settings its command records; the files are steer's shipped splits, rebuilt here as
experiments/heretic_compare.py wrote them): residuals of every "bad" and "good" prompt (one forward), the base
model's first-token logits on the good evaluation prompts, and per trial a greedy answer of up to
--max-response-length tokens to every bad evaluation prompt (the prompt once, then one token per step) and the
first-token logits of every good evaluation prompt. Generation is counted at its full length: an upper bound.
Adds "cost" (steer.report.cost's summary) to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

SPLITS = {"bad": ("sensitive", "train"), "good": ("harmless", "train"),
          "bad-evaluation": ("sensitive", "val"), "good-evaluation": ("harmless", "val")}  # fmt: skip


def prompt_tokens(tokenizer, name: str, split: str) -> list[int]:
    from steer.prompts import chat_texts, load_prompts

    texts = chat_texts(tokenizer, [p.text.replace("\n", " ") for p in load_prompts(name, split)])
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def estimate(run: dict, tokenizer) -> dict:
    from steer.report.cost import TokenCount

    answer = int(re.search(r"--max-response-length (\d+)", run["command"]).group(1))
    n = {k: prompt_tokens(tokenizer, *v) for k, v in SPLITS.items()}
    once = sum(n["bad"]) + sum(n["good"]) + sum(n["good-evaluation"])
    per_trial = sum(n["bad-evaluation"]) + answer * len(n["bad-evaluation"]) + sum(n["good-evaluation"])
    return {"estimate": "upper bound (full-length answers)", "max_response_length": answer,
            "count": TokenCount(forward=once + run["trials"] * per_trial)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="heretic_run.json (experiments/heretic_compare.py)")
    args = ap.parse_args()
    from steer.model.load import load_model
    from steer.report.cost import n_params

    run = json.loads(args.run.read_text())
    loaded = load_model(run.get("model_source", "embedded"))
    est = estimate(run, loaded.tokenizer)
    run["cost"] = {"how": est["estimate"], **est["count"].summary(n_params(loaded.model))}
    args.run.write_text(json.dumps(run, indent=2) + "\n")
    print(json.dumps(run["cost"], indent=1))


if __name__ == "__main__":
    main()
