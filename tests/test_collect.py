import pytest
import torch
from conftest import PROMPTS, make_model

from steer.model.collect import batched_last_logits, encode_batches, residual_means
from steer.prompts import chat_texts, post_instruction_length


def test_means_equal_output_hidden_states(arch, tokenizer):
    model = make_model(arch)
    texts = chat_texts(tokenizer, PROMPTS)
    n_pos = post_instruction_length(tokenizer)
    assert n_pos == 13  # <|im_end|> \n <|im_start|> a-s-s-i-s-t-a-n-t \n, one token per byte
    means = residual_means(model, tokenizer, texts, n_pos, batch_size=2)
    # Reference: one prompt at a time, no padding at all.
    ref = torch.zeros_like(means)
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            hs = model(**ids, output_hidden_states=True).hidden_states
        for layer in range(means.shape[0]):
            ref[layer] += hs[layer][0, -n_pos:].double()
    ref /= len(texts)
    assert means.dtype == torch.float64
    torch.testing.assert_close(means, ref, atol=1e-4, rtol=1e-4)


def test_left_padding_does_not_change_last_logits(tokenizer):
    model = make_model("qwen2")
    texts = chat_texts(tokenizer, PROMPTS)
    batched = batched_last_logits(model, tokenizer, texts, batch_size=5)
    single = batched_last_logits(model, tokenizer, texts, batch_size=1)
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_batches_are_length_sorted_and_cover_all(tokenizer):
    texts = ["a" * n for n in (5, 1, 9, 3)]
    seen = []
    widths = []
    for idx, batch in encode_batches(tokenizer, texts, 2):
        seen += idx
        widths.append(batch["input_ids"].shape[1])
        assert (batch["attention_mask"][:, -1] == 1).all()  # left padded
    assert sorted(seen) == [0, 1, 2, 3] and widths == sorted(widths)


def test_grouped_batches_never_mix_groups_and_share_their_prefix(tokenizer):
    """With group labels (a few-shot subject per prompt) each batch holds one group, so its common prefix is the
    group's long one; the logits are those of ungrouped batches."""
    shots = {"g1": "x" * 30, "g2": "y" * 30}
    labels = ["g2", "g1", "g1", "g2", "g1", "g2", "g1"]
    texts = [shots[g] + "q" * (i + 1) for i, g in enumerate(labels)]
    batches = list(encode_batches(tokenizer, texts, 3, share_prefix=True, groups=labels))
    assert sorted(i for idx, _ in batches for i in idx) == list(range(len(texts)))
    assert all(len({labels[i] for i in idx}) == 1 for idx, _ in batches)
    assert all(b["prefix_ids"].shape[1] >= 30 for idx, b in batches if len(idx) > 1)
    ungrouped = list(encode_batches(tokenizer, texts, 3, share_prefix=True))
    assert any("prefix_ids" not in b for _, b in ungrouped)  # mixed batches share nothing
    model = make_model("qwen2")
    torch.testing.assert_close(
        batched_last_logits(model, tokenizer, texts, 3, groups=labels),
        batched_last_logits(model, tokenizer, texts, 3),
        atol=1e-5,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="2 group labels for 7 texts"):
        list(encode_batches(tokenizer, texts, 3, groups=labels[:2]))


def test_residual_stack_rows_average_to_residual_means(tokenizer):
    from steer.model.collect import residual_stack

    model = make_model("qwen2")
    texts = chat_texts(tokenizer, PROMPTS)
    stack = residual_stack(model, tokenizer, texts, 3, batch_size=2)
    means = residual_means(model, tokenizer, texts, 3, batch_size=3)
    assert stack.shape == (len(texts), model.config.num_hidden_layers, 3, model.config.hidden_size)
    assert torch.allclose(stack.double().mean(0), means, atol=1e-5)
    one = residual_stack(model, tokenizer, texts[1:2], 3)  # row order follows the input, not the batching
    assert torch.allclose(stack[1], one[0], atol=1e-5)


def test_collection_with_layers_offloaded_to_disk(tmp_path, tokenizer):
    """A model larger than memory: accelerate keeps some layers on disk (device_map) and the
    directions measured through them equal the in-memory ones."""
    from steer.model.load import load_model

    model = make_model("qwen2")
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    device_map = {
        "model.embed_tokens": "disk",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "disk",
    }
    offloaded = load_model(str(tmp_path / "ckpt"), device_map=device_map, offload_folder=tmp_path / "offload")
    # Really not in memory (accelerate reads these straight from the safetensors file when used).
    assert offloaded.model.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    texts = chat_texts(tokenizer, PROMPTS)
    got = residual_means(offloaded.model, offloaded.tokenizer, texts, 3, batch_size=2)
    want = residual_means(model, tokenizer, texts, 3, batch_size=2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        batched_last_logits(offloaded.model, offloaded.tokenizer, texts),
        batched_last_logits(model, tokenizer, texts),
        atol=1e-4,
        rtol=1e-4,
    )


def test_shared_prefix_forward_equals_plain_forward(arch, tokenizer):
    """The prefix run once with its KV cache repeated over the rows gives every row's logits
    (several last positions), as one left-padded batch does."""
    from steer.model.collect import forward, left_pad

    model = make_model(arch)
    ids = tokenizer(chat_texts(tokenizer, PROMPTS), add_special_tokens=False)["input_ids"]
    shared = left_pad(ids, tokenizer.pad_token_id, share_prefix=True)
    assert shared["prefix_ids"].tolist() == [ids[0][:6]]  # "<|im_start|>user\n", one token per byte
    assert shared["attention_mask"].shape[1] == 6 + shared["input_ids"].shape[1]
    plain = forward(model, left_pad(ids, tokenizer.pad_token_id), 4)
    torch.testing.assert_close(forward(model, shared, 4), plain, atol=1e-5, rtol=1e-5)


def test_shared_prefix_gradients_equal_plain(tokenizer):
    """Gradients flow through the repeated cache into the prefix's share: a vector added to
    every attention output (prefix positions included) gets the plain batch's gradient."""
    from steer.model.collect import forward, left_pad

    model = make_model("llama")
    ids = tokenizer(chat_texts(tokenizer, PROMPTS), add_special_tokens=False)["input_ids"]
    grads = []
    for share in (False, True):
        v = torch.zeros(model.config.hidden_size, requires_grad=True)
        hook = model.model.layers[0].self_attn.o_proj.register_forward_hook(lambda m, a, out: out + v)
        try:
            forward(model, left_pad(ids, tokenizer.pad_token_id, share_prefix=share), 2).float().logsumexp(
                -1
            ).sum().backward()
        finally:
            hook.remove()
        grads.append(v.grad)
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_rest_hooks_see_only_the_rows(tokenizer):
    from contextlib import contextmanager

    from steer.model.collect import forward, left_pad

    model = make_model("qwen2")
    ids = tokenizer(chat_texts(tokenizer, PROMPTS), add_special_tokens=False)["input_ids"]
    seen = []

    @contextmanager
    def rows():
        h = model.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[0]))
        try:
            yield
        finally:
            h.remove()

    forward(model, left_pad(ids, tokenizer.pad_token_id, share_prefix=True), 1, rows)
    assert seen == [len(ids)]  # once, for the rows; not for the prefix's single row


def test_shared_prefix_leaves_each_row_a_token_and_skips_short_prefixes():
    from steer.model.collect import MIN_SHARED, left_pad, shared_prefix_length

    assert shared_prefix_length([[5, 6, 7], [5, 6, 7]]) == 2  # identical rows keep their last token
    assert shared_prefix_length([[5, 6, 7, 8]]) == 0
    assert shared_prefix_length([[5, 6, 9], [5, 6, 7, 8]]) == 2
    short = [[1] * (MIN_SHARED - 1) + [2, 3], [1] * (MIN_SHARED - 1) + [4]]
    batch = left_pad(short, 0, share_prefix=True)
    assert "prefix_ids" not in batch and batch["input_ids"].shape == (2, MIN_SHARED + 1)
    long = [[1] * MIN_SHARED + [2, 3], [1] * MIN_SHARED + [4]]
    batch = left_pad(long, 0, share_prefix=True)
    assert batch["prefix_ids"].tolist() == [[1] * MIN_SHARED]
    assert batch["input_ids"].tolist() == [[2, 3], [0, 4]]
    assert batch["position_ids"].tolist() == [[MIN_SHARED, MIN_SHARED + 1], [MIN_SHARED, MIN_SHARED]]
    assert batch["attention_mask"].tolist() == [[1] * MIN_SHARED + [1, 1], [1] * MIN_SHARED + [0, 1]]


def test_batched_last_logits_build_no_graph(tokenizer):
    """Inference only: with parameters that require gradients, the logits carry no autograd graph
    (one would keep every batch's activations alive: an 11 GB peak on the embedded model)."""
    model = make_model("qwen2")
    assert all(p.requires_grad for p in model.parameters())
    logits = batched_last_logits(model, tokenizer, chat_texts(tokenizer, PROMPTS), batch_size=2)
    assert not logits.requires_grad and logits.grad_fn is None
