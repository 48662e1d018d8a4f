"""Settings of the targeted mode (`steer abliterate --keep-safety`, `steer search`), declared once."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

from steer.errors import SteerError
from steer.prompts import Prompt, load_prompts
from steer.settings import after_search, none_or_float, option

# shipped sets whose refusals the targeted edit may unlock (steer/data/prompts/<name>.jsonl)
TARGET_SETS = ("sensitive", "critique")


def target_sets(text: str) -> str:
    """Comma-separated names from TARGET_SETS, "sensitive" first, normalised (a SteerError otherwise)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in TARGET_SETS]
    if bad or not names or names[0] != "sensitive" or len(set(names)) != len(names):
        raise SteerError(f"target sets are 'sensitive' followed by any of {', '.join(TARGET_SETS[1:])}: got {text!r}")
    return ",".join(names)


def _target_sets_flag(text: str) -> str:
    """--target-sets as argparse wants a bad value reported (one line, exit 2)."""
    try:
        return target_sets(text)
    except SteerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def own_directions(text: str, sets: str) -> str:
    """Comma-separated names among sets' later entries (not "sensitive"), normalised; "auto": every later entry;
    "none" or "": none (a SteerError otherwise)."""
    allowed = sets.split(",")[1:]
    if text.strip() in ("auto", "none"):
        return ",".join(allowed) if text.strip() == "auto" else ""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or len(set(names)) != len(names):
        raise SteerError(
            f"--own-direction names target sets after 'sensitive' in --target-sets ({', '.join(allowed) or 'none'}), "
            f"each once: got {text!r}"
        )
    return ",".join(names)


# Target scores below this count as done in a trial's target score: a plain mean rewarded pushing
# answered prompts further (costing KL) as much as turning a refused one (the optimizer has its own margin).
TARGET_FLOOR = -2.0


@dataclass
class TargetedSettings:
    """Contrasts, the optimized direction, the search, the judge's confirmation and the readout.
    Defaults and the measurements behind them: docs/targeted.md."""

    # critique (requests to criticise China's leaders and party-state): the edit on factual questions alone still
    # refused to criticise Xi Jinping (results/slant-audit); chosen on validation (results/critique-target)
    target_sets: str = option(
        "sensitive,critique",
        "shipped prompt sets whose refusals the edit removes: their train splits feed the contrasts and the "
        "optimizer, their validation splits the search and the confirmation (critique: requests to criticise or "
        "satirise China's leaders and party-state; 'sensitive' alone: factual questions only, the earlier default)",
        parse=_target_sets_flag,
        metavar="SETS",
    )
    n_val: int = option(32, "sensitive and harmful validation prompts (twice as many harmless ones)", minimum=1)
    # each trial is one forward pass over the validation prompts; with 16 the best edit hinged on random draws
    trials: int = option(32, "search trials, each one forward pass over validation prompts", minimum=1)
    k_max: int = option(3, "largest subspace searched", minimum=1)
    keep_safety: bool = option(True, "edit directions orthogonal to the harmful-refusal direction", cli=False)
    keep_layers: str = option(
        "all",
        "make the edit orthogonal to the harmful-refusal direction of every layer, or of its own layer only",
        choices=("same", "all"),
    )
    keep_fraction: float = option(0.9, "harmful refusal kept >= this fraction of the base model's", above=0, maximum=1)
    kl_max: float = option(
        0.05,
        "first-token KL bound (95% upper bound, harmless validation prompts) a Pareto "
        "candidate must meet to be confirmed; --kl-max is the plain mode's",
        flag="--search-kl-max",
        above=0,
    )
    # each confirmation generates and judges (~50 s on the embedded model); the readout needed the time of a third
    confirm: int = option(2, "Pareto candidates confirmed with generation and the judge", minimum=1, after_search=True)
    # with every sensitive prompt the search found low-KL edits whose answers did not change
    only_refused: bool = option(True, "score and contrast only sensitive prompts the model refuses", cli=False)
    # score > 0 (Arditi et al.) kept 6 of 33 English critique train requests, greedy decoding refuses 19 (refusal
    # tokens first but under half the probability); results/target-filter
    target_filter: str = option(
        "score",
        "which target prompts count as refused (the ones the optimizer, the search and the readout learn from): "
        "refusal score above 0 (score), or that or a refusal token as the most likely first token (greedy: what "
        "greedy decoding refuses)",
        choices=("score", "greedy"),
    )
    # the critique requests' refusal direction is nearly orthogonal to the factual questions' in the middle layers
    # (results/critique-overlap), so the one optimized direction, trained mostly on factual questions, misses it;
    # auto met the rule written before its validation check (results/own-direction)
    own_direction: str = option(
        "auto",
        "target sets (after 'sensitive') that get an optimized direction of their own, trained on all their train "
        "prompts, orthogonal to the main one and to the harmful-refusal direction, and removed by every searched "
        "edit beside it: SETS, auto (every target set after 'sensitive': critique by default) or none",
        metavar="SETS|auto|none",
    )
    batch_size: int = option(32, "prompts per forward pass or generation batch", minimum=1)
    max_new_tokens: int = option(48, "greedy tokens per confirmation answer", minimum=1, after_search=True)
    seed: int = option(0, "seed of every sample, split and search")
    optimize_steps: int = option(
        48,
        "gradient steps for an optimized direction (steer.targeted.optimize: lower "
        "censorship refusal, keep harmful refusal and harmless logits), searched beside the "
        "contrasts; 0 = contrasts only",
        minimum=0,
    )
    # with the contrasts too, a third of the trials went to directions the optimized one dominated
    search_contrasts: str = option(
        "optimized",
        "directions the search draws from: the optimized one only (when "
        "--optimize-steps > 0), or the contrast directions too",
        choices=("optimized", "all"),
    )
    target_floor: float | None = option(
        TARGET_FLOOR,
        "refusal scores on sensitive validation prompts below this count "
        "as done in the search's objective (greedy answers refuse only from about -1 "
        "up); 'none' = plain mean",
        flag="--search-target-floor",
        parse=none_or_float,
        metavar="SCORE|none",
    )
    readout_steps: int = option(
        32,
        "train a learned rank-1 readout on top of the chosen edit (steer.targeted.readout: "
        "each attention and MLP writer's output along the edit direction becomes a learned "
        "function of its input), this many steps; 0 = the searched edit alone",
        minimum=0,
        after_search=True,
    )
    readout_lr: float = option(3e-4, "the readout's Adam learning rate", cli=False, after_search=True)
    readout_kl_tokens: int = option(
        8,
        "the readout's KL term covers this many answer tokens of the base model on harmless prompts",
        minimum=1,
        after_search=True,
    )
    # shorter schedules either spent KL or were held back to a quarter of the readout (docs/history.md)
    readout_kl: str = option(
        "edit",
        "the readout is kept at the largest fraction whose first-token KL on harmless "
        "validation prompts is within a bound: its mean or its 95% upper bound <= "
        "--search-kl-max, or its mean <= the chosen edit's own (edit: the readout spends no KL)",
        choices={"mean": "kl", "bound": "kl_ucb", "edit": "edit"},
        after_search=True,
    )

    def __post_init__(self) -> None:
        self.target_sets = target_sets(self.target_sets)
        self.own_direction = own_directions(self.own_direction, self.target_sets)

    def target_prompts(self, split: str) -> list[Prompt]:
        """The target sets' prompts of one split, in set order (what the edit should stop refusing)."""
        return [p for name in self.target_sets.split(",") for p in load_prompts(name, split)]


# fields that act only after the search: a run that changes only these resumes the same study
AFTER_SEARCH = after_search(TargetedSettings)


def search_settings(ts: TargetedSettings) -> dict:
    """The settings that decide the search's trials (what its journal is keyed by)."""
    return {k: v for k, v in asdict(ts).items() if k not in AFTER_SEARCH}
