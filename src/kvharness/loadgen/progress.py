"""A rich progress line on stderr when a person watches; nothing at all otherwise (e.g. under Snakemake).

The line is redrawn twice a second from the event loop (no refresh thread), and once more after the
last record is written, so its final frame is exact: "N done" is the number of records in the output.
"""

from __future__ import annotations

import asyncio
import sys
import time


def want_progress(mode: str, streams=None) -> bool:
    """``auto``: only when stdout and stderr are both terminals, so a redirected run's output is just
    the final table."""
    if mode == "off":
        return False
    if mode == "on":
        return True
    streams = streams if streams is not None else (sys.stdout, sys.stderr)
    return all(bool(getattr(s, "isatty", lambda: False)()) for s in streams)


class RichProgress:
    def __init__(self, duration_s: float | None, max_requests: int | None):
        self.duration_s = duration_s
        self.max_requests = max_requests
        self._task: asyncio.Task | None = None
        self.progress = None

    def start(self, runner) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.runner = runner
        total = self.duration_s if self.duration_s else (self.max_requests or None)
        self.by_time = bool(self.duration_s)
        self.progress = Progress(TextColumn("loadgen"), BarColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), transient=False, auto_refresh=False,
                                 console=Console(stderr=True))
        # no refresh thread: rendering happens in the loop twice a second, never mid-burst on the GIL
        self.task_id = self.progress.add_task("", total=total)
        self.progress.start()
        self.t0 = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._tick())

    def frame(self, final: bool = False) -> str:
        """The text of the current frame (the counts read from the runner at this instant)."""
        r = self.runner
        elapsed = time.monotonic() - self.t0
        rate = r.n_done / elapsed if elapsed > 0 else 0.0
        in_flight = len(r.tasks) + len(r.in_flight)
        text = f"{r.n_done} done, {r.n_errors} errors, {in_flight} in flight, {rate:.0f} req/s"
        if r.selfcheck.client_bound_now and r.n_done > r.n_errors:  # never for a run with nothing ok
            text += " CLIENT-BOUND"
        if final and r.stop_reason:
            text += f" ({r.stop_reason})"
        return text

    def _draw(self, final: bool = False) -> None:
        r = self.runner
        if self.by_time:
            elapsed = time.monotonic() - self.t0
            done = self.duration_s if final and r.stop_reason in ("duration", "pattern_done") else min(elapsed, self.duration_s)
        else:
            done = r.n_done
        self.progress.update(self.task_id, completed=done, description=self.frame(final))
        self.progress.refresh()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._draw()

    def stop(self) -> None:
        """Called after the last record was written: draw the exact final frame, then leave it on screen."""
        if self._task is not None:
            self._task.cancel()
        if self.progress is None:
            return
        self._draw(final=True)
        self.progress.stop()
