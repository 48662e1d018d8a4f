"""Greedy batched generation: length-sorted, left-padded, KV-cached (model.generate)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from .collect import encode_batches


@torch.inference_mode()
def generate(model, tokenizer, texts: list[str], max_new_tokens: int = 64, batch_size: int = 16, desc: str | None = None) -> list[str]:
    """Greedy completions of chat-formatted texts, returned in input order."""
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
    )
    out: list[str] = [""] * len(texts)
    device = model.get_input_embeddings().weight.device
    with tqdm(total=len(texts), desc=desc, disable=desc is None, leave=False) as bar:
        for idx, batch in encode_batches(tokenizer, texts, batch_size):
            ids = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                generation_config=config,
            )
            new = ids[:, batch["input_ids"].shape[1]:]
            for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
                out[i] = text.strip()
            bar.update(len(idx))
    return out
