"""Route cost: tokens counted per forward call (padding excluded, KV-cached steps by their new tokens), training
tokens told apart, FLOPs by the 2N rule."""

import torch
from conftest import make_model

from steer.report.cost import TokenCount, count_tokens, n_params


def test_forward_tokens_exclude_padding_and_cached_steps_count_new_tokens():
    model = make_model("qwen2")
    ids = torch.randint(3, 200, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad(), count_tokens(model) as count:
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        model(
            input_ids=ids[:, :1], past_key_values=out.past_key_values, attention_mask=torch.cat([mask, mask[:, :1]], 1)
        )
    assert count == TokenCount(forward=8 + 2)
    model(input_ids=ids)  # outside the block: not counted
    assert count.forward == 10


def test_training_tokens_and_recompute_are_counted_apart():
    model = make_model("llama").train()
    ids = torch.randint(3, 200, (3, 4))
    with count_tokens(model) as count:
        model(input_ids=ids, labels=ids).loss.backward()
    assert count == TokenCount(train=12)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with count_tokens(model) as count:
        model(input_ids=ids, labels=ids).loss.backward()
    assert count == TokenCount(train=12, recompute=12)


def test_flops_follow_the_two_n_rule():
    count = TokenCount(forward=100, train=10, recompute=10)
    assert count.flops(1e9) == 2e9 * 120 + 2e9 * 10
    summary = count.summary(n_params(make_model("qwen2")))
    assert summary["flops_70B"] == 10 * summary["flops_7B"] == count.flops(70e9)
