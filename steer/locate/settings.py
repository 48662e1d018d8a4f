"""Settings of the plain pipeline (`steer abliterate`, `steer directions`), declared once."""

from __future__ import annotations

from dataclasses import dataclass

from steer.settings import option


@dataclass
class Settings:
    """The plain pipeline: which prompts, how directions are selected, and the before/after evaluation."""

    target: str = option("sensitive", "prompts to stop refusing: shipped set or file (.txt/.jsonl/.csv[:col])")
    baseline: str = option("harmless", "prompts the model answers")
    n_val: int = option(32, "target validation prompts for selection; twice as many baseline ones for KL", minimum=1)
    projected: bool = option(True, "remove the baseline-mean component from each direction (grimjim)")
    kl_max: float = option(0.1, "max first-token KL (95% bound) on baseline prompts for a candidate", above=0)
    screen: int = option(8, "candidates scored in full after the bypass screen", minimum=1)
    screen_prompts: int = option(8, "target prompts used to screen every candidate", minimum=1)
    eval_limit: int = option(80, "held-out prompts per evaluation group (seeded sample)", minimum=1)
    eval_split: str = option(
        "test",
        "split of the shipped prompts the before/after table reads: val while choosing settings, test for the "
        "final numbers",
        choices=("train", "val", "test"),
    )
    max_new_tokens: int = option(
        48, "greedy tokens per refusal-suite answer (censorship answers: 128, docs/evaluation.md)", minimum=1
    )
    batch_size: int = option(32, "prompts per forward pass or generation batch", minimum=1)
    dtype: str = option(
        "float32",
        "dtype of the forward passes (directions, the --keep-safety search and readout, evaluation): float32, or "
        "bfloat16 (about 3x faster on CPUs with AMX and on GPUs; answers differ slightly); the saved weights keep the "
        "input's dtype either way",
        choices=("float32", "bfloat16"),
    )
    seed: int = option(0, "seed of every sample, split and search")
