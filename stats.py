"""Confidence intervals: one kind for means, one for proportions, for classification and
detection alike.

* A mean gets a **bootstrap percentile** 95% interval (2,000 resamples from a fixed seed, so the
  same values always give the same interval). Unlike a t or normal interval it never leaves the
  range the values can take (an AUC stays in [0, 1], a correlation in [-1, 1], a drop in
  [0, 100] %), because every resampled mean is a mean of observed values.
* A proportion gets **Wilson's score** interval, which stays in [0, 1] and is sensible at 0%
  and 100%.
* One value has no spread: its interval and standard deviation are ``None`` (written ``n/a``).
  Below ``SMALL_N`` values an interval exists but is rough; callers say so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MEAN_INTERVAL = "bootstrap percentile 95% interval of the mean (2000 resamples, seed 0)"
PROPORTION_INTERVAL = "Wilson score 95% interval"
RESAMPLES = 2000
SMALL_N = 10          # fewer values than this: the interval is rough, say so
_Z = 1.959963984540054
_CHUNK = 1 << 22      # resampled values held at once, whatever n is


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and 95% interval of ``n`` values (``None``: undefined)."""

    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    interval: str = MEAN_INTERVAL

    @property
    def ci(self) -> tuple[float, float] | None:
        return None if self.ci_low is None else (self.ci_low, self.ci_high)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std,
                "ci95": None if self.ci is None else list(self.ci), "n": self.n,
                "interval": self.interval}

    def scaled(self, factor: float) -> Spread:
        """The same spread in other units (a fraction as a percentage)."""
        mul = (lambda v: None if v is None else v * factor)
        return Spread(self.mean * factor, mul(self.std), mul(self.ci_low), mul(self.ci_high),
                      self.n, self.interval)

    def interval_text(self, digits: int, sep: str = ", ") -> str:
        """``[low, high]`` with ``digits`` decimals, or ``n/a`` where there is no interval."""
        if self.ci is None:
            return "n/a"
        return f"[{self.ci_low:.{digits}f}{sep}{self.ci_high:.{digits}f}]"


def _values(values: torch.Tensor | list[float]) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=torch.float64).flatten().cpu()
    if len(v) == 0:
        raise ValueError("no values")
    return v


def bootstrap_interval(values: torch.Tensor, resamples: int = RESAMPLES, seed: int = 0
                       ) -> tuple[float, float]:
    """The 2.5% and 97.5% quantiles of the means of ``resamples`` resamples (with
    replacement) of ``values``; drawn in chunks so memory does not grow with ``len(values)``."""
    n = len(values)
    generator = torch.Generator().manual_seed(seed)
    per_chunk = max(1, _CHUNK // n)
    means = []
    for start in range(0, resamples, per_chunk):
        count = min(per_chunk, resamples - start)
        idx = torch.randint(n, (count, n), generator=generator)
        means.append(values[idx].mean(1))
    low, high = torch.quantile(torch.cat(means), torch.tensor([0.025, 0.975],
                                                              dtype=torch.float64)).tolist()
    return low, high


def mean_spread(values: torch.Tensor | list[float]) -> Spread:
    """The mean of ``values`` with its bootstrap percentile interval (``None`` for one value)."""
    v = _values(values)
    mean = v.mean().item()
    if len(v) < 2:
        return Spread(mean, None, None, None, len(v))
    low, high = bootstrap_interval(v)
    return Spread(mean, v.std(unbiased=True).item(), low, high, len(v))


def wilson(successes: float, n: int) -> tuple[float, float] | None:
    """Wilson's 95% score interval of ``successes`` out of ``n`` (``None`` below 2)."""
    if n < 2:
        return None
    p = successes / n
    centre = (p + _Z * _Z / (2 * n)) / (1 + _Z * _Z / n)
    half = _Z * math.sqrt(p * (1 - p) / n + _Z * _Z / (4 * n * n)) / (1 + _Z * _Z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion_spread(hits: torch.Tensor | list[float]) -> Spread:
    """The share of yes in ``hits`` (booleans) with Wilson's interval (``None`` for one)."""
    v = _values(hits)
    p = v.mean().item()
    ci = wilson(v.sum().item(), len(v))
    std = v.std(unbiased=True).item() if len(v) > 1 else None
    return Spread(p, std, *(ci or (None, None)), len(v), PROPORTION_INTERVAL)


def small_sample_note(n: int, what: str) -> str | None:
    """A ``note:`` line when ``n`` is too small for a useful interval, else None."""
    if n < 2:
        return f"note: {what}: 1 value, so no interval (n/a); use more for a spread"
    if n < SMALL_N:
        return f"note: {what}: only {n} values, so the 95% intervals are rough"
    return None
