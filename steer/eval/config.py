"""What an evaluation runs (`steer eval`, `steer compare`, the pipeline's before/after), declared once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from steer.settings import option


@dataclass
class EvalConfig:
    """What an evaluation runs: the suites, the benchmark data folder, item limits per suite ("*": every suite),
    the shipped prompts' split, seed, batch size, MMLU shots, token budgets per suite and the judged suites'
    repetition penalty."""

    suites: list[str]
    data_dir: Path | None = option(
        None, "benchmark data folder (layout: docs/evaluation.md), e.g. ../shared/data", parse=Path
    )
    limits: dict[str, int | None] = field(default_factory=dict)  # per suite; missing = all items
    split: str = option(
        "test",
        "split of the shipped prompt sets the censorship, controls, critique, refusal, kl and knowledge suites read: "
        "choose on train/val, report on test",
        choices=("train", "val", "test"),
    )
    seed: int = option(0, "seed of the stratified item samples")
    batch_size: int = option(16, "prompts per forward pass or generation batch", minimum=1)
    shots: int = option(0, "MMLU few-shot examples from the dev split", choices=(0, 5))
    max_new_tokens: dict[str, int] = field(default_factory=dict)  # per suite overrides
    slant_file: Path | None = option(
        None, "stance statements JSONL for --suite slant (fields: docs/slant-data.md; default: the shipped set)",
        parse=Path, metavar="FILE",
    )  # fmt: skip
    null_edits: int = option(
        10,
        "compare --suite slant: random-direction edits at the edited model's layers and strengths (the null for stance "
        "shifts; 0: none)",
        minimum=0,
    )
    dtype: str = option(
        "float32",
        "dtype the models are loaded in for the forward passes: float32, or bfloat16 (about 3x faster on CPUs with AMX "
        "and on GPUs; answers differ slightly, so both sides of a comparison use the same; the eval cache keeps them "
        "apart)",
        choices=("float32", "bfloat16"),
    )
    repetition_penalty: float = option(
        1.1,
        "greedy decoding of the judged suites on logits with HF's repetition penalty (both models in compare); 1.1 is "
        "the published value of Qwen's small instruct models (docs/evaluation.md: the one protocol); 1.0: plain greedy",
        above=0,
    )

    def limit(self, suite: str) -> int | None:
        return self.limits.get(suite, self.limits.get("*"))

    def tokens(self, suite: str, default: int) -> int:
        return self.max_new_tokens.get(suite, default)
