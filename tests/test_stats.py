"""The two intervals of stats.py: what they must satisfy whatever the data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import stats


def test_mean_interval_is_the_bootstrap_percentile_one_and_repeatable() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    s = stats.mean_spread(values)
    assert (s.mean, s.n) == (2.5, 4)
    assert s.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    # a literal bootstrap: the same seed, the same resamples, the same quantiles
    g = torch.Generator().manual_seed(0)
    means = values.double()[torch.randint(4, (stats.RESAMPLES, 4), generator=g)].mean(1)
    assert (s.ci_low, s.ci_high) == (pytest.approx(torch.quantile(means, 0.025).item()),
                                     pytest.approx(torch.quantile(means, 0.975).item()))
    assert stats.mean_spread(values) == s


def test_mean_interval_stays_inside_the_range_of_the_values() -> None:
    # the cases of the issue: a t interval leaves [0, 1] (AUC) or [-1, 1] (Spearman)
    aucs = torch.tensor([0.99, 1.0, 0.2, 1.0])
    rho = torch.tensor([0.95, 0.98, -0.1])
    for v in (aucs, rho):
        s = stats.mean_spread(v)
        assert v.min() <= s.ci_low <= s.mean <= s.ci_high <= v.max()


def test_mean_interval_matches_the_normal_one_for_many_values() -> None:
    v = torch.randn(2000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = stats.mean_spread(v)
    half = 1.96 * v.std().item() / np.sqrt(len(v))
    assert s.ci_low == pytest.approx(s.mean - half, abs=0.2 * half)
    assert s.ci_high == pytest.approx(s.mean + half, abs=0.2 * half)


def test_one_value_has_no_interval_and_says_so() -> None:
    one = stats.mean_spread([0.3])
    assert (one.mean, one.std, one.ci) == (0.3, None, None)
    assert one.interval_text(2) == "n/a"
    assert one.as_dict()["ci95"] is None
    assert stats.proportion_spread([True]).ci is None
    assert "no interval" in stats.small_sample_note(1, "x")
    assert "rough" in stats.small_sample_note(5, "x")
    assert stats.small_sample_note(50, "x") is None


def test_wilson_interval_of_a_proportion() -> None:
    s = stats.proportion_spread(torch.tensor([True] * 8 + [False] * 2)).scaled(100)
    assert s.mean == pytest.approx(80.0) and s.n == 10
    assert (s.ci_low, s.ci_high) == (pytest.approx(49.02, abs=0.01), pytest.approx(94.33, abs=0.01))
    none = stats.proportion_spread(torch.zeros(20, dtype=torch.bool))
    assert none.ci_low == pytest.approx(0.0, abs=1e-12) and 0.1 < none.ci_high < 0.2
    assert stats.wilson(20, 20)[1] == 1.0


def test_bootstrap_memory_is_chunked(monkeypatch) -> None:
    monkeypatch.setattr(stats, "_CHUNK", 50)   # 5 resamples of 10 values per draw
    v = torch.arange(10, dtype=torch.float64)
    low, high = stats.bootstrap_interval(v, resamples=40)
    assert 0 <= low <= 4.5 <= high <= 9
