"""steer's collection agrees with nnsight and TransformerLens reading the same model."""

import pytest
import torch
from conftest import PROMPTS, make_model

from steer.checkpoint.save import save_checkpoint
from steer.model.collect import residual_means
from steer.prompts import chat_texts, post_instruction_length


def test_nnsight_reads_the_same_means(tokenizer):
    pytest.importorskip("nnsight", reason="pip install -e '.[research]'")
    from steer.model.interop import nnsight_residual_means

    model = make_model("qwen2")
    texts = chat_texts(tokenizer, PROMPTS)
    n_pos = post_instruction_length(tokenizer)
    ours = residual_means(model, tokenizer, texts, n_pos, batch_size=2)
    theirs = nnsight_residual_means(model, tokenizer, texts, n_pos, batch_size=2)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_transformer_lens_bridge_resid_pre(tokenizer, tmp_path):
    pytest.importorskip("transformer_lens", reason="pip install -e '.[research]'")
    from steer.model.interop import transformer_lens_bridge

    model = make_model("llama")
    save_checkpoint(model, tokenizer, tmp_path / "m")
    bridge = transformer_lens_bridge(model, tmp_path / "m")
    text = chat_texts(tokenizer, PROMPTS[:1])
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    _, cache = bridge.run_with_cache(ids.input_ids)
    n_pos = post_instruction_length(tokenizer)
    ours = residual_means(model, tokenizer, text, n_pos)
    for layer in range(model.config.num_hidden_layers):
        torch.testing.assert_close(
            cache[f"blocks.{layer}.hook_resid_pre"][0, -n_pos:].double(), ours[layer], atol=1e-5, rtol=1e-5
        )
