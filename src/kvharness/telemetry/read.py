"""Reading a cell's telemetry back and joining it with request records on the monotonic clock.

For the analysis (H7 and any "what was the machine doing during this tail request" question). A tick
with ``mono_ns = m`` describes the window ``(m - interval, m]``: its deltas (CPU, iostat, counter deltas,
histogram quantiles) are over that window.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

from kvharness.records import RecordError
from kvharness.records import read_jsonl as read_records
from kvharness.cellfiles import COLLECTOR_SUMMARY_JSON, SYSMON_JSONL


TelemetryFormatError = RecordError  # a malformed collector line: the message names file and line


def read_jsonl(path: str | Path, allow_partial_last: bool = True) -> list[dict]:
    """Every record of a collector JSONL file (see ``analysis.records.read_jsonl``)."""
    return read_records(path, tolerate_truncated_tail=allow_partial_last)[0]


@dataclass
class TickIndex:
    """Ticks sorted by ``mono_ns``; ``interval_ns`` is the cadence."""

    ticks: list[dict]
    interval_ns: int

    def __post_init__(self) -> None:
        self.ticks = sorted(self.ticks, key=lambda r: r["mono_ns"])
        self._ns = [r["mono_ns"] for r in self.ticks]

    @classmethod
    def from_cell(cls, cell_dir: str | Path, name: str = SYSMON_JSONL) -> "TickIndex":
        cell = Path(cell_dir)
        summary = json.loads((cell / COLLECTOR_SUMMARY_JSON).read_text())
        return cls(read_jsonl(cell / name), int(round(summary["interval_ms"] * 1e6)))

    def at(self, t_ns: int) -> dict | None:
        """The tick whose window (mono_ns - interval, mono_ns] holds ``t_ns``; None if that tick is missing."""
        i = bisect.bisect_left(self._ns, t_ns)
        if i == len(self._ns):
            return None
        r = self.ticks[i]
        return r if r["mono_ns"] - self.interval_ns < t_ns else None

    def covering(self, start_ns: int, end_ns: int) -> list[dict]:
        """Ticks whose windows overlap [start_ns, end_ns]."""
        i = bisect.bisect_left(self._ns, start_ns)
        out = []
        while i < len(self._ns) and self._ns[i] - self.interval_ns <= end_ns:
            out.append(self.ticks[i])
            i += 1
        return out

    def windows_expected(self, start_ns: int, end_ns: int) -> int:
        return max(1, -(-(end_ns - start_ns) // self.interval_ns))


def attributable_fraction(requests: list[dict], ticks: TickIndex, *, start_field: str = "sched_ns",
                          end_field: str = "first_token_ns", need=lambda tick: True) -> float | None:
    """Share of ``requests`` whose [start, end] span is fully covered by present ticks that satisfy
    ``need`` (e.g. a non-null ``nvme`` or tier-2 fetch field). For H7: take the p99-tail requests of a
    cell and ask whether the telemetry at that cadence still explains them."""
    n = ok = 0
    for r in requests:
        s, e = r.get(start_field), r.get(end_field)
        if s is None or e is None:
            continue
        n += 1
        cov = ticks.covering(s, e)
        # every window the span touches must be present (a missed tick leaves a hole)
        if cov and len(cov) >= _windows_touched(s, e, ticks) and all(need(t) for t in cov):
            ok += 1
    return ok / n if n else None


def _windows_touched(s: int, e: int, ticks: TickIndex) -> int:
    """How many cadence windows [s, e] touches, counted on the present ticks' grid."""
    if not ticks._ns:
        return 1
    anchor = ticks._ns[0]
    iv = ticks.interval_ns
    first = -(-(s - anchor) // iv)  # index of the window ending at or after s
    last = -(-(e - anchor) // iv)
    return max(1, last - first + 1)
