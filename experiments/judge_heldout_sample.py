"""Sample fresh responses for a held-out judge test set (labelled blind, never used to write rules).

    python experiments/judge_heldout_sample.py --n 120 --seed 1

Greedy 48-token answers of the embedded base model and of the same model with the committed
direction (results/abliterate-embedded/directions.safetensors) ablated by hooks, on prompts
the first labelled set did not use: the validation splits of the shipped sensitive (EN/ZH),
harmful and harmless sets, and XSTest's safe prompts. Writes
steer/data/judge/heldout_unlabelled.jsonl for labelling by docs/labelling.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

from steer.edit.preview import preview
from steer.locate.directions import DirectionSet
from steer.model.generation import generate
from steer.model.load import load_model
from steer.prompts import chat_texts, load_prompts

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with open(args.data_dir / "overrefusal" / "xstest_prompts.csv", newline="", encoding="utf-8") as fh:
        xs = [r for r in csv.DictReader(fh) if r["label"] == "safe"]
    groups = {
        "sensitive/en": [(p.id, p.text) for p in load_prompts("sensitive", "val", "en")],
        "sensitive/zh": [(p.id, p.text) for p in load_prompts("sensitive", "val", "zh")],
        "harmful": [(p.id, p.text) for p in load_prompts("harmful", "val")],
        "harmless": [(p.id, p.text) for p in load_prompts("harmless", "val")],
        "xstest": [(f"xstest-{r['id']}", r["prompt"]) for r in xs],
    }
    per = args.n // (2 * len(groups))
    picked = {g: rng.sample(v, min(per, len(v))) for g, v in groups.items()}
    flat = [(g, pid, text) for g, rows in picked.items() for pid, text in rows]
    loaded = load_model(None)
    texts = chat_texts(loaded.tokenizer, [t for _, _, t in flat])
    dirs = DirectionSet.load(ROOT / "results" / "abliterate-embedded" / "directions.safetensors")
    base = generate(loaded.model, loaded.tokenizer, texts, 48, 32, desc="base")
    with preview(loaded.model, dirs.vector()):
        edited = generate(loaded.model, loaded.tokenizer, texts, 48, 32, desc="ablated")
    rows = []
    for model, answers in (("base", base), ("abliterated", edited)):
        for (g, pid, text), answer in zip(flat, answers):
            rows.append(
                {
                    "id": f"{model}:{pid}",
                    "prompt_id": pid,
                    "group": g,
                    "model": model,
                    "prompt": text,
                    "response": answer,
                    "label": None,
                    "note": "",
                }
            )
    rng.shuffle(rows)  # labelled blind: no model/group order to lean on
    out = ROOT / "steer" / "data" / "judge" / "heldout_unlabelled.jsonl"
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} responses -> {out}")


if __name__ == "__main__":
    main()
