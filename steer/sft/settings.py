"""SFT settings, declared once (the `steer sft` flags are generated from these fields).

The defaults are configuration 13 of results/sft-baseline, the nearest of fourteen tried on the validation split to
issue 22's fair-baseline bounds (it misses first-token KL by 0.0008): rank 16 on every linear layer of the blocks,
one epoch at learning rate 1e-4, the general pairs held to the base model's own distribution (--general-answers
model, --general-loss kl, --kl-first-weight 11) and half the refusal pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from steer.settings import option

TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclass
class SFTSettings:
    """LoRA fine-tuning of a chat model on question -> answer pairs (loss on answer tokens only)."""

    rank: int = option(16, "LoRA rank", minimum=1)
    alpha: float = option(32.0, "LoRA alpha (the update is scaled by alpha / rank)", above=0)
    dropout: float = option(0.05, "LoRA dropout", minimum=0, maximum=0.9)
    target_modules: str = option(TARGETS, "comma-separated module names that get a LoRA adapter", metavar="NAMES")
    epochs: int = option(1, "passes over the training pairs", minimum=1)
    lr: float = option(1e-4, "peak learning rate (linear warm-up, then linear decay to 0)", above=0)
    warmup: float = option(0.05, "share of the steps spent warming up", minimum=0, maximum=0.5)
    weight_decay: float = option(0.0, "AdamW weight decay on the LoRA weights", minimum=0)
    batch_size: int = option(8, "pairs per optimizer step", minimum=1)
    max_length: int = option(512, "tokens per pair (prompt + answer); longer pairs are cut at the end", minimum=16)
    val_share: float = option(0.1, "share of the concepts held out for validation loss", minimum=0, maximum=0.5)
    save_every: int = option(25, "steps between resumable checkpoints", minimum=1)
    gradient_checkpointing: bool = option(True, "recompute activations in the backward pass (less memory)")
    bf16: bool = option(True, "matmuls in bfloat16 under autocast, weights in float32 (about 2x faster)")
    seed: int = option(0, "seed for the LoRA initialisation, dropout and data order")
    general_answers: str = option(
        "model",
        "answers of the general pairs: the data's written ones, or the base model's own greedy answers "
        "(self-distillation: holds behaviour on ordinary prompts)",
        choices=("written", "model"),
    )
    # the KL on the first answer token stayed at 0.33-0.49 with greedy own answers (results/sft-baseline)
    general_loss: str = option(
        "kl",
        "loss on the general pairs' answer positions: cross-entropy on their answer tokens (ce), or KL(base || model) "
        "of the whole next-token distribution, the base being the model with its adapter off (kl: holds ordinary "
        "behaviour without teaching one answer; one extra forward pass per general row, no gradient)",
        choices=("ce", "kl"),
    )
    # configuration 5: a KL mean over ~100 answer positions left the first token free (results/sft-baseline)
    kl_first_weight: float = option(
        11.0,
        "with --general-loss kl: weight of the first answer position (the one that starts the answer) in the KL "
        "term, the other positions' being 1",
        minimum=0,
    )
    # configurations 9-10: the first-position KL weight traded English censorship for first-token KL with no point
    # meeting both (results/sft-baseline); this weighs the taught answers' first token instead
    ce_first_weight: float = option(
        1.0,
        "weight of the first answer position in the cross-entropy of the pairs that teach an answer (those of "
        "--ce-first-kinds; general pairs never under --general-loss kl), the other positions' being 1",
        minimum=0,
    )
    # configuration 11: the weight on every taught pair spread the refusal template to ordinary prompts
    ce_first_kinds: str = option(
        "all",
        "pair kinds whose first answer position gets --ce-first-weight: all, or a comma-separated list of kinds "
        "(sensitive, refusal, borderline, general)",
        metavar="KINDS",
    )
    refusal_share: float = option(
        0.5,
        "share of the refusal and borderline pairs kept (seeded, per kind and language): less pull towards "
        "refusing ordinary requests",
        minimum=0,
        maximum=1,
    )

    def first_kinds(self) -> set[str] | None:
        """ce_first_kinds as a set; None for all."""
        kinds = {k.strip() for k in self.ce_first_kinds.split(",") if k.strip()}
        return None if "all" in kinds else kinds

    def modules(self) -> list[str]:
        """target_modules as a list."""
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]
