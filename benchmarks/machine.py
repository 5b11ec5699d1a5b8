"""How busy the machine itself was during a benchmark: hypervisor steal and load.

On a shared VM a host neighbour can take the vCPUs away for milliseconds ("steal"); a latency tail
measured while that happened is the host's, not ours. Benchmarks print the steal share next to their
figures so a reader can tell a noisy run from a regression.
"""

from __future__ import annotations

import os


def _cpu_jiffies() -> tuple[int, int] | None:
    """(steal, total) jiffies over all CPUs since boot, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


class StealMeter:
    """``with StealMeter() as m: ...`` then ``m.percent``: the share of CPU time the hypervisor stole."""

    def __enter__(self):
        self._start = _cpu_jiffies()
        self.percent = float("nan")
        return self

    def __exit__(self, *exc):
        end = _cpu_jiffies()
        if self._start and end and end[1] > self._start[1]:
            self.percent = 100.0 * (end[0] - self._start[0]) / (end[1] - self._start[1])
        return False

    def describe(self) -> str:
        if self.percent != self.percent:
            return "steal unknown"
        note = " (noisy host: tails are suspect)" if self.percent >= 2.0 else ""
        return f"hypervisor steal {self.percent:.1f} % of CPU time{note}"


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} CPUs"
