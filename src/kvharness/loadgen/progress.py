"""A rich progress line on a TTY; nothing at all otherwise (e.g. under Snakemake)."""

from __future__ import annotations

import asyncio
import sys
import time


def want_progress(mode: str, stream=None) -> bool:
    stream = stream or sys.stderr
    if mode == "off":
        return False
    if mode == "on":
        return True
    return bool(getattr(stream, "isatty", lambda: False)())


class RichProgress:
    def __init__(self, duration_s: float | None, max_requests: int | None):
        self.duration_s = duration_s
        self.max_requests = max_requests
        self._task: asyncio.Task | None = None

    def start(self, runner) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.runner = runner
        total = self.duration_s if self.duration_s else (self.max_requests or None)
        self.by_time = bool(self.duration_s)
        self.progress = Progress(TextColumn("loadgen"), BarColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), transient=False, auto_refresh=False)
        # no refresh thread: rendering happens in the loop twice a second, never mid-burst on the GIL
        self.task_id = self.progress.add_task("", total=total)
        self.progress.start()
        self.t0 = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            r = self.runner
            elapsed = time.monotonic() - self.t0
            done = elapsed if self.by_time else r.n_done
            rate = r.n_done / elapsed if elapsed > 0 else 0.0
            self.progress.update(self.task_id, completed=done,
                                 description=f"{r.n_done} done, {r.n_errors} errors, {len(r.tasks) + len(r.in_flight)} in flight, "
                                             f"{rate:.0f} req/s" + (" CLIENT-BOUND" if r.selfcheck.client_bound_now else ""))
            self.progress.refresh()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.progress.stop()
