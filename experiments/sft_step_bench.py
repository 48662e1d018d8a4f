"""One SFT step's time and peak memory, with the output head chunked (steer.sft.train.head_loss) and whole.

    python experiments/sft_step_bench.py --out results/sft-baseline/step-bench.json [--steps 2] [--model embedded]

Each mode runs in its own process (peak RSS is per process): the embedded model with the default LoRA settings
takes `--steps` optimizer steps on the batch of the shipped SFT set with the most answer tokens (the step that
sets the peak). Reported: peak RSS of each process, the step time (median), and chunked / whole ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def one_mode(model: str | None, whole: bool, steps: int) -> dict:
    """In this process: `steps` optimizer steps on the heaviest batch; the head whole (no chunks) or chunked."""
    import torch

    from steer.model.load import load_model
    from steer.report.memory import peak_rss_gb
    from steer.sft import run as R
    from steer.sft import train as T
    from steer.sft.data import IGNORE, load_pairs
    from steer.sft.settings import SFTSettings

    if whole:
        T.HEAD_ROWS = 10**9
    settings = SFTSettings()
    loaded = load_model(model)
    rows = R._encode(loaded, load_pairs(None), settings)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].input_ids))
    chosen = [rows[i] for i in order[: settings.batch_size]]
    answer_tokens = sum(sum(x != IGNORE for x in r.labels) for r in chosen)
    peft_model = R._lora(loaded.model, settings)
    params = list(T.trainable(peft_model).values())
    opt = torch.optim.AdamW(params, lr=settings.lr)
    peft_model.train()
    b = T.batch(chosen, loaded.tokenizer.pad_token_id)
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = T.answer_loss(peft_model, b, settings.bf16)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    return {
        "head": "whole" if whole else f"chunked ({T.HEAD_ROWS} rows)",
        "batch_tokens": int(b["input_ids"].numel()),
        "answer_tokens": int(answer_tokens),
        "step_s": statistics.median(times),
        "losses": losses,
        "peak_rss_gb": peak_rss_gb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--model", default=None, help="default: the embedded model")
    ap.add_argument("--mode", choices=("whole", "chunked"), help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(one_mode(args.model, args.mode == "whole", args.steps)))
        return
    results = {}
    for mode in ("whole", "chunked"):
        cmd = [sys.executable, __file__, "--out", str(args.out), "--steps", str(args.steps), "--mode", mode]
        cmd += ["--model", args.model] if args.model else []
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    w, c = results["whole"], results["chunked"]
    results["ratio"] = {"peak_rss": c["peak_rss_gb"] / w["peak_rss_gb"], "step_time": c["step_s"] / w["step_s"]}
    import torch

    results["meta"] = {"command": " ".join(sys.argv), "torch": torch.__version__, "threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
