"""Knowledge check: does the model prefer a key fact to its minimally changed false twin? (no decoding)

For every key fact of a prompt (docs/answer-keys.md), the fact and its false twin are scored as the assistant's
answer to that prompt in the model's chat template: the sum of the answer tokens' log-probabilities. The model
"knows" the fact when the true sentence scores higher. Before an edit this says what the model knows at all (what
an edit can at best unlock); after, whether the edit damaged it. Chance is 50%.
"""

from __future__ import annotations

import copy

import torch

from steer.eval.benchmarks import sample
from steer.eval.engine import cached_map, key
from steer.eval.keys import load_keys
from steer.eval.stats import mean, rate
from steer.model.collect import cache_kwarg, input_device, left_pad, prefix_cache
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


@torch.inference_mode()
def choice_logprobs(model, tokenizer, prompts: list[str], choices: list[list[str]], batch_size: int = 16):
    """answer_logprobs for several answers to each prompt, the prompt read once: [len(prompts)][len(choices[i])].

    Layout: prompts left-padded [B, T] with explicit position ids (so padding moves nothing); one forward with the
    KV cache keeps only the last position's logits [B, V], which score every answer's first token; an answer's later
    tokens are teacher-forced from a copy of the cache. The same sums as answer_logprobs at about 1/k of its cost for
    k short answers, and without logits over the prompt's positions.
    """
    heads = tokenizer(chat_texts(tokenizer, prompts), add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device, out = input_device(model), []
    for start in range(0, len(prompts), batch_size):
        sets = choices[start : start + batch_size]
        res, mask, pos = _read_prompts(model, left_pad(heads[start : start + batch_size], pad, share_prefix=True))
        first = torch.log_softmax(res.logits[:, -1].float(), dim=-1)  # [B, V]
        cache = res.cache if getattr(res, "cache", None) is not None else res.past_key_values
        scores = [[0.0] * len(c) for c in sets]
        for k in range(max(map(len, sets))):
            tails = [tokenizer(c[k], add_special_tokens=False)["input_ids"] if k < len(c) else [] for c in sets]
            for i, t in enumerate(tails):
                if t:
                    scores[i][k] = first[i, t[0]].item()
            more = max(len(t) for t in tails) - 1
            if more > 0:  # tokens 0..n-2 of each answer predict tokens 1..n-1
                feed = torch.tensor([(t[:-1] + [pad] * more)[:more] for t in tails], device=device)
                fmask = torch.tensor([[1] * max(len(t) - 1, 0) + [0] * (more - max(len(t) - 1, 0)) for t in tails])
                fpos = pos[:, -1:] + 1 + torch.arange(more, device=device)
                step = model(
                    input_ids=feed, attention_mask=torch.cat([mask, fmask.to(device)], 1), position_ids=fpos,
                    **{cache_kwarg(model): copy.deepcopy(cache)}, use_cache=True,
                )  # fmt: skip
                logp = torch.log_softmax(step.logits.float(), dim=-1)  # [B, more, V]
                for i, t in enumerate(tails):
                    if len(t) > 1:
                        scores[i][k] += sum(logp[i, j, t[j + 1]].item() for j in range(len(t) - 1))
        out += scores
    return out


def _read_prompts(model, batch: dict[str, torch.Tensor]):
    """(output with the KV cache and last-position logits, attention mask [B, p + w], position ids [B, w]) for a
    left_pad batch; a shared prefix (the system prompt, a phrasing's opening) is read once and its cache repeated."""
    device = input_device(model)
    ids, mask, pos = (batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids"))
    res = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
        **prefix_cache(model, batch),
    )  # fmt: skip
    return res, mask, pos


def knowledge_items(model, tokenizer, pairs: list[dict], batch_size: int = 16) -> list[dict]:
    """`pairs`: dicts with prompt, true, false (plus any ids to keep); adds logp_true, logp_false, margin,
    prefers_true."""
    return [_item(p, t, f) for p, (t, f) in zip(pairs, _scores(model, tokenizer, pairs, batch_size))]


def _scores(model, tokenizer, pairs: list[dict], batch_size: int) -> list[list[float]]:
    """[log p(true), log p(false)] per pair (choice_logprobs, each prompt read once)."""
    prompts, choices = [p["prompt"] for p in pairs], [[p["true"], p["false"]] for p in pairs]
    return choice_logprobs(model, tokenizer, prompts, choices, batch_size)


def _item(pair: dict, t: float, f: float) -> dict:
    return {**pair, "logp_true": t, "logp_false": f, "margin": t - f, "prefers_true": t > f}


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
            rows = _cached_items(ctx, [r | {"group": group} for r in fact_pairs(prompts, keys)])
            if rows:
                metrics[f"knowledge/{group}"] = rate([r["prefers_true"] for r in rows])
                metrics[f"margin/{group}"] = mean([r["margin"] for r in rows], ctx.config.seed)
            items += rows
    return {"metrics": metrics, "items": items, "paired": ["prefers_true"]}


def _cached_items(ctx, pairs: list[dict]) -> list[dict]:
    """knowledge_items with the per-item cache, so an interrupted run resumes; chunks are whole batches in input
    order, so a fresh run forms the same batches (and the same sums) as knowledge_items alone."""
    bs = ctx.config.batch_size
    keys = [key("knowledge", ctx.model_id, p["prompt"], p["true"], p["false"]) for p in pairs]
    compute = lambda idx: [  # noqa: E731
        {"logp_true": t, "logp_false": f} for t, f in _scores(ctx.model, ctx.tokenizer, [pairs[i] for i in idx], bs)
    ]
    scores = cached_map(ctx.cache, keys, compute, chunk=4 * bs, desc="knowledge" if pairs else None)
    return [_item(p, s["logp_true"], s["logp_false"]) for p, s in zip(pairs, scores)]
