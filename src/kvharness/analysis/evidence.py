"""Repetitions into evidence: per-point mean with a 95 % confidence interval, CoV across reps.

Every hypothesis that compares points (H4 fio off/on, H8 A vs B, ...) uses these, so "beyond the
confidence interval" means the same thing everywhere. The interval is Student's t on the repetition
means (the reps are independent launches); with one repetition it is undefined (None) and
:func:`differs` falls back to the two cells' own spread when given.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

# two-sided 95 % Student t quantiles by degrees of freedom (1..30); above 30 the normal 1.96
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]
CI_METHOD = "t"
DEFAULT_METRICS = ("ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99", "tpot_ms_p50", "goodput_req_s", "good_fraction")


def t95(df: int) -> float:
    return _T95[df - 1] if 1 <= df <= len(_T95) else 1.96


def mean_ci(values: Iterable[float | None]) -> dict:
    """{mean, ci_low, ci_high, half_width, n, sd} of the non-missing values (95 %, Student t)."""
    data = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(data)
    if n == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "half_width": None, "n": 0, "sd": None}
    m = sum(data) / n
    if n == 1:
        return {"mean": m, "ci_low": None, "ci_high": None, "half_width": None, "n": 1, "sd": None}
    sd = math.sqrt(sum((x - m) ** 2 for x in data) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return {"mean": m, "ci_low": m - half, "ci_high": m + half, "half_width": half, "n": n, "sd": sd}


def cov(values: Iterable[float | None]) -> float | None:
    """Coefficient of variation (sample sd / mean); None for fewer than 2 values or a zero mean."""
    s = mean_ci(values)
    if s["n"] < 2 or not s["mean"]:
        return None
    return s["sd"] / abs(s["mean"])


def aggregate(rows: Sequence[Mapping], keys: Sequence[str], metrics: Sequence[str] = DEFAULT_METRICS) -> list[dict]:
    """One row per point (the ``keys`` values), over its repetitions: for each metric ``<m>_mean``,
    ``<m>_ci_low``, ``<m>_ci_high``; plus ``n_reps`` and ``ttft_p99_cov`` (CoV of p99 across reps)."""
    groups: dict[tuple, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for point, members in groups.items():
        row: dict = dict(zip(keys, point))
        row["n_reps"] = len(members)
        for m in metrics:
            s = mean_ci(r.get(m) for r in members)
            row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = s["mean"], s["ci_low"], s["ci_high"]
        row["ttft_p99_cov"] = cov(r.get("ttft_ms_p99") for r in members)
        row["ci_method"] = CI_METHOD
        out.append(row)
    return out


def differs(a: Sequence[float | None], b: Sequence[float | None], spread: float | None = None) -> dict:
    """Is the mean of ``b`` different from the mean of ``a`` beyond their confidence intervals?

    With >= 2 reps on both sides: the intervals do not overlap. With one rep: the difference exceeds
    ``spread`` (e.g. the cells' own repetition spread or a documented margin) when given, else unknown.
    Returns {delta, delta_pct, differs (True/False/None), method}.
    """
    sa, sb = mean_ci(a), mean_ci(b)
    if sa["mean"] is None or sb["mean"] is None:
        return {"delta": None, "delta_pct": None, "differs": None, "method": "no data"}
    delta = sb["mean"] - sa["mean"]
    pct = 100.0 * delta / sa["mean"] if sa["mean"] else None
    if sa["n"] >= 2 and sb["n"] >= 2:
        apart = sb["ci_low"] > sa["ci_high"] or sb["ci_high"] < sa["ci_low"]
        return {"delta": delta, "delta_pct": pct, "differs": apart, "method": "95 % t intervals do not overlap"}
    if spread is not None:
        return {"delta": delta, "delta_pct": pct, "differs": abs(delta) > spread, "method": f"|delta| > spread {spread:g}"}
    return {"delta": delta, "delta_pct": pct, "differs": None, "method": "one repetition: no interval"}


def min_samples(q: float) -> int:
    """Successful requests a cell needs before its q-th percentile is reported as meaningful.

    Rule: at least 5 samples beyond the percentile, n >= 5 / (1 - q/100): p50 -> 10, p95 -> 100,
    p99 -> 500. A cell below it is marked (``enough_samples_p99 = False``), never silently reported.
    """
    return int(math.ceil(5.0 / (1.0 - q / 100.0) - 1e-9))


def enough_samples(n_ok: int | None, q: float = 99) -> bool:
    return n_ok is not None and n_ok >= min_samples(q)
