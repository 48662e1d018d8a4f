"""Knowledge check: does the model prefer a key fact to its minimally changed false twin? (no decoding)

For every key fact of a prompt (docs/answer-keys.md), the fact and its false twin are scored as the assistant's
answer to that prompt in the model's chat template: the sum of the answer tokens' log-probabilities. The model
"knows" the fact when the true sentence scores higher. Before an edit this says what the model knows at all (what
an edit can at best unlock); after, whether the edit damaged it. Chance is 50%.
"""

from __future__ import annotations

import torch

from steer.eval.benchmarks import sample
from steer.eval.keys import load_keys
from steer.eval.stats import mean, rate
from steer.model.collect import input_device
from steer.prompts import chat_texts, load_prompts


@torch.inference_mode()
def answer_logprobs(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 16) -> list[float]:
    """Sum of log p(answer tokens | chat prompt) for each (prompt, answer) pair, teacher-forced.

    Layout: each row is [prompt ids | answer ids | right padding]; logits [batch, seq, vocab] at position t
    predict token t+1, so answer token j (at position len(prompt)+j) is read from position len(prompt)+j-1."""
    heads = chat_texts(tokenizer, prompts)
    head_ids = tokenizer(heads, add_special_tokens=False)["input_ids"]
    tail_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device, out = input_device(model), []
    for start in range(0, len(prompts), batch_size):
        rows = [h + t for h, t in zip(head_ids[start : start + batch_size], tail_ids[start : start + batch_size])]
        width = max(map(len, rows))
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for i, r in enumerate(rows):
            n_head = len(head_ids[start + i])
            pos = torch.arange(n_head - 1, len(r) - 1, device=device)
            out.append(logp[i, pos, ids[i, pos + 1]].sum().item())
    return out


def knowledge_items(model, tokenizer, pairs: list[dict], batch_size: int = 16) -> list[dict]:
    """`pairs`: dicts with prompt, true, false (plus any ids to keep); adds logp_true, logp_false, margin,
    prefers_true."""
    prompts = [p["prompt"] for p in pairs] * 2
    answers = [p["true"] for p in pairs] + [p["false"] for p in pairs]
    scores = answer_logprobs(model, tokenizer, prompts, answers, batch_size)
    n = len(pairs)
    return [
        {**p, "logp_true": t, "logp_false": f, "margin": t - f, "prefers_true": t > f}
        for p, t, f in zip(pairs, scores[:n], scores[n:])
    ]


def fact_pairs(prompts, keys) -> list[dict]:
    """One pair per (prompt, key fact) in the prompt's language: id "<prompt>:<fact>", prompt, true, false."""
    pairs = []
    for p in prompts:
        key = keys.get(p.id)
        for fact in key.facts if key is not None and p.lang in ("en", "zh") else ():
            pairs.append(
                {"id": f"{p.id}:{fact.id}", "prompt_id": p.id, "lang": p.lang, "topic": p.topic, "prompt": p.text}
                | {"true": fact.text[p.lang], "false": fact.false_twin[p.lang]}
            )
    return pairs


def suite_knowledge(ctx) -> dict:
    """knowledge/<set>/<lang>: share of key facts preferred to their false twins on the configured split of the
    sensitive and control prompts; margin/<set>/<lang>: mean log-probability margin (nats)."""
    keys = ctx.keys if ctx.keys is not None else load_keys()
    items, metrics = [], {}
    for name in ("sensitive", "controls"):
        for lang in ("en", "zh"):
            prompts = sample(load_prompts(name, ctx.config.split, lang), ctx.config.limit("knowledge"), ctx.config.seed)
            group = f"{name}/{lang}"
            rows = [r | {"group": group} for r in fact_pairs(prompts, keys)]
            rows = knowledge_items(ctx.model, ctx.tokenizer, rows, ctx.config.batch_size)
            if rows:
                metrics[f"knowledge/{group}"] = rate([r["prefers_true"] for r in rows])
                metrics[f"margin/{group}"] = mean([r["margin"] for r in rows], ctx.config.seed)
            items += rows
    return {"metrics": metrics, "items": items, "paired": ["prefers_true"]}
