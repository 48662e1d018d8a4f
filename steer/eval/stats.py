"""Confidence intervals and paired tests for evaluation scores (pure functions, no torch)."""

from __future__ import annotations

import math
import random


def wilson_ci(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion k/n (well-behaved at 0% and 100%)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_ci(values: list[float], seed: int = 0, n_boot: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean (seeded, so reports are reproducible)."""
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return (means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1])


def paired_bootstrap_ci(
    base: list[bool] | list[float], edited: list[bool] | list[float], seed: int = 0, n_boot: int = 2000
) -> tuple[float, float]:
    """95% bootstrap interval of mean(edited - base), resampling items (pairs stay together)."""
    if len(base) != len(edited):
        raise ValueError("paired interval needs the same items for both models")
    return bootstrap_ci([float(e) - float(b) for b, e in zip(base, edited)], seed, n_boot)


def mcnemar_exact(base: list[bool], edited: list[bool]) -> dict:
    """Exact two-sided McNemar test on paired outcomes (same items, base vs edited).

    Only discordant pairs carry information: b = right before and wrong after, c = the
    reverse. Under "no change" b ~ Binomial(b + c, 1/2).
    """
    if len(base) != len(edited):
        raise ValueError("paired test needs the same items for both models")
    b = sum(x and not y for x, y in zip(base, edited))
    c = sum(y and not x for x, y in zip(base, edited))
    m = b + c
    if m == 0:
        p = 1.0
    else:
        tail = sum(math.comb(m, i) for i in range(0, min(b, c) + 1)) / 2**m
        p = min(1.0, 2 * tail)
    n = len(base)
    diff = (sum(edited) - sum(base)) / n if n else float("nan")
    return {"n": n, "base_only": b, "edited_only": c, "delta": diff, "p_value": p}


def rate(values: list[bool]) -> dict:
    """A metric: the share of True with its 95% Wilson interval and n."""
    k, n = sum(values), len(values)
    return {"value": k / n if n else float("nan"), "ci": list(wilson_ci(k, n)), "n": n}


def mean(values: list[float], seed: int = 0) -> dict:
    """A metric: the mean with its seeded 95% bootstrap interval and n."""
    return {
        "value": sum(values) / len(values) if values else float("nan"),
        "ci": list(bootstrap_ci(values, seed)),
        "n": len(values),
    }
