"""A real client for what `steer export-gguf` writes: llama.cpp loads the F16 and Q8_0 GGUF of an edited model.

    python -m venv /work/llama-venv
    CMAKE_BUILD_PARALLEL_LEVEL=2 /work/llama-venv/bin/pip install llama-cpp-python==0.3.36   # builds llama.cpp
    python experiments/llamacpp_roundtrip.py MODEL_DIR --llama-python /work/llama-venv/bin/python \
        --work /tmp/gguf --out results/llamacpp-roundtrip/NAME

MODEL_DIR is a steer output (safetensors). Both GGUF files are written with `steer export-gguf` into --work.
Prompts: a seeded sample of the sensitive set's test split (held out), half English, half Chinese, in the chat
template of MODEL_DIR's tokenizer. Decoding on both sides: plain greedy (no repetition penalty: llama.cpp's and
transformers' penalties differ), --max-new-tokens, one prompt at a time (no padding). llama.cpp is fed the same
prompt token ids as transformers, so the answers compare the weights; its own tokenization of the prompt text is
compared separately. Every answer is judged with judge v3 (answer keys).
Not in CI: building llama.cpp takes minutes and the llama.cpp side runs in its own virtual environment.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

WORKER = "--worker"


def worker() -> None:
    """llama.cpp side (run with --llama-python): a JSON job on stdin, one JSON result on stdout."""
    import llama_cpp

    job = json.load(sys.stdin)
    llm = llama_cpp.Llama(job["gguf"], n_ctx=job["n_ctx"], n_threads=job["threads"], seed=0, verbose=False)
    stops, out = set(job["stop_ids"]), []
    for ids, text in zip(job["prompt_ids"], job["texts"], strict=True):
        own = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        got = []
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            got.append(int(tok))
            if tok in stops or len(got) >= job["max_new_tokens"]:
                break
        out.append({"ids": got, "prompt_tokens_match": own == ids})
    json.dump({"answers": out, "llama_cpp": llama_cpp.__version__}, sys.stdout)


def llama_answers(python: str, gguf: Path, prompt_ids, texts, stop_ids, args) -> dict:
    job = {
        "gguf": str(gguf),
        "prompt_ids": prompt_ids,
        "texts": texts,
        "stop_ids": stop_ids,
        "max_new_tokens": args.max_new_tokens,
        "n_ctx": args.n_ctx,
        "threads": args.threads,
    }
    t0 = time.time()
    run = subprocess.run([python, __file__, WORKER], input=json.dumps(job), capture_output=True, text=True, check=False)
    if run.returncode != 0:
        sys.exit(f"llama.cpp worker failed on {gguf}: {run.stderr.strip().splitlines()[-1:]}")
    return {**json.loads(run.stdout), "seconds": round(time.time() - t0, 1)}


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first generated token where a and b differ (None: identical)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def rates(rows: list[dict], side: str) -> dict:
    """Refusal (denial), censorship (denial + evasive) and candour per language for one side's answers."""
    out = {}
    for lang in ("en", "zh"):
        got = [r[side] for r in rows if r["lang"] == lang]
        n = len(got)
        out[lang] = {
            "n": n,
            "refusal": sum(g["label"] == "denial" for g in got) / n,
            "censorship": sum(g["label"] != "complete" for g in got) / n,
            "candour": sum(bool(g["candid"]) for g in got) / n,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="steer output folder (safetensors)")
    ap.add_argument("--llama-python", required=True, help="python of a virtual environment with llama-cpp-python")
    ap.add_argument("--work", type=Path, required=True, help="folder for the GGUF files (large)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=24, help="prompts (half English, half Chinese)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    import transformers

    from steer.eval.candour import KeyJudge
    from steer.eval.engine import GenSpec, generate_ids
    from steer.eval.keys import load_keys
    from steer.model.load import load_model
    from steer.prompts import chat_texts, load_prompts, seeded_sample

    pools = [load_prompts("sensitive", "test", lang) for lang in ("en", "zh")]
    prompts = [p for pool in pools for p in seeded_sample(pool, args.n // 2, args.seed)]
    loaded = load_model(str(args.model))
    model, tok = loaded.model, loaded.tokenizer
    texts = chat_texts(tok, [p.text for p in prompts])
    prompt_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    eos = model.generation_config.eos_token_id
    stop_ids = sorted({eos} if isinstance(eos, int) else set(eos))
    t0 = time.time()
    hf = [generate_ids(model, tok, [t], GenSpec(args.max_new_tokens), 1)[0]["ids"] for t in texts]
    hf_seconds = round(time.time() - t0, 1)
    del model, loaded

    args.work.mkdir(parents=True, exist_ok=True)
    sides = {"transformers": {"answers": [{"ids": ids} for ids in hf], "seconds": hf_seconds}}
    files = {}
    for qtype in ("f16", "q8_0"):
        gguf = args.work / f"{args.model.name}-{qtype}.gguf"
        cmd = [sys.executable, "-m", "steer.cli.main", "export-gguf", str(args.model), "--out", str(gguf)]
        subprocess.run([*cmd, "--type", qtype, "--force"], check=True)
        files[qtype] = {"file": gguf.name, "bytes": gguf.stat().st_size}
        sides[qtype] = llama_answers(args.llama_python, gguf, prompt_ids, texts, stop_ids, args)

    keys, judge = load_keys(), KeyJudge()
    rows = [{"id": p.id, "lang": p.lang, "prompt": p.text} for p in prompts]
    for side, got in sides.items():
        answers = [tok.decode(a["ids"], skip_special_tokens=True) for a in got["answers"]]
        verdicts = judge.verdicts([p.text for p in prompts], answers, [keys.get(p.id) for p in prompts])
        for row, a, ref, text, v in zip(rows, got["answers"], hf, answers, verdicts, strict=True):
            row[side] = {"answer": text, "label": v.label, "candid": v.candid, "n_tokens": len(a["ids"])}
            if side != "transformers":
                row[side]["first_difference"] = first_difference(a["ids"], ref)
                row[side]["prompt_tokens_match"] = a["prompt_tokens_match"]
    summary = {
        "model": str(args.model),
        "prompts": {"set": "sensitive", "split": "test", "n": len(prompts), "seed": args.seed},
        "decoding": {"greedy": True, "repetition_penalty": 1.0, "max_new_tokens": args.max_new_tokens},
        "files": files,
        "identical": {q: sum(r[q]["first_difference"] is None for r in rows) for q in ("f16", "q8_0")},
        "prompt_tokenization_matches": {q: sum(r[q]["prompt_tokens_match"] for r in rows) for q in ("f16", "q8_0")},
        "rates": {side: rates(rows, side) for side in sides},
        "seconds": {side: got["seconds"] for side, got in sides.items()},
        "versions": {
            "llama_cpp": sides["f16"]["llama_cpp"],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    with (args.out / "answers.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(json.dumps({k: summary[k] for k in ("identical", "prompt_tokenization_matches", "rates")}, indent=1))


if __name__ == "__main__":
    worker() if sys.argv[1:] == [WORKER] else main()
