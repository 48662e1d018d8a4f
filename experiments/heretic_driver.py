"""Run heretic (PyPI `heretic-llm`) without a terminal: answer its interactive questions.

Runs inside heretic's own virtual environment (it is AGPL; we import and call it, we copy
none of its code):
    HERETIC_OUT=DIR HERETIC_KL_MAX=0.05 /path/to/heretic-venv/bin/python experiments/heretic_driver.py \
        --model CKPT --n-trials 30 --seed 0 --export-strategy merge ...

After its search heretic asks which Pareto trial to use and where to save. We answer:
the trial with the fewest refusals among those whose KL divergence is at most
HERETIC_KL_MAX (else the lowest-KL trial), "save to a local folder" at HERETIC_OUT, then exit.
The chosen trial is written to HERETIC_OUT/heretic_choice.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import heretic.main as hm

OUT = Path(os.environ["HERETIC_OUT"])
KL_MAX = float(os.environ.get("HERETIC_KL_MAX", "0.05"))
state = {"chosen": None, "saved": False}


def _value(choice):
    return getattr(choice, "value", choice)


def _pick_trial(choices):
    trials = [_value(c) for c in choices if not isinstance(_value(c), str)]
    ok = [t for t in trials if t.user_attrs["kl_divergence"] <= KL_MAX]
    if ok:
        return min(ok, key=lambda t: (t.user_attrs["refusals"], t.user_attrs["kl_divergence"]))
    return min(trials, key=lambda t: t.user_attrs["kl_divergence"])


def select(message: str, choices):
    print(f"[driver] {message}", file=sys.stderr)
    if message.startswith("How would you like to proceed"):
        return "restart"  # never resume a stale study silently
    if message.startswith("Which trial"):
        if state["saved"]:
            return ""  # exit program
        t = _pick_trial(choices)
        state["chosen"] = {
            "trial": t.user_attrs["index"],
            "refusals": t.user_attrs["refusals"],
            "kl_divergence": t.user_attrs["kl_divergence"],
            "kl_max": KL_MAX,
            "parameters": t.user_attrs["parameters"],
            "direction_index": t.user_attrs["direction_index"],
            "pareto": [
                {
                    "trial": _value(c).user_attrs["index"],
                    "refusals": _value(c).user_attrs["refusals"],
                    "kl_divergence": _value(c).user_attrs["kl_divergence"],
                }
                for c in choices
                if not isinstance(_value(c), str)
            ],
        }
        return t
    if message.startswith("What do you want to do"):
        if state["saved"]:
            return ""
        return "Save the model to a local folder"
    if message.startswith("How do you want to export"):
        return _value(choices[0])
    raise SystemExit(f"heretic driver: unexpected question {message!r}")


def path(message: str) -> str:
    state["saved"] = True
    return str(OUT)


def text(message: str, *args, **kwargs) -> str:
    raise SystemExit(f"heretic driver: unexpected question {message!r}")


hm.prompt_select, hm.prompt_path, hm.prompt_text = select, path, text
sys.argv = ["heretic", *sys.argv[1:]]
hm.main()
if not state["saved"]:
    raise SystemExit("heretic driver: heretic finished without saving a model")
(OUT / "heretic_choice.json").write_text(json.dumps(state["chosen"], indent=2, default=str) + "\n")
