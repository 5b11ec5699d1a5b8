"""Repetitions into points.csv: per point, each metric's mean over its reps with a 95 % t interval and
the CoV of p99 across reps. Descriptive only: the intervals, tests and sample-size rules live in
:mod:`kvharness.stats` (comparisons go through :func:`kvharness.stats.compare`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from kvharness.stats import cov, mean_ci

CI_METHOD = "t"
DEFAULT_METRICS = ("ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99", "tpot_ms_p50", "goodput_req_s", "good_fraction")


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
