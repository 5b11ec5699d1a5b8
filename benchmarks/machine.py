"""How busy the machine itself was during a benchmark: hypervisor steal and load.

On a shared VM a host neighbour can take the vCPUs away for milliseconds ("steal"); a latency tail
measured while that happened is the host's, not ours. Benchmarks print the steal share next to their
figures so a reader can tell a noisy run from a regression.
"""

from __future__ import annotations

import os


def cores() -> tuple[set[int] | None, set[int] | None]:
    """(client CPU, server CPU): two different CPUs of this process's set, or (None, None) on one CPU.

    Benchmarks pin the measuring client and the server apart. Besides keeping them from competing for
    one core, it matters on a small machine because Linux wakes a socket's reader on the CPU of its
    writer ("wake-affine"): an unpinned client kept preempting the simulator in the middle of a step's
    write burst (measured on 2 cores: ~18 us per SSE write pinned, 80-120 us in the bad steps unpinned).
    """
    try:
        avail = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return None, None
    if len(avail) < 2:
        return None, None
    return {avail[0]}, {avail[1]}


def cpu_fields(cpu: int | None = None) -> list[int] | None:
    """The jiffy counters of /proc/stat's line for ``cpu`` (None: all CPUs), or None where it is missing:
    user nice system idle iowait irq softirq steal [guest guest_nice, already inside user/nice]."""
    name = "cpu " if cpu is None else f"cpu{cpu} "
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                if line.startswith(name):
                    return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return None


def _cpu_jiffies() -> tuple[int, int] | None:
    """(steal, total) jiffies over all CPUs since boot."""
    fields = cpu_fields()
    if fields is None:
        return None
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


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far (Linux /proc; 0.0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the name in () may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0
