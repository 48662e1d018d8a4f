import math
import random

import pytest

from steer.eval.stats import bootstrap_ci, mcnemar_exact, wilson_ci


def test_wilson_known_values():
    lo, hi = wilson_ci(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = wilson_ci(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-3)
    assert all(math.isnan(x) for x in wilson_ci(0, 0))


def test_wilson_coverage_by_simulation():
    rng = random.Random(1)
    p, n, trials = 0.3, 60, 2000
    hits = 0
    for _ in range(trials):
        k = sum(rng.random() < p for _ in range(n))
        lo, hi = wilson_ci(k, n)
        hits += lo <= p <= hi
    assert 0.93 <= hits / trials <= 0.97


def test_bootstrap_ci_contains_mean_and_is_seeded():
    values = [float(i % 7) for i in range(100)]
    lo, hi = bootstrap_ci(values, seed=3)
    assert lo < sum(values) / len(values) < hi
    assert bootstrap_ci(values, seed=3) == (lo, hi)


def test_mcnemar_exact():
    same = [True, False, True] * 10
    assert mcnemar_exact(same, same)["p_value"] == 1.0
    base = [True] * 10 + [False] * 10
    edited = [False] * 10 + [False] * 10  # lost 10, gained 0
    r = mcnemar_exact(base, edited)
    assert r["base_only"] == 10 and r["edited_only"] == 0 and r["delta"] == -0.5
    assert r["p_value"] == pytest.approx(2 / 2**10)
    # b = 2, c = 1 -> p = 1 (binomial two-sided, capped)
    assert mcnemar_exact([True, True, False], [False, False, True])["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])
