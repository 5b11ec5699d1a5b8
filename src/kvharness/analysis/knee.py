"""Queue knee (U_work) and collapse point, exactly as SPEC.md defines them."""

from __future__ import annotations

from typing import Sequence

STABLE_RATIO = 2.0
COLLAPSE_TTFT_P99_MS = 1000.0


def is_stable(p50: float | None, p99: float | None, ratio: float = STABLE_RATIO) -> bool:
    """p99 TTFT <= ratio x p50 TTFT; a step without both percentiles is not stable."""
    return p50 is not None and p99 is not None and p50 > 0 and p99 <= ratio * p50


def u_work(steps: Sequence[dict], ratio: float = STABLE_RATIO) -> dict:
    """U_work of one stack from its concurrency sweep.

    ``steps``: dicts with ``concurrency``, ``ttft_ms_p50``, ``ttft_ms_p99``. A step is *stable* when
    p99 <= ratio x p50. U_work is the highest swept concurrency at which the step and the next one are
    both stable, searched below the **knee** = the first two consecutive unstable steps. One unstable
    blip is stepped over; past the knee a saturated closed loop queues every request about equally, so
    the ratio can fall back under 2 while the server is long past usable, and those steps never count.
    When the sweep is stable to its end, U_work is the last step, flagged ``censored`` (the knee lies
    beyond the sweep). When no step qualifies, U_work is None.
    """
    ordered = sorted(steps, key=lambda s: s["concurrency"])
    stable = [is_stable(s.get("ttft_ms_p50"), s.get("ttft_ms_p99"), ratio) for s in ordered]
    knee = next((i for i in range(len(ordered) - 1) if not stable[i] and not stable[i + 1]), None)
    result = {"u_work": None, "censored": False, "n_steps": len(ordered),
              "knee_at": ordered[knee]["concurrency"] if knee is not None else None,
              "stable": {s["concurrency"]: ok for s, ok in zip(ordered, stable)}}
    end = knee if knee is not None else len(ordered)
    if knee is None and len(ordered) >= 2 and stable[-1] and stable[-2]:
        result.update(u_work=ordered[-1]["concurrency"], censored=True)
        return result
    for i in range(end - 2, -1, -1):
        if stable[i] and stable[i + 1]:
            result["u_work"] = ordered[i]["concurrency"]
            break
    return result


def collapse_point(steps: Sequence[dict], limit_ms: float = COLLAPSE_TTFT_P99_MS) -> dict:
    """First load with p99 TTFT > limit, or with admitted throughput falling (errors or lower req/s)."""
    ordered = sorted(steps, key=lambda s: s["concurrency"])
    best_rate = 0.0
    for s in ordered:
        p99 = s.get("ttft_ms_p99")
        if p99 is not None and p99 > limit_ms:
            return {"collapse_at": s["concurrency"], "collapse_reason": f"p99 TTFT {p99:.0f} ms > {limit_ms:.0f} ms"}
        if (s.get("n_errors") or 0) > 0:
            return {"collapse_at": s["concurrency"], "collapse_reason": f"{s['n_errors']} errors"}
        rate = s.get("req_s") or 0.0
        if best_rate and rate < 0.9 * best_rate:
            return {"collapse_at": s["concurrency"], "collapse_reason": f"req/s fell to {rate:.1f} from {best_rate:.1f}"}
        best_rate = max(best_rate, rate)
    return {"collapse_at": None, "collapse_reason": None}
