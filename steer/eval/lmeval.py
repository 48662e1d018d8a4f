"""lm-evaluation-harness as a second scorer: steer's MMLU items as an lm-eval task, and any lm-eval task on a model.

    from steer.eval.lmeval import mmlu_task, run_lm_eval, agreement
    task = mmlu_task(items, dev, shots, folder)               # steer's prompts, as an lm-eval task config
    out = run_lm_eval(model, tokenizer, [task])               # HFLM over the in-memory model
    agreement(steer_items, out["samples"]["steer_mmlu"])      # per-item agreement of the two scorers

The task reads steer's own prompt text (steer.eval.mmlu.build_prompt) from a local JSONL file, so no hub access is
needed; lm-eval applies the chat template itself (apply_chat_template) and scores the continuations "A".."D" by
log-likelihood. The two scorers share the question text and nothing else: templating, tokenisation, batching and
padding are lm-eval's. lm-eval is an optional dependency (`pip install "steer[lm-eval]"`).
"""

from __future__ import annotations

import json
from pathlib import Path

from steer.errors import SteerError
from steer.eval.benchmarks import Item
from steer.eval.mmlu import LETTERS, build_prompt


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise SteerError('--backend lm-eval needs lm-evaluation-harness: pip install "steer[lm-eval]"') from None
    return lm_eval, HFLM


def mmlu_task(items: list[Item], dev: dict[str, list[Item]], shots: int, folder: Path, name: str = "steer_mmlu"):
    """An lm-eval multiple-choice task config over steer's MMLU prompts (written to folder/<name>.jsonl)."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = folder / f"{name}.jsonl"
    with open(docs, "w", encoding="utf-8") as fh:
        for it in items:
            row = {
                "id": it.id,
                "prompt": build_prompt(it, dev.get(it.group, [])[:shots]),
                "gold": LETTERS.index(it.answer),
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(docs)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{prompt}}",
        "doc_to_choice": list(LETTERS),
        "doc_to_target": "{{gold}}",
        "target_delimiter": "",  # the letter follows the assistant header directly, as steer scores it
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


def run_lm_eval(
    model, tokenizer, tasks: list, *, limit: int | None = None, batch_size: int = 16, chat: bool = True
) -> dict:
    """lm-eval's simple_evaluate on an in-memory model: {"results": per-task metrics, "samples": per-task logged
    samples (lm-eval's own records: arguments, responses, doc)}."""
    lm_eval, HFLM = _lm_eval()
    device = "cuda" if next(model.parameters()).is_cuda else "cpu"
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, limit=limit, apply_chat_template=chat, log_samples=True, bootstrap_iters=0
        )
    except KeyError as e:
        raise SteerError(f"lm-eval does not know task {e}; see `lm-eval ls tasks`") from None
    return {"results": out["results"], "samples": out.get("samples", {}), "versions": out.get("versions", {})}


def lm_eval_choice(sample: dict) -> int:
    """The choice lm-eval's acc picks for one logged sample: the highest log-likelihood."""
    scores = [r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in sample["resps"]]
    return max(range(len(scores)), key=scores.__getitem__)


def agreement(steer_items: list[dict], samples: list[dict]) -> dict:
    """Per-item agreement of steer's predicted letter and lm-eval's choice, and both accuracies, on shared ids."""
    ours = {r["id"]: r for r in steer_items}
    pairs = [(ours[s["doc"]["id"]], s) for s in samples if s["doc"]["id"] in ours]
    if not pairs:
        raise SteerError("no item is shared by the steer and lm-eval runs")
    same = [LETTERS.index(r["extracted"]) == lm_eval_choice(s) for r, s in pairs]
    disagree = [r["id"] for (r, _), ok in zip(pairs, same) if not ok]
    return {
        "items": len(pairs),
        "agreement": sum(same) / len(pairs),
        "steer_accuracy": sum(r["correct"] for r, _ in pairs) / len(pairs),
        "lm_eval_accuracy": sum(lm_eval_choice(s) == s["doc"]["gold"] for _, s in pairs) / len(pairs),
        "disagreements": disagree,
    }


def evaluate_with_lm_eval(
    model: str | None,
    tasks: list[str],
    out: Path,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    force: bool = False,
) -> dict:
    """`steer eval MODEL --backend lm-eval --suite TASKS`: lm-eval's own tasks (from the hub) on a steer-loadable
    model (a folder, the embedded model, a GGUF file); writes results.json and samples/<task>.jsonl."""
    from steer.checkpoint.save import atomic_dir, check_output, write_json
    from steer.model.load import load_model

    check_output(out, force)
    _lm_eval()  # fail before the model loads
    loaded = load_model(model)
    res = run_lm_eval(loaded.model, loaded.tokenizer, tasks, limit=limit, batch_size=batch_size)
    summary = {"model": loaded.source, "tasks": tasks, "limit": limit, "results": res["results"],
               "lm_eval_versions": res["versions"]}  # fmt: skip
    with atomic_dir(out, force) as tmp:
        write_json(tmp / "results.json", summary)
        (tmp / "samples").mkdir()
        for task, rows in res["samples"].items():
            with open(tmp / "samples" / f"{task}.jsonl", "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    return summary
