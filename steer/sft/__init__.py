"""Supervised fine-tuning baseline (the R1 1776 route): LoRA with peft on question -> answer pairs.

settings (SFTSettings, the flags of `steer sft`) -> data (the shipped open set or a user's JSONL; loss on answer
tokens) -> train (seeded, resumable) -> run (adapter, merged checkpoint, manifest).
"""

from steer.sft.data import Pair, load_pairs
from steer.sft.run import SFTResult, train_sft
from steer.sft.settings import SFTSettings

__all__ = ["Pair", "SFTResult", "SFTSettings", "load_pairs", "train_sft"]
