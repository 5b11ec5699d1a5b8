"""One definition per metric: percentiles and the per-run request summary.

Used by the load generator's end-of-run summary and by the analysis, so that a p99 means the same
thing everywhere. Percentiles use linear interpolation between closest ranks (numpy's default,
``method="linear"``), computed without numpy so the hot paths need no heavy import.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

PERCENTILES = (50, 95, 99)


#: above this many values the one sort goes through numpy (same numbers: the interpolation stays ours)
_NUMPY_SORT_FROM = 200_000


def _sorted_clean(values: Sequence[float]):
    if len(values) >= _NUMPY_SORT_FROM:
        import numpy

        try:
            arr = numpy.asarray(values, dtype=float)  # fails on a None: then filter in Python first
        except (TypeError, ValueError):
            arr = numpy.asarray([v for v in values if v is not None], dtype=float)
        return numpy.sort(arr[~numpy.isnan(arr)])
    data = [v for v in values if v is not None and not math.isnan(v)]
    data.sort()
    return data


def _percentile_sorted(data, q: float) -> float | None:
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    if len(data) == 0:
        return None
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    frac = pos - lo
    return float(data[lo] + (data[hi] - data[lo]) * frac)


def percentile(values: Sequence[float], q: float) -> float | None:
    """q-th percentile (0..100) of ``values`` by linear interpolation; None when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    return _percentile_sorted(_sorted_clean(values), q)


def mean(values: Sequence[float]) -> float | None:
    data = [v for v in values if v is not None]
    return float(sum(data) / len(data)) if data else None


def distribution(values: Sequence[float], prefix: str) -> dict[str, float | None]:
    """``{prefix}_mean``, ``{prefix}_p50``, ``{prefix}_p95``, ``{prefix}_p99`` of ``values``."""
    out: dict[str, float | None] = {f"{prefix}_mean": mean(values)}
    data = _sorted_clean(values)  # one sort for every percentile
    for q in PERCENTILES:
        out[f"{prefix}_p{q}"] = _percentile_sorted(data, q)
    return out


def tpot_ms(e2e_ms: float, ttft_ms: float, output_tokens: int | None) -> float | None:
    """TPOT = (E2E - TTFT) / (output tokens - 1); None for fewer than 2 tokens."""
    if output_tokens is None or output_tokens < 2 or e2e_ms is None or ttft_ms is None:
        return None
    return (e2e_ms - ttft_ms) / (output_tokens - 1)


def is_ok(record: Mapping) -> bool:
    return record.get("rc") == 0 and record.get("error_class") in (None, "")


def meets_slo(record: Mapping, slo: Mapping[str, float] | None) -> bool:
    """A request is good when it succeeded and meets every SLO given (ms): ttft, tpot, e2e."""
    if not is_ok(record):
        return False
    for key, field in (("ttft_ms", "lat_ttft_ms"), ("tpot_ms", "lat_tpot_ms"), ("e2e_ms", "lat_e2e_ms")):
        limit = (slo or {}).get(key)
        if limit is None:
            continue
        value = record.get(field)
        if value is None or value > limit:
            return False
    return True


def summarize_requests(
    records: Iterable[Mapping],
    duration_s: float | None = None,
    slo: Mapping[str, float] | None = None,
) -> dict:
    """Aggregate per-request records (metrics.jsonl schema) into one flat summary row.

    ``duration_s`` defaults to first scheduled send -> last completion (from ``sched_ns``/``end_ns``).
    Error rate counts every non-ok request; goodput = requests meeting every SLO / duration, and
    errors count against ``good_fraction``.
    """
    recs = list(records)
    ok = [r for r in recs if is_ok(r)]
    errors = [r for r in recs if not is_ok(r)]
    if duration_s is None:
        starts = [r["sched_ns"] for r in recs if r.get("sched_ns") is not None]
        ends = [r["end_ns"] for r in recs if r.get("end_ns") is not None]
        duration_s = (max(ends) - min(starts)) / 1e9 if starts and ends else None
    out: dict = {
        "n_requests": len(recs),
        "n_ok": len(ok),
        "n_errors": len(errors),
        "error_rate": (len(errors) / len(recs)) if recs else None,
        "duration_s": duration_s,
    }
    error_classes: dict[str, int] = {}
    for r in errors:
        cls = r.get("error_class") or f"rc_{r.get('rc')}"
        error_classes[cls] = error_classes.get(cls, 0) + 1
    out["error_classes"] = error_classes
    out_tokens = sum(int(r.get("output_tokens") or 0) for r in ok)
    out["output_tokens"] = out_tokens
    rate_ok = duration_s is not None and duration_s > 0
    out["req_s"] = len(ok) / duration_s if rate_ok else None
    out["output_tok_s"] = out_tokens / duration_s if rate_ok else None
    out.update(distribution([r["lat_ttft_ms"] for r in ok if r.get("lat_ttft_ms") is not None], "ttft_ms"))
    out.update(distribution([r["lat_e2e_ms"] for r in ok if r.get("lat_e2e_ms") is not None], "e2e_ms"))
    out.update(distribution([r["lat_tpot_ms"] for r in ok if r.get("lat_tpot_ms") is not None], "tpot_ms"))
    itl: list[float] = []
    for r in ok:
        itl.extend(r.get("itl_ms") or [])
    out.update(distribution(itl, "itl_ms"))
    good = [r for r in recs if meets_slo(r, slo)]
    out["goodput_req_s"] = len(good) / duration_s if rate_ok else None
    out["good_fraction"] = (len(good) / len(recs)) if recs else None
    prompt = sum(int(r.get("prompt_tokens") or 0) for r in ok)
    cached = sum(int(r.get("cached_tokens") or 0) for r in ok)
    out["kv_hit_pct"] = (100.0 * cached / prompt) if prompt else None
    return out


def pct_delta(value: float | None, reference: float | None) -> float | None:
    """Percent change of ``value`` against ``reference`` (None when either is missing or ref is 0)."""
    if value is None or reference in (None, 0):
        return None
    return 100.0 * (value - reference) / reference
