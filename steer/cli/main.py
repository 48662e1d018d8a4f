"""Command line: `steer abliterate | search | directions | edit | export-gguf | verify | generate | chat | eval
| compare | judge | sft`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from steer.checkpoint.save import handle_sigterm
from steer.cli.parser import build_parser
from steer.errors import SteerError
from steer.eval.config import EvalConfig
from steer.locate.settings import Settings
from steer.settings import from_args
from steer.targeted.settings import TargetedSettings


def _targeted(args) -> TargetedSettings:
    return from_args(TargetedSettings, args)


def _settings(args) -> Settings:
    return from_args(Settings, args)


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
    from steer.pipeline import compute_dtype
    from steer.report.tables import plot_selection, selection_table

    check_output(args.out, args.force)
    settings = _settings(args)
    check_prompts(settings)
    loaded = load_model(
        args.model,
        dtype=compute_dtype(settings),
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


def _eval_config(args) -> EvalConfig:
    from steer.eval.suites import parse_suites

    suites = parse_suites(args.suite)
    limits = _per_suite(args.limit, "--limit")
    tokens = _per_suite(args.max_new_tokens, "--max-new-tokens")
    for name in set(limits) | set(tokens):
        if name != "*" and name not in suites:
            raise SteerError(f"--limit/--max-new-tokens name suite {name!r}, which is not in --suite {args.suite}")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise SteerError(f"--data-dir {args.data_dir} does not exist")
    if args.slant_file is not None and "slant" in suites:
        from steer.eval.slant import load_statements

        load_statements(args.slant_file)  # a bad file fails before any model loads
    return from_args(EvalConfig, args, suites=suites, limits=limits, max_new_tokens=tokens)


def _eval(args) -> int:
    from steer.eval.candour import make_judge
    from steer.eval.compare import evaluate_model

    if args.backend == "lm-eval":
        return _eval_lm_eval(args)
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


def _eval_lm_eval(args) -> int:
    from steer.eval.lmeval import evaluate_with_lm_eval

    tasks = [t.strip() for t in args.suite.split(",") if t.strip()]
    if args.limit is not None and not args.limit.isdigit():
        raise SteerError("--backend lm-eval: --limit is one number of items per task")
    res = evaluate_with_lm_eval(
        args.model, tasks, args.out, limit=int(args.limit) if args.limit else None, batch_size=args.batch_size,
        force=args.force,
    )  # fmt: skip
    for task, metrics in res["results"].items():
        print(task, json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}))
    print(f"\nsaved to {args.out} (results.json, samples/*.jsonl)")
    return 0


def _compare(args) -> int:
    from steer.eval.candour import make_judge
    from steer.eval.compare import compare_models

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


def _judge(args) -> int:
    from steer.eval.candour import make_judge
    from steer.eval.judge_file import judge_file

    s = judge_file(args.answers, args.out, make_judge(args.judge), args.keys, args.strict, args.force)
    labels = ", ".join(f"{k} {v}" for k, v in sorted(s["labels"].items()))
    print(f"{s['n']} answers: {labels}; {s['keyed']} with a key: {s['candid']} candid, {s['fabricated']} not candid")
    print(f"saved to {args.out}")
    return 0


def _sft(args) -> int:
    from steer.sft.run import train_sft
    from steer.sft.settings import SFTSettings

    r = train_sft(args.model, args.out, from_args(SFTSettings, args), data=args.data, force=args.force)
    losses = ", ".join(f"{v:.4f}" for v in r.val_loss)
    print(f"{r.steps} steps on {r.train_pairs} pairs ({r.answer_tokens} answer tokens); val loss by epoch: {losses}")
    print(f"wall {r.wall_s:.0f} s, peak RSS {r.peak_rss_gb:.1f} GB; saved to {args.out}")
    return 0


def _verify(args) -> int:
    from steer.checkpoint.verify import verify

    result = verify(args.checkpoint, atol=args.atol, model=args.model, directions=args.directions)
    print(result.summary())
    return 0 if result.ok else 1


COMMANDS = {
    "judge": _judge,
    "sft": _sft,
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
