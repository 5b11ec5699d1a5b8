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


# =============================================================================================== evidence
# Everything below is the project's one statistics module: sample-size rules, within-cell intervals,
# across-repetition intervals and the A-vs-B comparison. Every method is described, with its source and
# its false-positive rate, in docs/definitions.md ("Statistics"). numpy is imported inside the functions
# that need it, so the load generator's hot path (the summary above) stays free of it.

#: confidence of the sample-size rule and of the within-cell percentile intervals
CONFIDENCE = 0.95
#: MLPerf LoadGen's early-stopping confidence (loadgen/early_stopping.cc uses 0.99, tolerance 0)
EARLY_STOPPING_CONFIDENCE = 0.99
#: equivalence margin of the comparison: "equivalent within +-5 %"
EQUIVALENCE_MARGIN = 0.05
#: bootstrap replicates of every across-repetition interval (seeded: the same data give the same interval)
N_BOOT = 2000
#: power at which the minimum detectable effect is stated (two-sided 5 % test)
MDE_POWER = 0.80
_Z975 = 1.959963984540054
_Z80 = 0.8416212335729143

DIFFERS, EQUIVALENT, INCONCLUSIVE = "differs", "equivalent", "inconclusive"


def samples(row: Mapping, key: str = "_ttft_ms"):
    """A cell row's per-request samples (kvharness.analysis.cells keeps every ok TTFT under ``_ttft_ms``)."""
    value = row.get(key)
    return [] if value is None else value


def min_ok_requests(q: float = 99, confidence: float = CONFIDENCE) -> int:
    """Ok requests a cell needs before its p``q`` has a one-sided ``confidence`` upper bound from order
    statistics: the largest of n samples lies above the true q-quantile with probability 1 - (q/100)^n,
    so n >= ln(1 - confidence) / ln(q/100). p99 -> 299, p95 -> 59, p50 -> 5 (docs/definitions.md)."""
    if not 0 < q < 100:
        raise ValueError(f"percentile q must be within (0, 100), got {q}")
    return int(math.ceil(math.log(1.0 - confidence) / math.log(q / 100.0) - 1e-9))


def enough_samples(n_ok: int | None, q: float = 99) -> bool:
    return n_ok is not None and n_ok >= min_ok_requests(q)


def binom_cdf(k, n: int, p: float):
    """P(Binomial(n, p) <= k) for every k of an int or array (exact: summed log-pmf, numpy)."""
    import numpy as np

    ks = np.arange(n + 1)
    if p <= 0 or p >= 1:
        cdf = np.ones(n + 1) if p <= 0 else (ks >= n).astype(float)
    else:
        lg = np.array([math.lgamma(i + 1) for i in range(n + 1)]) if n < 2000 else _lgamma_range(n)
        logpmf = lg[n] - lg - lg[::-1] + ks * math.log(p) + (n - ks) * math.log1p(-p)
        cdf = np.minimum(np.cumsum(np.exp(logpmf - logpmf.max())) * math.exp(logpmf.max()), 1.0)
    k = np.asarray(k)
    out = np.where(k < 0, 0.0, cdf[np.clip(k, 0, n)])
    return float(out) if out.ndim == 0 else out


def _lgamma_range(n: int):
    """lgamma(i + 1) = ln(i!) for i = 0..n, as a cumulative sum of logs (fast for large n)."""
    import numpy as np

    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=float)))])


def _clean_sorted(values):
    """:func:`_sorted_clean` as a numpy array (the interval functions index and search it)."""
    import numpy as np

    return np.asarray(_sorted_clean(values), dtype=float)


def order_stat_ci(values, q: float, confidence: float = CONFIDENCE) -> dict:
    """Distribution-free two-sided interval for the q-th percentile: [x_(l), x_(u)] (1-based ranks) with
    B ~ Binomial(n, q/100) the count of samples below the true quantile, l the largest rank with
    P(B <= l - 1) <= alpha/2 and u the smallest with P(B >= u) <= alpha/2; coverage >= ``confidence``.
    A side with no such rank is None (too few samples). Also ``upper``: the one-sided ``confidence``
    upper bound x_(r), r the smallest rank with P(B >= r) <= 1 - confidence."""
    data = _clean_sorted(values)
    n = len(data)
    out = {"n": n, "low": None, "high": None, "rank_low": None, "rank_high": None, "upper": None,
           "coverage": None, "method": "order statistics (binomial)"}
    if n == 0:
        return out
    import numpy as np

    p, alpha = q / 100.0, 1.0 - confidence
    cdf = binom_cdf(np.arange(-1, n + 1), n, p)          # cdf[i + 1] = P(B <= i)
    below = np.nonzero(cdf[:-1] <= alpha / 2)[0]         # P(B <= l - 1) <= alpha/2  -> rank l = index
    above = np.nonzero(1.0 - cdf[:-1] <= alpha / 2)[0]   # P(B >= u) = 1 - P(B <= u - 1) -> rank u = index
    upper = np.nonzero(1.0 - cdf[:-1] <= alpha)[0]
    if below.size and below[-1] >= 1:
        out["rank_low"] = int(below[-1])
        out["low"] = float(data[out["rank_low"] - 1])
    if above.size and above[0] <= n:
        out["rank_high"] = int(above[0])
        out["high"] = float(data[out["rank_high"] - 1])
    if upper.size and 1 <= upper[0] <= n:
        out["upper"] = float(data[int(upper[0]) - 1])
    if out["rank_low"] and out["rank_high"]:
        out["coverage"] = float(cdf[out["rank_high"]] - cdf[out["rank_low"]])  # P(l <= B <= u - 1)
    return out


def early_stopping_estimate(values, q: float = 99, confidence: float = EARLY_STOPPING_CONFIDENCE) -> dict:
    """MLPerf LoadGen's early-stopping percentile estimate (loadgen/early_stopping.cc, SingleStream):
    the largest t such that seeing at most t of n samples above the true q-quantile has probability
    <= 1 - confidence (binomial with p = 1 - q/100); the estimate is the (n - t + 1)-th smallest sample,
    i.e. the t - 1 highest are discarded. None with fewer samples than the rule needs (t >= 1)."""
    data = _clean_sorted(values)
    n = len(data)
    out = {"n": n, "estimate": None, "discarded": None, "min_n": None}
    p_over = 1.0 - q / 100.0
    out["min_n"] = _early_stopping_min_n(p_over, confidence)
    if n < out["min_n"]:
        return out
    import numpy as np

    cdf = binom_cdf(np.arange(0, n + 1), n, p_over)   # P(#over <= t)
    ok = np.nonzero(cdf <= 1.0 - confidence)[0]
    t = int(ok[-1]) if ok.size else 0
    if t < 1:
        return out
    out.update(estimate=float(data[n - t]), discarded=t - 1)
    return out


def _early_stopping_min_n(p_over: float, confidence: float) -> int:
    """Smallest n with P(Binomial(n, p_over) <= 1) <= 1 - confidence (LoadGen's h_min(t=1) + 1)."""
    n = max(2, int(math.log(1 - confidence) / math.log1p(-p_over)))
    while (1 - p_over) ** n + n * p_over * (1 - p_over) ** (n - 1) > 1 - confidence:
        n += 1
    return n


# ------------------------------------------------------------------------------ across repetitions

def _reps(reps) -> list:
    out = []
    for r in reps:
        arr = _clean_sorted(r)
        if arr.size:
            out.append(arr)
    return out


def bootstrap_percentiles(reps, q: float, n_boot: int = N_BOOT, seed: int | Sequence[int] = 0, rng=None):
    """Hierarchical bootstrap of the q-th percentile of pooled repetitions: each replicate draws the reps
    with replacement, then the requests inside every drawn rep with replacement, and takes the percentile
    of the pooled draw. Vectorised without materialising a draw: the k-th smallest of N draws from the
    replicate's mixture of reps is F*^-1(U), U ~ Beta(k, N - k + 1), F* the mixture's step CDF (the
    requests are drawn from the replicate's reps as one pool, not rep by rep: slightly wider, never
    narrower). Replicates sharing a draw of reps share one CDF. Returns ``n_boot`` values (numpy)."""
    import numpy as np

    reps = _reps(reps)
    if not reps:
        return np.full(n_boot, np.nan)
    rng = rng if rng is not None else np.random.default_rng(seed)
    R = len(reps)
    sizes = np.array([len(r) for r in reps])
    xs = np.concatenate(reps)
    order = np.argsort(xs, kind="stable")
    xs = xs[order]
    labels = np.repeat(np.arange(R), sizes)[order]
    counts = np.zeros((R, len(xs)), dtype=np.float64)
    for r in range(R):
        counts[r] = np.cumsum(labels == r)               # rep r's values at or below xs[j]
    picks = rng.integers(0, R, size=(n_boot, R))
    mult = np.zeros((n_boot, R), dtype=np.int64)
    np.add.at(mult, (np.repeat(np.arange(n_boot), R), picks.ravel()), 1)
    uniq, inverse = np.unique(mult, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    out = np.empty(n_boot)
    for u, m in enumerate(uniq):
        sel = np.nonzero(inverse == u)[0]
        total = int(m @ sizes)
        cdf = (m @ counts) / total
        k = min(max(int(math.ceil(q / 100.0 * total)), 1), total)
        draws = rng.beta(k, total - k + 1, size=sel.size)
        idx = np.minimum(np.searchsorted(cdf, draws, side="left"), len(xs) - 1)
        out[sel] = xs[idx]
    return out


def pooled_percentile(reps, q: float) -> float | None:
    reps = _reps(reps)
    if not reps:
        return None
    import numpy as np

    return float(np.percentile(np.concatenate(reps), q))


def percentile_interval(reps, q: float, confidence: float = CONFIDENCE, n_boot: int = N_BOOT, seed=0) -> dict:
    """Point estimate (pooled percentile) and hierarchical-bootstrap percentile interval across reps."""
    import numpy as np

    est = pooled_percentile(reps, q)
    if est is None:
        return {"estimate": None, "low": None, "high": None, "n_reps": 0, "n": 0}
    boot = bootstrap_percentiles(reps, q, n_boot, seed)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [a, 1 - a])
    return {"estimate": est, "low": float(lo), "high": float(hi), "n_reps": len(_reps(reps)),
            "n": int(sum(len(r) for r in _reps(reps)))}


def ratio_bootstrap(reps_a, reps_b, q: float, n_boot: int = N_BOOT, seed=0):
    """Bootstrap replicates of p_q(B) / p_q(A), A and B resampled independently (own seeded streams)."""
    import numpy as np

    sa, sb = np.random.SeedSequence(seed).spawn(2)
    a = bootstrap_percentiles(reps_a, q, n_boot, rng=np.random.default_rng(sa))
    b = bootstrap_percentiles(reps_b, q, n_boot, rng=np.random.default_rng(sb))
    with np.errstate(divide="ignore", invalid="ignore"):
        return b / a


def compare(reps_a, reps_b, q: float = 99, margin: float = EQUIVALENCE_MARGIN, n_boot: int = N_BOOT,
            seed=0, min_n: int | None = None) -> dict:
    """B vs A on the q-th percentile, three outcomes (docs/definitions.md):

    * ``equivalent``: the 90 % interval of B/A lies inside [1 - margin, 1 + margin] (two one-sided
      tests at 5 % each); tested first, so a difference smaller than the margin reads as equivalent;
    * ``differs``: the 95 % interval of B/A excludes 1;
    * ``inconclusive``: neither; ``mde_pct`` names the smallest difference this much data detects with
      80 % power in a two-sided 5 % test (from the interval's width on the log scale).

    ``reps_a``/``reps_b``: one sequence of per-request values per repetition. Any rep with fewer than
    ``min_n`` values (default: :func:`min_ok_requests`) makes the outcome ``inconclusive`` with
    ``short`` naming the sides that fell short: such a percentile is never the basis of a verdict."""
    import numpy as np

    ra, rb = _reps(reps_a), _reps(reps_b)
    need = min_ok_requests(q) if min_n is None else min_n
    out = {"ratio": None, "ci95_low": None, "ci95_high": None, "ci90_low": None, "ci90_high": None,
           "mde_pct": None, "outcome": INCONCLUSIVE, "n_reps_a": len(ra), "n_reps_b": len(rb),
           "n_a": int(sum(map(len, ra))), "n_b": int(sum(map(len, rb))), "short": [],
           "method": f"hierarchical bootstrap ({n_boot} replicates) of p{q:g}(B)/p{q:g}(A)"}
    if not ra or not rb:
        out["short"] = [s for s, r in (("A", ra), ("B", rb)) if not r]
        return out
    pa, pb = pooled_percentile(ra, q), pooled_percentile(rb, q)
    out["ratio"] = pb / pa if pa else None
    ratios = ratio_bootstrap(ra, rb, q, n_boot, seed)
    ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
    if out["ratio"] is None or ratios.size < n_boot // 2:
        return out
    lo95, lo90, hi90, hi95 = np.quantile(ratios, [0.025, 0.05, 0.95, 0.975])
    out.update(ci95_low=float(lo95), ci95_high=float(hi95), ci90_low=float(lo90), ci90_high=float(hi90))
    se = (math.log(hi95) - math.log(lo95)) / (2 * _Z975)
    out["mde_pct"] = 100.0 * (math.exp((_Z975 + _Z80) * se) - 1.0)
    out["short"] = [s for s, r in (("A", ra), ("B", rb)) if min(map(len, r)) < need]
    if out["short"]:
        return out
    if 1 - margin <= lo90 and hi90 <= 1 + margin:
        out["outcome"] = EQUIVALENT
    elif lo95 > 1 or hi95 < 1:
        out["outcome"] = DIFFERS
    return out


# ------------------------------------------------------------------ per-rep summaries (t intervals)

# two-sided 95 % Student t quantiles by degrees of freedom (1..30); above 30 the normal 1.96
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def t95(df: int) -> float:
    return _T95[df - 1] if 1 <= df <= len(_T95) else 1.96


def mean_ci(values: Iterable[float | None]) -> dict:
    """{mean, ci_low, ci_high, half_width, n, sd} of the non-missing values (95 %, Student t): the
    descriptive interval of per-rep numbers in points.csv; comparisons use :func:`compare`."""
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


def rises(before: Iterable[float | None], after: Iterable[float | None], alpha: float = 0.05) -> dict:
    """Did a per-rep quantity (e.g. NVMe r_await) rise? Exact one-sided permutation test of complete
    separation: under "no change" every split of the pooled reps is equally likely, so all ``after``
    values above all ``before`` values has probability 1 / C(n_before + n_after, n_after). ``rises`` is
    True when that happened and that probability is <= ``alpha``, False when it did not, None when the
    reps are too few for any outcome to reach ``alpha`` (e.g. 2 + 2 reps: 1/6)."""
    a = [float(v) for v in before if v is not None]
    b = [float(v) for v in after if v is not None]
    if not a or not b:
        return {"rises": None, "p": None}
    p = 1.0 / math.comb(len(a) + len(b), len(b))
    if p > alpha:
        return {"rises": None, "p": p}
    return {"rises": min(b) > max(a), "p": p}


def ratio_bound_decision(values, ratio: float = 2.0, hi_q: float = 99, lo_q: float = 50,
                         confidence: float = CONFIDENCE) -> dict:
    """Is p``hi_q`` <= ``ratio`` x p``lo_q`` (H0's "stable step"), as far as these samples can decide?

    ``stable`` True when the one-sided ``confidence`` upper bound of p99 is <= ratio x the one-sided lower
    bound of p50 (order statistics), False when the lower bound of p99 is > ratio x the upper bound of
    p50, None (undecided) otherwise, e.g. too few samples for a p99 upper bound (< min_ok_requests)."""
    two_sided = 1 - 2 * (1 - confidence)   # a two-sided 90 % interval = two one-sided 95 % bounds
    hi, lo = order_stat_ci(values, hi_q, two_sided), order_stat_ci(values, lo_q, two_sided)
    out = {"stable": None, "p99_upper": hi["high"], "p99_lower": hi["low"], "p50_lower": lo["low"], "p50_upper": lo["high"]}
    if hi["high"] is not None and lo["low"] is not None and hi["high"] <= ratio * lo["low"]:
        out["stable"] = True
    elif hi["low"] is not None and lo["high"] is not None and hi["low"] > ratio * lo["high"]:
        out["stable"] = False
    return out
