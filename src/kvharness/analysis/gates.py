"""The plan's quality gates (SPEC.md "Quality gates"), one function each, shared by every hypothesis.

Each returns a :class:`~kvharness.analysis.registry.Gate`: pass/fail (None = does not apply here, or
no data), the measured value and the limit, so a reader sees how far from the line a result is.

| gate | function | applies |
|---|---|---|
| >= 95 % of 200 ms windows have samples from every source | :func:`alignment_gate` | every cell |
| enough successful requests for the percentile reported (p99: >= 299) | :func:`samples_gate` | every cell |
| CoV of p99 TTFT across repetitions < 10 % | :func:`cov_p99_gate` | points with >= 2 reps |
| p99 reproducible within +-5 % (each rep's p99 vs the point's mean) | :func:`reproducible_p99_gate` | points with >= 2 reps |
| Stack A's NVMe reads within +-10 % of idle | :func:`nvme_idle_gate` | H2A (the caller passes load and idle read rates) |
| Stack B tier-2 hits >= 20 % near its knee | :func:`tier2_hits_gate` | H2B (the caller passes the knee cell's fraction) |

The first four are evaluated by the runner (``kvharness.analysis.run``) for every hypothesis, on its
cells and its ``points.csv``; the last two need a hypothesis's own notion of "idle" and "near the knee",
so their authors call them from their ``gates`` function, reading the cells with
:func:`nvme_read_mbs` and :func:`tier2_hit_fraction`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

from kvharness.stats import mean_ci, min_ok_requests
from kvharness.analysis.registry import Gate
from kvharness.cellfiles import DYNKV_JSONL, SYSMON_JSONL

ALIGNMENT_LIMIT = 0.95
COV_P99_LIMIT = 0.10
REPRODUCIBLE_P99_PCT = 5.0
NVME_IDLE_PCT = 10.0
NVME_IDLE_FLOOR_MBS = 1.0  # below this a read rate is the device's noise floor: +-10 % of ~0 means nothing
TIER2_HITS_LIMIT = 0.20


def _pct(fraction: float | None) -> float | None:
    """A fraction as the percent the gate's limit is written in (value and limit in the same unit)."""
    return None if fraction is None else round(100.0 * fraction, 2)


def _pct_limit(op: str, fraction: float) -> str:
    return f"{op} {100.0 * fraction:g} %"


def _point_label(point: Mapping, keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={point.get(k)}" for k in keys)


def alignment_gate(rows: Iterable[Mapping], limit: float = ALIGNMENT_LIMIT) -> Gate:
    """Every cell's telemetry covers >= ``limit`` of its sampling windows with every source.

    ``rows``: cell rows (``alignment`` from the cell's collector summary). Value: the worst cell's share, in %."""
    rows = list(rows)
    values = [(r.get("alignment"), r.get("cell")) for r in rows]
    known = [(v, c) for v, c in values if v is not None]
    name = "telemetry alignment (windows with every source)"
    if not rows:
        return Gate(name, None, None, _pct_limit(">=", limit), "no cell")
    if len(known) < len(values):
        missing = [c for v, c in values if v is None]
        return Gate(name, False, _pct(min((v for v, _ in known), default=None)), _pct_limit(">=", limit),
                    f"{len(missing)} cell(s) without a collector summary (e.g. {missing[0]})")
    worst, cell = min(known, key=lambda vc: vc[0])
    below = sum(1 for v, _ in known if v < limit)
    note = f"worst cell {cell}" + (f"; {below} of {len(known)} cells below" if below else "")
    return Gate(name, worst >= limit, _pct(worst), _pct_limit(">=", limit), note)


def samples_gate(rows: Iterable[Mapping], q: float = 99) -> Gate:
    """Every cell has enough successful requests for its p``q`` (:func:`kvharness.stats.min_ok_requests`)."""
    rows = list(rows)
    need = min_ok_requests(q)
    name = f"enough samples for p{q:g}"
    if not rows:
        return Gate(name, None, None, f">= {need} ok requests per cell", "no cell")
    worst = min(rows, key=lambda r: r.get("n_ok") or 0)
    short = sum(1 for r in rows if (r.get("n_ok") or 0) < need)
    note = f"fewest in {worst.get('cell')}" + (f"; {short} of {len(rows)} cells short: their p{q:g} is indicative only" if short else "")
    return Gate(name, short == 0, worst.get("n_ok") or 0, f">= {need} ok requests per cell", note)


def cov_p99_gate(points: Iterable[Mapping], keys: Sequence[str] = (), limit: float = COV_P99_LIMIT) -> Gate:
    """CoV of p99 TTFT across repetitions < ``limit`` at every point with >= 2 reps.

    ``points``: rows of ``points.csv`` / :func:`evidence.aggregate` (``ttft_p99_cov``, ``n_reps``)."""
    name = "CoV of p99 TTFT across reps"
    covs = [(p.get("ttft_p99_cov"), p) for p in points if (p.get("n_reps") or 0) >= 2 and p.get("ttft_p99_cov") is not None]
    if not covs:
        return Gate(name, None, None, _pct_limit("<", limit), "one repetition per point: set reps >= 2 to evaluate")
    worst, point = max(covs, key=lambda cp: cp[0])
    over = sum(1 for c, _ in covs if c >= limit)
    note = f"worst at {_point_label(point, keys)}" + (f"; {over} of {len(covs)} points over" if over else "")
    return Gate(name, worst < limit, _pct(worst), _pct_limit("<", limit), note)


def p99_deviation_pct(values: Iterable[float | None]) -> float | None:
    """Largest |rep p99 - mean| / mean of one point's repetitions, in percent (None below 2 reps)."""
    vals = [float(v) for v in values if v is not None]
    s = mean_ci(vals)
    if s["n"] < 2 or not s["mean"]:
        return None
    return 100.0 * max(abs(v - s["mean"]) for v in vals) / abs(s["mean"])


def reproducible_p99_gate(rows: Iterable[Mapping], keys: Sequence[str], limit_pct: float = REPRODUCIBLE_P99_PCT) -> Gate:
    """Every repetition's p99 TTFT lies within +-``limit_pct`` % of its point's mean p99.

    ``rows``: cell rows; ``keys``: the columns naming a point (the sweep axes except ``rep``, plus stack)."""
    name = "p99 TTFT reproducible across reps"
    groups: dict[tuple, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    devs = []
    for point, members in groups.items():
        d = p99_deviation_pct(m.get("ttft_ms_p99") for m in members)
        if d is not None:
            devs.append((d, dict(zip(keys, point))))
    if not devs:
        return Gate(name, None, None, f"±{limit_pct:g} %", "one repetition per point: set reps >= 2 to evaluate")
    worst, point = max(devs, key=lambda dp: dp[0])
    return Gate(name, worst <= limit_pct, round(worst, 2), f"±{limit_pct:g} %",
                f"worst rep deviation from its point's mean, at {_point_label(point, keys)}")


def nvme_idle_gate(load_mbs: float | None, idle_mbs: float | None, limit_pct: float = NVME_IDLE_PCT,
                   floor_mbs: float = NVME_IDLE_FLOOR_MBS, name: str = "Stack A NVMe reads vs idle") -> Gate:
    """The memory-only stack leaves the NVMe alone: reads under load within +-``limit_pct`` % of idle.

    A read rate at or below ``floor_mbs`` (MiB/s) on both sides is idle by definition (a percentage of
    ~0 is noise); the value is the percent change of the load's read rate against the idle one."""
    limit = f"±{limit_pct:g} % of idle (or both <= {floor_mbs:g} MiB/s)"
    if load_mbs is None or idle_mbs is None:
        return Gate(name, None, None, limit, "no NVMe read rate (no tier-2 device sampled)")
    if load_mbs <= floor_mbs and idle_mbs <= floor_mbs:
        return Gate(name, True, round(load_mbs, 3), limit, f"load {load_mbs:.3f} MiB/s, idle {idle_mbs:.3f} MiB/s: both at the noise floor")
    if idle_mbs <= 0:
        return Gate(name, False, None, limit, f"load reads {load_mbs:.3f} MiB/s against an idle of 0")
    pct = 100.0 * (load_mbs - idle_mbs) / idle_mbs
    return Gate(name, abs(pct) <= limit_pct, round(pct, 2), limit, f"load {load_mbs:.3f} MiB/s, idle {idle_mbs:.3f} MiB/s")


def tier2_hits_gate(hit_fraction: float | None, limit: float = TIER2_HITS_LIMIT, where: str = "",
                    name: str = "Stack B tier-2 hits near its knee") -> Gate:
    """The tiered stack really reads from tier 2 near its knee: hits / (hits + misses) at tier 2 >= ``limit``."""
    if hit_fraction is None:
        return Gate(name, None, None, _pct_limit(">=", limit), "no tier-2 lookups recorded")
    return Gate(name, hit_fraction >= limit, _pct(hit_fraction), _pct_limit(">=", limit), where)


# ---------------------------------------------------------------------------- readers for the last two


def nvme_read_mbs(cell_dir: str | Path) -> float | None:
    """Mean NVMe read rate (MiB/s) of a cell's tier-2 device over its sysmon ticks (None: not sampled)."""
    from kvharness.analysis.records import read_jsonl

    ticks, _ = read_jsonl(Path(cell_dir) / SYSMON_JSONL)
    values = [t["nvme"]["rMBs"] for t in ticks if isinstance(t.get("nvme"), dict) and t["nvme"].get("rMBs") is not None]
    return sum(values) / len(values) if values else None


def tier2_hit_fraction(cell_dir: str | Path) -> float | None:
    """Tier-2 hits / (hits + misses) over a cell's ``dynkv.jsonl`` (per-tick counter deltas)."""
    from kvharness.analysis.records import read_jsonl

    ticks, _ = read_jsonl(Path(cell_dir) / DYNKV_JSONL)
    hits = misses = 0.0
    for t in ticks:
        tier = t.get("tier2") or {}
        hits += tier.get("hits") or 0
        misses += tier.get("misses") or 0
    return hits / (hits + misses) if hits + misses else None


def common_gates(rows: Sequence[Mapping], points: Sequence[Mapping], keys: Sequence[str]) -> list[Gate]:
    """The gates that apply to every hypothesis: samples, alignment, and with reps CoV and reproducibility."""
    return [samples_gate(rows), alignment_gate(rows), cov_p99_gate(points, keys), reproducible_p99_gate(rows, keys)]


# ---------------------------------------------------------------------------- gates -> verdicts

#: the common quality gates (name prefixes) every verdict depends on unless its hypothesis says otherwise
#: (``Hypothesis.verdict_gates``); a hypothesis's own gates are often findings, not preconditions
QUALITY_GATES = ("enough samples for", "telemetry alignment", "CoV of p99", "p99 TTFT reproducible")

#: what a claim does not cover when a gate could not be evaluated (by gate-name prefix)
NOT_COVERED = {
    "CoV of p99": "launch-to-launch variation (one repetition per point)",
    "p99 TTFT reproducible": "launch-to-launch variation (one repetition per point)",
}


def _as_dict(g) -> dict:
    return g.as_dict() if isinstance(g, Gate) else dict(g)


def _depends(name: str, depends_on: Sequence[str] | None) -> bool:
    return depends_on is None or any(name.startswith(prefix) for prefix in depends_on)


def gate_sentence(sentence: str, gate_list: Iterable, depends_on: Sequence[str] | None = QUALITY_GATES) -> str:
    """A verdict sentence after the gates its claim depends on (``depends_on``: gate-name prefixes,
    default the common quality gates; None = every gate given). A failed one replaces the claim: "not established: <gate> <value> vs
    <limit>" (every failed gate, '; '-joined). A gate that could not be evaluated (passed None) keeps
    the claim and appends what it does not cover. Gates outside ``depends_on`` are ignored."""
    mine = [_as_dict(g) for g in gate_list if _depends(_as_dict(g)["name"], depends_on)]
    failed = [g for g in mine if g.get("passed") is False]
    if failed:
        return _not_established(failed)
    gaps = []
    for g in mine:
        if g.get("passed") is None:
            what = next((v for k, v in NOT_COVERED.items() if g["name"].startswith(k)), g["name"])
            if what not in gaps:
                gaps.append(what)
    sentence = sentence.rstrip()
    if gaps:
        sentence = sentence.rstrip(".") + ". Does not cover: " + "; ".join(gaps) + "."
    return sentence


def gate_status(gate_list: Iterable) -> str:
    """``fail`` if any gate failed, else ``incomplete`` if any could not be evaluated (n/a), else ``pass``;
    ``n/a`` when there is no gate at all."""
    passed = [_as_dict(g).get("passed") for g in gate_list]
    if any(p is False for p in passed):
        return "fail"
    if any(p is None for p in passed):
        return "incomplete"
    return "pass" if passed else "n/a"


GATED_LIST_MAX = 3  # failed gates named in one inline "not established"; the rest are counted


def _gate_value(value) -> str:
    if value is None:
        return "no value"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _not_established(failed: Sequence[Mapping], most: int | None = None) -> str:
    """"not established: <gate> <value> vs <limit>; …" — the one wording of a claim whose gate failed."""
    shown = failed if most is None else failed[:most]
    named = "; ".join(f"{g['name']} {_gate_value(g.get('value'))} vs {g.get('limit')}" for g in shown)
    more = f" (and {len(failed) - len(shown)} more failed)" if len(failed) > len(shown) else ""
    return f"not established: {named}{more}"


def gated_sentence(claim: str, gates: list[Gate], depends_on: Sequence[str]) -> str:
    """The inline form of :func:`gate_sentence`, for one claim inside a longer verdict (H2A, H2B, H6, H7, H9).

    ``depends_on`` names gates: a gate belongs to the claim when its name equals an entry or starts with
    it. A failed gate → "not established: …" (at most ``GATED_LIST_MAX`` named); no failure but a gate n/a,
    or an entry that matched no gate → the claim and "(not covered: <gate>: <why>)"; else the claim."""
    mine = [_as_dict(g) for g in gates if any(_as_dict(g)["name"].startswith(n) for n in depends_on)]
    failed = [g for g in mine if g.get("passed") is False]
    if failed:
        return _not_established(failed, GATED_LIST_MAX)
    open_ = [f"{g['name']}: {g.get('note') or 'not evaluated'}" for g in mine if g.get("passed") is None]
    open_ += [f"{n}: not evaluated" for n in depends_on if not any(g["name"].startswith(n) for g in mine)]
    if open_:
        more = f"; and {len(open_) - GATED_LIST_MAX} more" if len(open_) > GATED_LIST_MAX else ""
        return f"{claim} (not covered: {'; '.join(open_[:GATED_LIST_MAX])}{more})"
    return claim


def renamed(gate: Gate, name: str) -> Gate:
    """The same gate under another name (e.g. a shared gate evaluated on one claim's cells)."""
    return Gate(name, gate.passed, gate.value, gate.limit, gate.note)
