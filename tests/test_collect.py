import torch

from conftest import PROMPTS, make_model
from steer.collect import batched_last_logits, encode_batches, residual_means
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


def test_residual_stack_rows_average_to_residual_means(tokenizer):
    from steer.collect import residual_stack

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
    from steer.load import load_model

    model = make_model("qwen2")
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    device_map = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
    offloaded = load_model(str(tmp_path / "ckpt"), device_map=device_map, offload_folder=tmp_path / "offload")
    # Really not in memory (accelerate reads these straight from the safetensors file when used).
    assert offloaded.model.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    texts = chat_texts(tokenizer, PROMPTS)
    got = residual_means(offloaded.model, offloaded.tokenizer, texts, 3, batch_size=2)
    want = residual_means(model, tokenizer, texts, 3, batch_size=2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched_last_logits(offloaded.model, offloaded.tokenizer, texts),
                               batched_last_logits(model, tokenizer, texts), atol=1e-4, rtol=1e-4)
