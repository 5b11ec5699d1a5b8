"""Queue knee (U_work) and collapse point, exactly as SPEC.md defines them."""

from __future__ import annotations

from typing import Sequence

from kvharness.clock import describe, wall_ms

STABLE_RATIO = 2.0
COLLAPSE_TTFT_P99_MS = 1000.0  # SPEC's collapse limit, in the stack's own time (kvharness.clock)


def collapse_limit_wall_ms(step: dict, limit_ms: float = COLLAPSE_TTFT_P99_MS) -> float:
    """The collapse limit (stack time) as the wall ms a step's measured p99 is compared with: divided
    by the step's ``speedup`` (a simulated stack's; 1 when the step has none)."""
    return wall_ms(limit_ms, step.get("speedup") or 1.0)


def over_collapse_limit(step: dict, limit_ms: float = COLLAPSE_TTFT_P99_MS) -> bool:
    """The step's measured p99 TTFT exceeds the collapse limit converted to wall time."""
    p99 = step.get("ttft_ms_p99")
    return p99 is not None and p99 > collapse_limit_wall_ms(step, limit_ms)


def is_stable(p50: float | None, p99: float | None, ratio: float = STABLE_RATIO) -> bool:
    """p99 TTFT <= ratio x p50 TTFT; a step without both percentiles is not stable."""
    return p50 is not None and p99 is not None and p50 > 0 and p99 <= ratio * p50


def step_stability(step: dict, ratio: float = STABLE_RATIO) -> bool | None:
    """A step's stability: from its requests (``_ttft_ms``) by :func:`kvharness.stats.ratio_bound_decision`
    (True / False / None = undecided by the data) when it carries them, else the point rule of
    :func:`is_stable` on its p50/p99 (True / False)."""
    samples = step.get("_ttft_ms")
    if samples is not None:
        from kvharness.stats import ratio_bound_decision

        return ratio_bound_decision(samples, ratio)["stable"]
    return is_stable(step.get("ttft_ms_p50"), step.get("ttft_ms_p99"), ratio)


def u_work(steps: Sequence[dict], ratio: float = STABLE_RATIO) -> dict:
    """U_work of one stack from its concurrency sweep.

    ``steps``: dicts with ``concurrency`` and either their requests' TTFTs (``_ttft_ms``) or ``ttft_ms_p50``
    and ``ttft_ms_p99``. A step is *stable* when p99 <= ratio x p50, *unstable* when p99 > ratio x p50,
    and *undecided* when its samples cannot tell (:func:`step_stability`). The **knee** is the first two
    consecutive unstable steps. U_work is the highest swept concurrency below the knee at which the step
    and the next one are both stable; ``u_work_high`` the highest at which neither is unstable (the two
    differ when undecided steps lie between: U_work is then known only to lie in [u_work, u_work_high],
    ``undecided`` lists those steps). One unstable blip is stepped over; past the knee a saturated closed
    loop queues every request about equally, so the ratio can fall back under 2 while the server is long
    past usable, and those steps never count. When the sweep is stable to its end, U_work is the last step,
    flagged ``censored``. When no step qualifies, U_work is None.
    """
    ordered = sorted(steps, key=lambda s: s["concurrency"])
    stable = [step_stability(s, ratio) for s in ordered]
    knee = next((i for i in range(len(ordered) - 1) if stable[i] is False and stable[i + 1] is False), None)
    end = knee if knee is not None else len(ordered)
    result = {"u_work": None, "u_work_high": None, "censored": False, "n_steps": len(ordered),
              "knee_at": ordered[knee]["concurrency"] if knee is not None else None,
              "stable": {s["concurrency"]: ok for s, ok in zip(ordered, stable)},
              "undecided": [s["concurrency"] for s, ok in zip(ordered[:end], stable[:end]) if ok is None]}
    possible = [i for i in range(end - 1) if stable[i] is not False and stable[i + 1] is not False]
    if knee is None and len(ordered) >= 2 and stable[-1] is not False and stable[-2] is not False:
        result["u_work_high"] = ordered[-1]["concurrency"]
        if stable[-1] and stable[-2]:
            result.update(u_work=ordered[-1]["concurrency"], censored=True)
            return result
    elif possible:
        result["u_work_high"] = ordered[possible[-1]]["concurrency"]
    for i in range(end - 2, -1, -1):
        if stable[i] and stable[i + 1]:
            result["u_work"] = ordered[i]["concurrency"]
            break
    return result


GROWTH_MARGIN = 1.5        # p99 grows > 1.5x faster than the load, step over step ...
GROWTH_STEPS = 2           # ... for two consecutive steps: "grows without bound"
THROUGHPUT_FALL = 0.9      # admitted throughput below 90 % of the best so far


def _numeric(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _ordered(steps: Sequence[dict], axis: str, order: Sequence | None) -> list[dict]:
    if order is not None:
        rank = {v: i for i, v in enumerate(order)}
        return sorted(steps, key=lambda s: rank.get(s[axis], len(rank)))
    if all(_numeric(s[axis]) is not None for s in steps):
        return sorted(steps, key=lambda s: float(s[axis]))
    return list(steps)  # categorical axis without an order: the order given


def growth_factors(steps: Sequence[dict], axis: str = "concurrency", order: Sequence | None = None) -> list[float | None]:
    """Per step (in load order): (p99_i / p99_{i-1}) / (x_i / x_{i-1}), how much faster than the load p99 grew
    from the previous step. The load ratio is 1 on a categorical axis (profile: comfy -> spill -> stress).
    None for the first step or where a p99 is missing."""
    ordered = _ordered(steps, axis, order)
    out: list[float | None] = [None]
    for prev, cur in zip(ordered, ordered[1:]):
        a, b = prev.get("ttft_ms_p99"), cur.get("ttft_ms_p99")
        xa, xb = _numeric(prev[axis]), _numeric(cur[axis])
        load = xb / xa if xa and xb else 1.0
        out.append((b / a) / load if a and b and load > 0 else None)
    return out


def unbounded_growth(steps: Sequence[dict], axis: str = "concurrency", order: Sequence | None = None,
                     margin: float = GROWTH_MARGIN, run: int = GROWTH_STEPS) -> int | None:
    """Index (in load order) of the first step where p99 TTFT starts growing without bound: the first of
    ``run`` consecutive steps whose growth factor (see ``growth_factors``) exceeds ``margin``. A system that
    keeps up grows its tail at most in proportion to the load; a queue that never drains grows it faster
    at every further step. None when no such run exists."""
    g = growth_factors(steps, axis, order)
    for i in range(1, len(g) - run + 1):
        if all(x is not None and x > margin for x in g[i:i + run]):
            return i
    return None


def collapse_point(steps: Sequence[dict], limit_ms: float = COLLAPSE_TTFT_P99_MS, axis: str = "concurrency",
                   order: Sequence | None = None, throughput_key: str = "req_s",
                   growth_margin: float = GROWTH_MARGIN) -> dict:
    """The first step along ``axis`` (concurrency, context_tokens, profile, ...) at which the system collapses,
    for one of SPEC's three causes, checked at each step in load order:

    * ``p99``: p99 TTFT > ``limit_ms`` (stated in the stack's time, compared in wall time: divided by the
      step's ``speedup``, :func:`collapse_limit_wall_ms`);
    * ``throughput``: admitted throughput falls: errors (rejections, timeouts, OOM: any failed request, by
      class when the step has ``error_classes``), preemptions (``preemptions`` > 0), an admission limit (the
      engine's running-requests gauge never reached the offered ``concurrency`` while requests waited:
      ``running_max`` / ``waiting_max``), or ``throughput_key`` below 90 % of the best step so far (use prompt
      tokens/s on a context axis, where req/s falls by design);
    * ``unbounded``: p99 grows without bound (``unbounded_growth``); the collapse is the first step of the run.

    ``order`` ranks a categorical axis. Returns collapse_at (None = no collapse within the sweep,
    ``censored``), collapse_cause, collapse_reason and the index of the step.
    """
    ordered = _ordered(steps, axis, order)
    run_start = unbounded_growth(ordered, axis, order, growth_margin)
    growth = growth_factors(ordered, axis, order)
    best = 0.0
    for i, s in enumerate(ordered):
        found = _step_collapse(s, limit_ms, throughput_key, best)
        if found is None and run_start == i:
            found = ("unbounded", f"p99 TTFT grows {growth[i]:.2f}x and {growth[i + 1]:.2f}x faster than {axis} "
                                  f"over the next two steps (> {growth_margin:g}x: grows without bound)")
        if found is not None:
            return {"collapse_at": s[axis], "collapse_cause": found[0], "collapse_reason": found[1],
                    "collapse_index": i, "censored": False}
        best = max(best, _numeric(s.get(throughput_key)) or 0.0)
    return {"collapse_at": None, "collapse_cause": None, "collapse_reason": None, "collapse_index": None,
            "censored": bool(ordered)}


def step_causes(s: dict, limit_ms: float = COLLAPSE_TTFT_P99_MS) -> list[str]:
    """Every reason one cell, on its own, counts as collapsed (for feasibility maps): p99 over the limit,
    preemptions, rejections, timeouts, other errors."""
    why = []
    if over_collapse_limit(s, limit_ms):
        why.append(f"p99 > {describe(limit_ms, s.get('speedup'))}")
    if (s.get("preemptions") or 0) > 0:
        why.append("preemption")
    if _admission_limited(s):
        why.append(f"admission limit (at most {s['running_max']:g} of {s['concurrency']} users running)")
    classes = s.get("error_classes") or {}
    if classes:
        for cls, n in sorted(classes.items()):
            why.append(f"{_error_kind(cls)} ({n})")
    elif (s.get("n_errors") or 0) > 0:
        why.append(f"errors ({s['n_errors']})")
    if s.get("status") == "failed":
        why.append("cell failed")
    return why


def _admission_limited(s: dict) -> bool:
    """The engine never held all offered users at once while requests waited (its running-requests gauge,
    ``running_max``, stayed below the closed loop's ``concurrency``): it admits less work than offered."""
    run, conc = s.get("running_max"), s.get("concurrency")
    return (run is not None and isinstance(conc, int) and run < conc and (s.get("waiting_max") or 0) > 0)


def _error_kind(cls: str) -> str:
    c = cls.lower()
    if "timeout" in c:
        return "timeout"
    if c.startswith(("http_4", "http_503", "http_429")) or "reject" in c:
        return f"rejection {cls}"
    if "oom" in c or "memory" in c:
        return "out of memory"
    return cls


def _step_collapse(s: dict, limit_ms: float, throughput_key: str, best: float) -> tuple[str, str] | None:
    if over_collapse_limit(s, limit_ms):
        return "p99", f"p99 TTFT {s['ttft_ms_p99']:.4g} ms > {describe(limit_ms, s.get('speedup'))}"
    if (s.get("n_errors") or 0) > 0:
        classes = s.get("error_classes") or {}
        detail = ", ".join(f"{_error_kind(k)} {v}" for k, v in sorted(classes.items())) or "errors"
        return "throughput", f"{s['n_errors']} failed requests ({detail})"
    if (s.get("preemptions") or 0) > 0:
        return "throughput", f"{s['preemptions']:g} preemptions"
    if _admission_limited(s):
        return "throughput", (f"admission limit: at most {s['running_max']:g} of {s['concurrency']} users running at "
                              f"once, up to {s.get('waiting_max') or 0:g} waiting")
    rate = _numeric(s.get(throughput_key))
    if best and rate is not None and rate < THROUGHPUT_FALL * best:
        return "throughput", f"{throughput_key} fell to {rate:.4g} from {best:.4g}"
    return None


# --------------------------------------------------------------------------------- storage knee

STORAGE_KNEE_SHARE = 0.5


def storage_knee(points: Sequence[dict], axis: str, fetch_key: str = "tier2_fetch_ms_p95",
                 ttft_key: str = "ttft_ms_p95", share: float = STORAGE_KNEE_SHARE,
                 bounds: tuple[str, str] | None = None) -> dict:
    """SPEC's storage knee: the first point along ``axis`` where tier-2 fetch p95 >= ``share`` x TTFT p95.

    ``bounds`` names the keys of an interval the fetch p95 is known to lie in (a histogram's bucket,
    ``storage.quantile_bucket``): at a point whose interval straddles ``share`` x TTFT p95 the knee is
    **undecided**, so the knee is reported as the first point where even the lower bound reaches it
    (``knee_at``) and the earliest point it may lie at (``knee_from``: the first reached or undecided one).

    Returns knee_at (None when not reached), knee_from, ``undecided`` (points), ``censored`` ("below" =
    already at the first point, so the knee may lie below the sweep; "above" = not reached by the last
    point with data), n_with_data, the share at every point (``shares``) and a one-line ``note``. With
    no point carrying both values the knee is None, censored None, and the note says so (the caller names
    the method that lacked data).
    """
    ordered = _ordered(points, axis, None)
    shares: list[tuple] = []
    status: list[tuple] = []  # (x, share, "reached" | "undecided" | "below")
    for p in ordered:
        f, t = _numeric(p.get(fetch_key)), _numeric(p.get(ttft_key))
        r = f / t if f is not None and t else None
        shares.append((p[axis], r))
        if r is None:
            continue
        lo, hi = (_numeric(p.get(bounds[0])), _numeric(p.get(bounds[1]))) if bounds else (None, None)
        if lo is None or hi is None:
            lo = hi = f
        state = "reached" if lo / t >= share else "below" if hi / t < share else "undecided"
        status.append((p[axis], r, state))
    out = {"knee_at": None, "knee_from": None, "undecided": [x for x, _, s in status if s == "undecided"],
           "censored": None, "n_with_data": len(status), "shares": shares}
    if not status:
        out["note"] = f"no point has both {fetch_key} and {ttft_key}"
        return out
    unsure = (f"; at {', '.join(str(x) for x in out['undecided'])} the fetch p95's histogram bucket straddles "
              f"{share:.0%} of TTFT p95 (undecided)") if out["undecided"] else ""
    first_maybe = next((i for i, (_, _, s) in enumerate(status) if s != "below"), None)
    if first_maybe is not None:
        out["knee_from"] = status[first_maybe][0]
    for i, (x, r, state) in enumerate(status):
        if state == "reached":
            out.update(knee_at=x, censored="below" if i == 0 else None,
                       note=(f"tier-2 fetch p95 is {r:.1%} of TTFT p95 at {axis} {x}"
                             + (" (the first point with data: the knee may lie below the sweep)" if i == 0 else "")
                             + unsure))
            return out
    top = max(status, key=lambda s: s[1])
    where = (f"the knee lies at or after {axis} {out['knee_from']}, or above the sweep" if out["undecided"]
             else "the knee lies above the sweep, if anywhere")
    out.update(censored="above", note=f"not reached: tier-2 fetch p95 is at most {top[1]:.1%} of TTFT p95 "
                                      f"(at {axis} {top[0]}); {where}" + unsure)
    return out
