"""Statistics of the reproduction: confidence intervals, equivalence verdicts, fits.

Every interval is a two-sided 95% Student-t interval over seeds (``scipy.stats.t``): the
seeds are independent replicates (their own data split, initial weights, micro-batch order
and noise draws). Comparisons between schemes are *paired* by seed (same split, same initial
weights, same micro-batch stream), so the interval is the t interval of the per-seed
differences. Ratios (samples, cycles, speedups) are averaged on the log scale: the interval
of the mean log ratio, exponentiated (a geometric mean with its interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

__all__ = [
    "CONFIDENCE", "INCONCLUSIVE", "NOT_SUPPORTED", "SUPPORTED", "Interval", "equivalence",
    "at_least", "fit_one_constant", "log_ratio_interval", "mean_interval", "paired_difference",
    "slope_fit", "spearman",
]

CONFIDENCE = 0.95
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


ACCURACY = (0.0, 1.0)  # feasible ranges for Interval.fmt(bounds=...)
COUNT = (0.0, math.inf)


@dataclass(frozen=True)
class Interval:
    """Mean and its two-sided t confidence interval over ``n`` finite values of ``total``.

    ``lo``/``hi`` are NaN when n < 2 (no spread to estimate).
    """

    mean: float
    lo: float
    hi: float
    n: int
    total: int
    sd: float = math.nan

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Interval:
        return cls(**d)

    @property
    def defined(self) -> bool:
        return self.n >= 2 and math.isfinite(self.lo) and math.isfinite(self.hi)

    def fmt(self, digits: int = 3, scale: float = 1.0,
            bounds: tuple[float, float] | None = None) -> str:
        """'mean [lo, hi]' (and 'n/total' when some values are missing). `bounds`: the
        feasible range of the value (before `scale`); the shown interval is clipped to it."""
        if self.n == 0:
            return f"- (0/{self.total})"
        text = f"{self.mean * scale:.{digits}f}"
        if self.defined:
            lo, hi = self.lo, self.hi
            if bounds is not None:
                lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
            text += f" [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
        if self.n < self.total:
            text += f" ({self.n}/{self.total})"
        return text


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray([float(v) for v in values], dtype=float)
    return a[np.isfinite(a)]


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of the finite values with the Student-t interval ``mean ± t_{n-1} sd / sqrt(n)``."""
    a = _finite(values)
    n = int(a.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, len(values))
    m = float(a.mean())
    if n < 2:
        return Interval(m, math.nan, math.nan, 1, len(values))
    sd = float(a.std(ddof=1))
    if sd == 0.0:
        return Interval(m, m, m, n, len(values), 0.0)
    lo, hi = sps.t.interval(confidence, n - 1, loc=m, scale=sd / math.sqrt(n))
    return Interval(m, float(lo), float(hi), n, len(values), sd)


def paired_difference(a: dict[int, float], b: dict[int, float],
                      confidence: float = CONFIDENCE) -> Interval:
    """Interval of mean(a_s - b_s) over the seeds s present in both (paired t interval)."""
    seeds = sorted(set(a) & set(b))
    return mean_interval([a[s] - b[s] for s in seeds], confidence)


def log_ratio_interval(a: dict[int, float], b: dict[int, float],
                       confidence: float = CONFIDENCE) -> Interval:
    """Geometric mean of a_s / b_s over paired seeds with its interval (t on the logs).

    A seed where either value is missing, zero or not finite is left out (``n < total``).
    """
    seeds = sorted(set(a) & set(b))
    logs = [math.log(a[s] / b[s]) if (math.isfinite(a[s]) and math.isfinite(b[s])
                                      and a[s] > 0 and b[s] > 0) else math.nan for s in seeds]
    i = mean_interval(logs, confidence)
    return Interval(math.exp(i.mean) if i.n else math.nan,
                    math.exp(i.lo) if i.defined else math.nan,
                    math.exp(i.hi) if i.defined else math.nan, i.n, i.total, i.sd)


def equivalence(ci: Interval, margin: float, center: float = 0.0) -> str:
    """Two-sided equivalence by the confidence-interval rule.

    supported: the whole interval lies in [center - margin, center + margin];
    not supported: the whole interval lies outside it (all above or all below);
    inconclusive: the interval straddles a margin, or there is no interval (n < 2).
    """
    if not ci.defined:
        return INCONCLUSIVE
    lo, hi = center - margin, center + margin
    if lo <= ci.lo and ci.hi <= hi:
        return SUPPORTED
    if ci.lo > hi or ci.hi < lo:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def at_least(ci: Interval, threshold: float) -> str:
    """One-sided rule: supported if the whole interval is >= threshold, not supported if the
    whole interval is below it, else inconclusive."""
    if not ci.defined:
        return INCONCLUSIVE
    if ci.lo >= threshold:
        return SUPPORTED
    if ci.hi < threshold:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """A claim over several cells: not supported if any cell is, supported if all are."""
    if not verdicts:
        return INCONCLUSIVE
    if NOT_SUPPORTED in verdicts:
        return NOT_SUPPORTED
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    return INCONCLUSIVE


def slope_fit(x: Sequence[float], y: Sequence[float],
              confidence: float = CONFIDENCE) -> dict[str, float]:
    """Least-squares line of log10 y on log10 x (``scipy.stats.linregress``): slope with its
    t interval (n - 2 degrees of freedom), intercept and r^2."""
    lx, ly = np.log10(np.asarray(x, float)), np.log10(np.asarray(y, float))
    ok = np.isfinite(lx) & np.isfinite(ly)
    lx, ly = lx[ok], ly[ok]
    if lx.size < 3:
        return {"slope": math.nan, "lo": math.nan, "hi": math.nan, "intercept": math.nan,
                "r2": math.nan, "n": int(lx.size)}
    r = sps.linregress(lx, ly)
    t = float(sps.t.ppf(0.5 + confidence / 2, lx.size - 2))
    return {"slope": float(r.slope), "lo": float(r.slope - t * r.stderr),
            "hi": float(r.slope + t * r.stderr), "intercept": float(r.intercept),
            "r2": float(r.rvalue ** 2), "n": int(lx.size)}


def fit_one_constant(shape: Sequence[float], y: Sequence[float]) -> dict[str, object]:
    """Fit y = c * shape with one constant c by least squares on the logs.

    log c = mean(log y - log shape); residuals are log10(y / (c * shape)) per point (0 = on
    the curve, 0.3 = a factor 2 above). Points with non-positive values are left out.
    """
    s, v = np.asarray(shape, float), np.asarray(y, float)
    ok = np.isfinite(s) & np.isfinite(v) & (s > 0) & (v > 0)
    if not ok.any():
        return {"c": math.nan, "residuals": [math.nan] * len(s), "used": ok.tolist()}
    log_c = float(np.mean(np.log(v[ok]) - np.log(s[ok])))
    c = math.exp(log_c)
    res = [float(math.log10(vi / (c * si))) if k else math.nan
           for vi, si, k in zip(v, s, ok)]
    return {"c": c, "residuals": res, "used": ok.tolist()}


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Spearman rank correlation with its two-sided p value (``scipy.stats.spearmanr``)."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return {"rho": math.nan, "p": math.nan, "n": int(ok.sum())}
    r = sps.spearmanr(a[ok], b[ok])
    return {"rho": float(r.statistic), "p": float(r.pvalue), "n": int(ok.sum())}
