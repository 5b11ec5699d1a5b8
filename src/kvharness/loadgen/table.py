"""The end-of-run table of `kvharness loadgen`: what vLLM's `bench serve`, AIPerf and GuideLLM users
expect to read when a run ends (counts, duration, throughput, goodput, then TTFT / TPOT / ITL / E2E
mean, chosen percentiles and max, in ms).

It is computed from the records of the ``measure`` window with :mod:`kvharness.stats` (the same
percentile definition as the summary and the analysis), so the table and ``loadgen_summary.json``
never disagree; :func:`latency_table` is also what the summary stores under ``latency_ms``.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

from kvharness import stats
from kvharness.loadgen.spec import CLOSED_PATTERNS

DEFAULT_PERCENTILES = (50.0, 90.0, 95.0, 99.0)
METRICS = (  # (row label, record field, whether the field is a list of values)
    ("TTFT", "lat_ttft_ms", False),
    ("TPOT", "lat_tpot_ms", False),
    ("ITL", "itl_ms", True),
    ("E2E", "lat_e2e_ms", False),
)


class PercentileError(ValueError):
    pass


def parse_percentiles(text: str) -> tuple[float, ...]:
    """``"50,90,99"`` -> (50.0, 90.0, 99.0); sorted, duplicates dropped."""
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            q = float(part)
        except ValueError:
            q = math.nan
        if not 0 < q < 100:  # 0 is the min and 100 the max: the table always has the max
            raise PercentileError(f"--percentiles: expected comma-separated numbers between 0 and 100 "
                                  f"(e.g. 50,90,99), got {text!r}")
        values.append(q)
    return tuple(sorted(set(values)))


def pct_label(q: float) -> str:
    return f"p{q:g}"


def latency_table(records: Iterable[Mapping], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict:
    """``{"ttft": {"mean", "p50", ..., "max", "n"}, "tpot": ..., "itl": ..., "e2e": ...}`` in ms over the
    successful records given (ITL: every gap of every request)."""
    ok = [r for r in records if stats.is_ok(r)]
    out = {}
    for label, field, is_list in METRICS:
        values: list[float] = []
        for r in ok:
            v = r.get(field)
            if is_list:
                values.extend(x for x in (v or ()) if x is not None)
            elif v is not None:
                values.append(v)
        row: dict = {"mean": stats.mean(values)}
        for q in percentiles:
            row[pct_label(q)] = stats.percentile(values, q)
        row["max"] = max(values) if values else None
        row["n"] = len(values)
        out[label.lower()] = row
    return out


def top_error(records: Iterable[Mapping]) -> dict | None:
    """The most common error class of the failed records, its count and the server's message for it
    (the first record of that class that carries one), or None when nothing failed."""
    from kvharness.loadgen.firstcheck import server_message

    counts: dict[str, int] = {}
    message: dict[str, str] = {}
    for r in records:
        if stats.is_ok(r):
            continue
        cls = r.get("error_class") or "unknown"
        counts[cls] = counts.get(cls, 0) + 1
        if cls not in message and r.get("error"):
            message[cls] = server_message(r["error"])
    if not counts:
        return None
    cls = max(sorted(counts), key=counts.__getitem__)
    return {"class": cls, "count": counts[cls], "message": message.get(cls)}


def _num(v, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def _describe_load(spec: Mapping) -> str:
    pattern = spec.get("pattern") or {}
    kind = pattern.get("kind", "?")
    if pattern.get("concurrency") is not None and kind in CLOSED_PATTERNS:
        load = f"{kind} x{pattern['concurrency']}"
    elif pattern.get("rate") is not None:
        load = f"{kind} {pattern['rate']:g} req/s"
    else:
        load = kind
    workload = spec.get("workload") or {}
    if workload.get("context_tokens"):
        load += f", {workload.get('kind')} {workload['context_tokens']} tok in / {workload.get('output_tokens')} out"
    elif workload.get("kind"):
        load += f", {workload['kind']}"
    return load


def render_table(summary: Mapping, latency: Mapping, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
                 width: int = 78) -> str:
    """The table as text (plain ASCII, the same on a terminal and in a log file)."""
    spec = summary.get("spec") or {}
    stack = (spec.get("labels") or {}).get("stack")
    title = " kvharness loadgen result " + (f"({stack}) " if stack else "")
    lines = [title.center(width, "=")]

    def kv(key: str, value: str) -> None:
        lines.append(f"{key:<22}{value}")

    kv("target", f"{spec.get('base_url', '?')} model {spec.get('model', '?')!s}")
    kv("load", _describe_load(spec))
    n_ok, n_err = summary.get("n_ok", 0), summary.get("n_errors", 0)
    excluded = (summary.get("n_excluded_warmup") or 0) + (summary.get("n_excluded_cooldown") or 0)
    kv("requests", f"{n_ok} ok, {n_err} errors" + (f" ({excluded} in warm-up/cool-down not counted)" if excluded else ""))
    classes = summary.get("error_classes") or {}
    if classes:
        kv("errors by class", ", ".join(f"{k} {v}" for k, v in sorted(classes.items())))
    top = summary.get("top_error") or {}
    if top.get("message"):
        kv("most common error", f"{top['class']}: {top['message']}")
    kv("duration (s)", _num(summary.get("duration_s")))
    kv("request rate (req/s)", _num(summary.get("req_s")))
    kv("output tok/s", _num(summary.get("output_tok_s"), ".1f"))
    slo = {k: v for k, v in (spec.get("slo") or {}).items() if v is not None}
    slo_text = ", ".join(f"{k.replace('_ms', '')} <= {v:g} ms" for k, v in sorted(slo.items())) or "no SLO set"
    good = summary.get("good_fraction")
    kv("goodput (req/s)", f"{_num(summary.get('goodput_req_s'))}  ({_num(None if good is None else 100 * good, '.1f')} % "
                          f"of requests good; {slo_text})")
    if summary.get("client_bound") and n_ok:  # with nothing ok the server is the story, not the client
        kv("client", "CLIENT-BOUND: latencies include the generator's own delay")
    cols = ["mean", *[pct_label(q) for q in percentiles], "max"]
    lines.append("-" * width)
    lines.append(f"{'latency (ms)':<14}" + "".join(f"{c:>9}" for c in cols) + f"{'n':>9}")
    for label, _field, _is_list in METRICS:
        row = latency.get(label.lower()) or {}
        lines.append(f"{label:<14}" + "".join(f"{_num(row.get(c)):>9}" for c in cols) + f"{row.get('n', 0):>9}")
    lines.append("=" * width)
    return "\n".join(lines) + "\n"
