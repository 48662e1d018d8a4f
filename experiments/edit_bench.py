"""Benchmark the streaming editor (`steer edit CKPT`) against a plain copy and the in-memory route.

    python experiments/edit_bench.py                          # synthetic 4.5 GB bf16 Qwen2-style checkpoint
    python experiments/edit_bench.py --checkpoint PATH        # an existing safetensors checkpoint folder
    python experiments/edit_bench.py --size-gb 0.05 --d-model 256 --d-ff 688 --vocab 1000 --out /tmp/eb  # smoke

In ONE run, each measurement in a fresh subprocess (wall time and peak RSS of that process,
from resource.getrusage(RUSAGE_CHILDREN) in a per-run wrapper):
  (a) copy:  safetensors load_file + save_file per shard (the I/O floor of rewriting the weights);
  (b) edit:  `steer edit CKPT --directions F --out DIR` (the streaming editor; by default no
      sha256 of the files), and edit_hash: the same with --hash (input and output
      sha256 in the manifest: two extra hashing passes, shown for what they cost);
  (c) naive: AutoModelForCausalLM.from_pretrained(dtype="auto"), steer.edit.project.orthogonalize,
      save_pretrained (skipped with --skip-naive, or when 2.5x the checkpoint exceeds free RAM).
Page cache: dropping it needs root, so every run is preceded by `sync` and a full read of the
input files (all runs see a warm input cache). Each run's wall time is taken twice: when the
process exits (its output may still sit in the page cache) and after a following `sync` (on
disk). Copy, edit and edit --hash run in turn, --repeats rounds; the ratio edit/copy is taken
within each round (same disk conditions) and the median over rounds is the headline (this
machine's disk speed drifts by 2x between minutes, so best-of ratios pair unrelated moments).
Targets: edit/copy <= 1.25; edit peak RSS < 1 GiB + 2 x the largest tensor.
Writes results.json and results.md to --out; generated files are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from steer.checkpoint.rawio import header_bytes, read_header  # noqa: E402
from steer.locate.directions import DirectionSet  # noqa: E402
from steer.model.load import weight_files  # noqa: E402

GiB = 1 << 30
# Runs in a fresh interpreter: the child's wall time and peak RSS (RUSAGE_CHILDREN of this wrapper = that child only).
# wall_sync_s adds a sync after the child exits: the time until its output is on disk, not only in the page cache.
WRAPPER = """import json, os, resource, subprocess, sys, time
t = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); wall = time.perf_counter() - t; os.sync()
print(json.dumps({"rc": rc, "wall_s": wall, "wall_sync_s": time.perf_counter() - t,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))"""
COPY = """import sys
from pathlib import Path
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from steer.model.load import weight_files
src, out = Path(sys.argv[1]), Path(sys.argv[2]); out.mkdir(parents=True)
for f in weight_files(src):
    with safe_open(str(f), "pt") as fh:
        meta = fh.metadata()
    save_file(load_file(str(f)), str(out / f.name), metadata=meta)"""
NAIVE = """import sys, torch
from transformers import AutoModelForCausalLM
from steer.locate.directions import DirectionSet
from steer.edit.project import orthogonalize
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype="auto")
orthogonalize(model, DirectionSet.load(sys.argv[2]).vector())
model.save_pretrained(sys.argv[3])"""


def _tensor_specs(a) -> list[tuple[str, list[int]]]:
    """Qwen2 parameter names and shapes, in the order save_pretrained sorts them (by name)."""
    d, f, hd = a.d_model, a.d_ff, a.d_model // a.heads
    kv = a.kv_heads * hd
    per_layer = {
        "input_layernorm.weight": [d],
        "post_attention_layernorm.weight": [d],
        "mlp.down_proj.weight": [d, f],
        "mlp.gate_proj.weight": [f, d],
        "mlp.up_proj.weight": [f, d],
        "self_attn.q_proj.weight": [d, d],
        "self_attn.q_proj.bias": [d],
        "self_attn.k_proj.weight": [kv, d],
        "self_attn.k_proj.bias": [kv],
        "self_attn.v_proj.weight": [kv, d],
        "self_attn.v_proj.bias": [kv],
        "self_attn.o_proj.weight": [d, d],
    }
    layer_bytes = 2 * sum(math.prod(s) for s in per_layer.values())
    a.layers = max(1, round((a.size_gb * 1e9 - 4 * a.vocab * d) / layer_bytes))
    specs = [("lm_head.weight", [a.vocab, d]), ("model.embed_tokens.weight", [a.vocab, d]), ("model.norm.weight", [d])]
    specs += [(f"model.layers.{i}.{k}", s) for i in range(a.layers) for k, s in per_layer.items()]
    return sorted(specs)


def generate(a, folder: Path) -> None:
    """A sharded bf16 Qwen2ForCausalLM checkpoint of random weights, written shard by shard from a
    reused 64 MiB random pool (never the whole model in memory), plus config.json."""
    folder.mkdir(parents=True)
    specs = _tensor_specs(a)
    pool = (torch.randn(32 << 20, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    pool_bytes = memoryview(pool.view(torch.uint8).numpy())
    shards, size = [[]], 0
    for name, shape in specs:
        n = 2 * math.prod(shape)
        if shards[-1] and size + n > a.shard_gb * 1e9:
            shards.append([])
            size = 0
        shards[-1].append((name, shape, n))
        size += n
    weight_map, pos = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        with open(folder / fname, "wb") as fh:
            fh.write(header_bytes([(nm, "BF16", s, n) for nm, s, n in shard], {"format": "pt"}))
            for name, shape, n in shard:
                weight_map[name] = fname
                while n > 0:  # norms: ones-ish would be more realistic, random is fine for timing
                    k = min(n, len(pool_bytes) - pos)
                    fh.write(pool_bytes[pos : pos + k])
                    n, pos = n - k, (pos + k) % (len(pool_bytes) - 4096) // 2 * 2
    total = sum(n for s in shards for _, _, n in s)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": a.d_model,
        "intermediate_size": a.d_ff,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "vocab_size": a.vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1e6,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "use_cache": True,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def directions_file(checkpoint: Path, path: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    config = config.get("text_config") or config
    n, d = config["num_hidden_layers"], config["hidden_size"]
    v = torch.randn(n, 1, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    DirectionSet(v, v, v, {"selected": {"layer": n // 2, "position": -1}}).save(path)


def _warm(checkpoint: Path) -> None:
    """sync (flush earlier runs' output) and read every input file once (warm page cache)."""
    os.sync()
    buf = bytearray(64 << 20)
    for f in sorted(checkpoint.iterdir()):
        if f.is_file():
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def measure(cmd: list[str], checkpoint: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    _warm(checkpoint)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, env=env)
    result = json.loads(res.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{cmd[:4]} failed (rc {result['rc']}):\n{res.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return result


def describe(checkpoint: Path) -> dict:
    infos = [t for f in weight_files(checkpoint) for t in read_header(f)[0]]
    sizes = {f.name: f.stat().st_size for f in weight_files(checkpoint)}
    return {
        "path": str(checkpoint),
        "bytes": sum(sizes.values()),
        "shards": len(sizes),
        "tensors": len(infos),
        "largest_tensor": max(infos, key=lambda t: t.nbytes).name,
        "largest_tensor_bytes": max(t.nbytes for t in infos),
        "dtypes": sorted({t.dtype for t in infos}),
    }


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    mem = next((int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal")), None)
    import safetensors
    import transformers

    from steer import __version__

    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "ram_bytes": mem,
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "steer": __version__,
        },
    }


def _available_ram() -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemAvailable"))


def run(a) -> dict:
    work = Path(tempfile.mkdtemp(prefix="edit-bench-", dir=a.work_dir))
    try:
        ckpt = a.checkpoint or work / "checkpoint"
        if a.checkpoint is None:
            t = time.perf_counter()
            generate(a, ckpt)
            print(f"generated {ckpt} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        info = describe(ckpt)
        directions_file(ckpt, work / "dirs.safetensors")
        dirs = str(work / "dirs.safetensors")
        steer = [sys.executable, "-m", "steer.cli.main", "edit", str(ckpt), "--directions", dirs, "--out"]
        out = work / "out"  # every route writes here (removed before and after each run)
        routes = {
            "copy": [sys.executable, "-c", COPY, str(ckpt), str(out)],
            "edit": steer + [str(out)],
            "edit_hash": steer + [str(out), "--hash"],
            "naive": [sys.executable, "-c", NAIVE, str(ckpt), dirs, str(out)],
        }
        skip_naive = a.skip_naive or 2.5 * info["bytes"] > _available_ram()
        runs = []
        for rep in range(a.repeats):
            for name, cmd in routes.items():
                if name == "naive" and (skip_naive or rep >= a.naive_repeats):
                    continue
                r = measure(cmd, ckpt, out)
                runs.append({"route": name, "repeat": rep, **r})
                print(
                    f"{name} #{rep}: {r['wall_s']:.2f} s, peak RSS {r['peak_rss_bytes'] / GiB:.2f} GiB", file=sys.stderr
                )
        return summarize(a, info, runs, skip_naive)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def _ratios(runs: list[dict], route: str, key: str) -> list[float]:
    """route / copy for each repeat (the two ran back to back in that repeat)."""
    copy = {r["repeat"]: r[key] for r in runs if r["route"] == "copy"}
    return [r[key] / copy[r["repeat"]] for r in runs if r["route"] == route]


def summarize(a, info: dict, runs: list[dict], skip_naive: bool) -> dict:
    best = {
        name: min((r for r in runs if r["route"] == name), key=lambda r: r["wall_s"])
        for name in {r["route"] for r in runs}
    }
    budget = GiB + 2 * info["largest_tensor_bytes"]
    edit_rss = max(r["peak_rss_bytes"] for r in runs if r["route"] == "edit")
    paired = {key: _ratios(runs, "edit", key) for key in ("wall_s", "wall_sync_s")}
    median = {key: statistics.median(v) for key, v in paired.items()}
    result = {
        "command": " ".join(sys.argv),
        "machine": machine(),
        "checkpoint": info,
        "cache": "warm input (sync + full read before every run)",
        "runs": runs,
        "best_wall_s": {k: v["wall_s"] for k, v in best.items()},
        "edit_over_copy": best["edit"]["wall_s"] / best["copy"]["wall_s"],
        "edit_over_copy_per_repeat": paired["wall_s"],
        "edit_over_copy_median": median["wall_s"],
        "edit_over_copy_synced_per_repeat": paired["wall_sync_s"],
        "edit_over_copy_synced_median": median["wall_sync_s"],
        "edit_hash_over_copy_median": statistics.median(_ratios(runs, "edit_hash", "wall_s")),
        "edit_peak_rss_bytes": edit_rss,
        "rss_budget_bytes": budget,
        "targets": {
            "edit_over_copy (median of paired repeats) <= 1.25": median["wall_s"] <= 1.25,
            "edit_rss < 1 GiB + 2 x largest tensor": edit_rss < budget,
        },
        "naive_skipped": skip_naive,
    }
    return result


def markdown(r: dict) -> str:
    c, m = r["checkpoint"], r["machine"]
    lines = [
        "# steer edit benchmark",
        "",
        f"`{r['command']}`",
        "",
        f"Checkpoint: {c['bytes'] / 1e9:.2f} GB in {c['shards']} shards, {c['tensors']} tensors "
        f"({', '.join(c['dtypes'])}); "
        f"largest {c['largest_tensor']} = {c['largest_tensor_bytes'] / 2**20:.0f} MiB.",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['ram_bytes'] / GiB:.0f} GiB RAM; {m['platform']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + ".",
        f"Page cache: {r['cache']}.",
        "",
        "| route | repeat | wall s | wall s + sync | peak RSS GiB |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {x['route']} | {x['repeat']} | {x['wall_s']:.2f} | {x['wall_sync_s']:.2f} | "
        f"{x['peak_rss_bytes'] / GiB:.2f} |"
        for x in r["runs"]
    ]
    per = lambda key: ", ".join(f"{x:.2f}" for x in r[key])  # noqa: E731
    lines += [
        "",
        f"edit / copy, median of the paired repeats: **{r['edit_over_copy_median']:.2f}** (target <= 1.25; "
        f"per repeat: {per('edit_over_copy_per_repeat')}; best of each: {r['edit_over_copy']:.2f})",
        f"edit / copy until the files are on disk (sync included), median: {r['edit_over_copy_synced_median']:.2f} "
        f"(per repeat: {per('edit_over_copy_synced_per_repeat')})",
        f"with --hash (sha256 of input and output in the manifest), median: {r['edit_hash_over_copy_median']:.2f}",
        f"edit peak RSS: **{r['edit_peak_rss_bytes'] / GiB:.2f} GiB** vs budget 1 GiB + 2 x largest tensor = "
        f"{r['rss_budget_bytes'] / GiB:.2f} GiB",
        "",
    ]
    if "naive" in r["best_wall_s"]:
        lines.append(f"naive (load, edit in memory, save_pretrained): {r['best_wall_s']['naive']:.2f} s")
    else:
        lines.append("naive route skipped (--skip-naive, or it would not fit in free RAM)")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", type=Path, help="benchmark this safetensors checkpoint folder instead of a synthetic one"
    )
    p.add_argument("--size-gb", type=float, default=4.5, help="synthetic checkpoint size (default 4.5)")
    p.add_argument("--d-model", type=int, default=4096)
    p.add_argument("--d-ff", type=int, default=11008)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--shard-gb", type=float, default=2.0, help="synthetic shard size (default 2)")
    p.add_argument(
        "--repeats", type=int, default=5, help="rounds of copy, edit, edit --hash (default 5; ratios pair each round)"
    )
    p.add_argument("--naive-repeats", type=int, default=1, help="rounds that also run the naive route (default 1)")
    p.add_argument("--skip-naive", action="store_true", help="skip the in-memory route")
    p.add_argument(
        "--work-dir", type=Path, help="where the temporary checkpoint and outputs go (default: the system temp dir)"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary files")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "edit-bench")
    a = p.parse_args()
    result = run(a)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.out / "results.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
