"""The generator watches itself: event-loop lag, send lag and its own CPU.

A run where the client was the bottleneck (send-lag p99 > 5 ms or CPU > 90 % of one core) is
flagged ``client_bound`` — per record (for the window the record finished in) and in the summary —
so a client limit is never reported as the server's latency.
"""

from __future__ import annotations

import asyncio
import time

from kvharness.stats import percentile

SEND_LAG_P99_LIMIT_MS = 5.0
CPU_LIMIT_FRACTION = 0.90


class SelfCheck:
    def __init__(self, interval_s: float = 0.5, probe_s: float = 0.01):
        self.interval_s = interval_s
        self.probe_s = probe_s
        self.loop_lag_ms: list[float] = []
        self.send_lag_ms: list[float] = []
        self.read_lag_ms: list[float] = []  # kernel receive stamp -> read handed over (one per request)
        self.window_send_lag: list[float] = []
        self.client_bound_now = False
        self.windows_bound = 0
        self.windows = 0
        self.max_window_cpu = 0.0
        self._task: asyncio.Task | None = None
        self._cpu0 = time.process_time()
        self._wall0 = time.monotonic()

    def record_read_lag(self, lag_ms: float) -> None:
        self.read_lag_ms.append(lag_ms)

    def record_send_lag(self, lag_ms: float) -> None:
        self.send_lag_ms.append(lag_ms)
        self.window_send_lag.append(lag_ms)

    def start(self) -> None:
        self._cpu0 = time.process_time()
        self._wall0 = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        cpu_w, wall_w = time.process_time(), time.monotonic()
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.probe_s)
            now = time.monotonic()
            self.loop_lag_ms.append(max(0.0, (now - t - self.probe_s) * 1e3))
            if now - wall_w >= self.interval_s:
                cpu = time.process_time()
                frac = (cpu - cpu_w) / (now - wall_w)
                lag = percentile(self.window_send_lag, 99) if self.window_send_lag else 0.0
                self.client_bound_now = frac > CPU_LIMIT_FRACTION or lag > SEND_LAG_P99_LIMIT_MS
                self.windows += 1
                self.windows_bound += int(self.client_bound_now)
                self.max_window_cpu = max(self.max_window_cpu, frac)
                self.window_send_lag = []
                cpu_w, wall_w = cpu, now

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def summary(self, n_requests: int) -> dict:
        wall = time.monotonic() - self._wall0
        cpu = time.process_time() - self._cpu0
        cpu_frac = cpu / wall if wall > 0 else 0.0
        send_p99 = percentile(self.send_lag_ms, 99)
        bound = cpu_frac > CPU_LIMIT_FRACTION or (send_p99 is not None and send_p99 > SEND_LAG_P99_LIMIT_MS)
        return {
            "client_cpu_s": cpu,
            "client_cpu_pct": 100.0 * cpu_frac,
            "client_cpu_pct_max_window": 100.0 * self.max_window_cpu,
            "client_cpu_ms_per_req": (1e3 * cpu / n_requests) if n_requests else None,
            "loop_lag_ms_p50": percentile(self.loop_lag_ms, 50),
            "loop_lag_ms_p99": percentile(self.loop_lag_ms, 99),
            "loop_lag_ms_max": max(self.loop_lag_ms) if self.loop_lag_ms else None,
            "send_lag_ms_p50": percentile(self.send_lag_ms, 50),
            "send_lag_ms_p99": send_p99,
            "send_lag_ms_max": max(self.send_lag_ms) if self.send_lag_ms else None,
            "read_lag_ms_p50": percentile(self.read_lag_ms, 50),
            "read_lag_ms_p99": percentile(self.read_lag_ms, 99),
            "read_lag_ms_max": max(self.read_lag_ms) if self.read_lag_ms else None,
            "client_bound_windows": self.windows_bound,
            "selfcheck_windows": self.windows,
            "client_bound": bool(bound),
        }
