"""The scheduler: asks the pattern when, the workload what, sends, times and records.

Every request is timed from its ticket's scheduled time (``sched_ns``); ``client_queue_ms`` is
scheduled -> sent. Records are written to ``metrics.jsonl`` and flushed as each request completes;
no request error ever stops the run (only ``max_errors``, the duration, the request count, the
pattern's end or a signal do).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import signal
import socket
import sys
import time
from collections import deque
from functools import partial
from typing import IO


from kvharness import __version__
from kvharness.loadgen.http import HTTPPool, TransportError, _Exchange
from kvharness.loadgen.lora import per_adapter
from kvharness.loadgen.patterns import LoadPattern, Ticket, make_pattern
from kvharness.loadgen.selfcheck import SelfCheck
from kvharness.loadgen.stream import StreamError, StreamTimer
from kvharness.loadgen.workloads import Request, Workload, make_workload
from kvharness.stats import summarize_requests

NS = 1_000_000_000
BOOKKEEP_PER_TURN = 8  # requests prebuilt per event-loop turn: 2x this
BOOKKEEP_TURN_NS = 400_000  # completed requests parsed and recorded per loop turn: for this long (or 1/64 of the backlog)
INLINE_TURN_NS = 1_500_000  # completion callbacks send inline for this long per batch of reads
SEND_SLICE_NS = 1_500_000  # the scheduler yields to the loop after sending for this long
SPIN_NS = 1_000_000  # the last millisecond before a due send is waited by yielding, not by a timer
GC_FREEZE_S = 0.25  # how often survivors are frozen out of the collector's scans during a run
_monotonic_ns = time.monotonic_ns
_dumps = json.dumps


def raise_nofile_limit(needed: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to ``needed`` (capped by the hard limit); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft, hard


class Runner:
    def __init__(self, spec: dict, out: IO[str], pattern: LoadPattern | None = None,
                 workload: Workload | None = None, progress=None, start_at_ns: int | None = None,
                 summarize: bool = True):
        self.spec = spec
        self.start_at_ns = start_at_ns  # a common start for the workers of one run
        self.out = out
        self.pattern = pattern or make_pattern(spec)
        self.workload = workload or make_workload(spec)
        self.progress = progress
        # The summary reads the records back from the flushed file; only an output without a file
        # (tests) keeps them, as JSON lines: strings are not tracked by the garbage collector, so
        # collections stay cheap however long the run (dicts would not)
        name = getattr(out, "name", None)
        self.out_path = name if isinstance(name, str) and os.path.isfile(name) else None
        self.lines: list[str] | None = None if self.out_path else []
        self.summarize = summarize  # False in a worker: the parent summarizes the merged records
        self.tasks: set[asyncio.Task] = set()
        self.n_sent = 0
        self.n_done = 0
        self.n_ok_measured = 0   # ok requests in the measure window (the min_ok_requests stop condition)
        self.extended = False    # the load ran past duration_s for min_ok_requests
        self.n_errors = 0
        self.n_errors_in_row = 0  # failed requests since the last success (max_consecutive_errors)
        self.write_error: str | None = None  # the first failed write of a record (disk full): the run stops
        self.n_unwritten = 0  # records that could not be written after it
        self.stop_reason: str | None = None
        self.signal_name: str | None = None
        self.selfcheck = SelfCheck()
        self._sleeper: asyncio.Future | None = None
        self.inline = False
        self._turn_mark: int | None = None  # when the current batch of reads began sending inline
        self._sending = False  # the scheduler has due requests left after a slice: bookkeeping waits
        self.presend = False
        self.end_ns = None
        self._backlog: deque = deque()
        self._pending: list[str] | None = None  # records of the current bookkeeping turn, written at its end
        self._backlog_wakeup: asyncio.Future | None = None
        self._last_end_ns = 0
        self.in_flight: set = set()  # exchanges written by the scheduler, completed by callback
        self._idle_waiter: asyncio.Future | None = None
        self._aborted = False
        self.prebuild_target = 0
        self.max_backlog = 0
        self._stopping = False
        self.labels = dict(spec.get("labels") or {})
        if "concurrency" not in self.labels:
            self.labels["concurrency"] = self.pattern.concurrency
        self.labels.setdefault("stack", None)
        cap = self.pattern.in_flight_cap
        self.sem = asyncio.Semaphore(cap) if cap is not None and self.pattern.concurrency is None else None

    # ---- control ----

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stopping = True
        self.pattern.stop()
        s = self._sleeper
        if s is not None and not s.done():
            s.set_result(None)

    def on_signal(self, signame: str) -> None:
        self.signal_name = signame
        self.request_stop(f"signal {signame}")
        self._aborted = True
        for t in list(self.tasks):
            t.cancel()
        for ex in list(self.in_flight):
            ex.on_done = None  # an interrupted request is not a record
            ex.future.cancel()
            ex.handle.cancel()
            ex.conn.abort()
        self.in_flight.clear()
        self._check_idle()

    async def _sleep_until(self, t_ns: int) -> None:
        """Wait until ``t_ns``: a timer to within SPIN_NS of it (event-loop timers are millisecond-grained),
        then yield to the loop until due, so sends land within microseconds of their schedule while
        responses keep being read."""
        delay_ns = t_ns - _monotonic_ns()
        if delay_ns <= 0:
            return
        if delay_ns > SPIN_NS:
            loop = asyncio.get_running_loop()
            fut = self._sleeper = loop.create_future()
            handle = loop.call_later((delay_ns - SPIN_NS) / NS, lambda: fut.done() or fut.set_result(None))
            try:
                await fut
            finally:
                handle.cancel()
                self._sleeper = None
        while not self._stopping and _monotonic_ns() < t_ns:
            await asyncio.sleep(0)

    # ---- one request ----

    async def _one(self, ticket: Ticket, req: Request, dispatch_ns: int, timer: StreamTimer,
                   ex: _Exchange | None = None) -> None:
        sem = self.sem
        if sem is not None:
            await sem.acquire()
        try:
            sent_ns = ex.sent_ns if ex is not None else _monotonic_ns()
            self.selfcheck.record_send_lag((sent_ns - ticket.sched_ns) / 1e6 if sem is None
                                           else max(0.0, (dispatch_ns - ticket.sched_ns) / 1e6))
            rc, error_class, error, end_ns, ex = await self._send(req, timer, ex)
        finally:
            if sem is not None:
                sem.release()
        self._after_response(ticket, req, timer, ex, sent_ns, rc, error_class, error, end_ns)

    def _on_sent_done(self, ticket: Ticket, req: Request, timer: StreamTimer, ex: _Exchange,
                      fut: asyncio.Future) -> None:
        """Completion callback of a request the scheduler wrote itself (no task per request)."""
        self.in_flight.discard(ex)
        ex.handle.cancel()
        if self._aborted or fut.cancelled():
            self._check_idle()
            return
        exc = fut.exception()
        if exc is None:
            if ex.status != 200:
                rc, cls, err, end_ns = (ex.status, f"http_{ex.status}",
                                        ex.error_body[:200].decode("utf-8", "replace"), _monotonic_ns())
            elif not ex.parts and self.stream and not timer.done and timer.usage is None:
                rc, cls, err, end_ns = -1, "disconnect", "stream ended before [DONE]", None
            else:
                rc, cls, err, end_ns = 0, None, None, None
            self._after_response(ticket, req, timer, ex, ex.sent_ns, rc, cls, err, end_ns)
        elif isinstance(exc, TransportError):
            if ex.reused and not ex.got_bytes and exc.error_class == "disconnect":
                # the server had closed this idle keep-alive connection: once more on a fresh one
                task = asyncio.get_running_loop().create_task(
                    self._one(ticket, req, _monotonic_ns(), StreamTimer(req.keep_text), None))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            else:
                self._after_response(ticket, req, timer, None, ex.sent_ns, -1, exc.error_class, str(exc)[:200],
                                     _monotonic_ns())
        else:  # pragma: no cover - the protocol only raises TransportError
            self._after_response(ticket, req, timer, None, ex.sent_ns, -1, "client_error", repr(exc)[:200],
                                 _monotonic_ns())
        self._check_idle()

    def _check_idle(self) -> None:
        if not self.in_flight and self._idle_waiter is not None and not self._idle_waiter.done():
            self._idle_waiter.set_result(None)

    def _send_ticket(self, ticket: Ticket) -> None:
        """Number, build and send one due ticket (from the scheduler loop or a completion callback)."""
        ticket.seq = self.n_sent
        self.n_sent += 1
        req = self.workload.next_request(ticket)
        timer = StreamTimer(req.keep_text)
        # send right here when a keep-alive connection is idle: no task, no loop turn before the write
        ex = self.pool.begin(req.path, req.body, timer, self.stream, self.timeout_s) if self.presend else None
        if ex is not None and not req.keep_text:
            self.selfcheck.record_send_lag((ex.sent_ns - ticket.sched_ns) / 1e6)
            self.in_flight.add(ex)
            ex.on_done = partial(self._on_sent_done, ticket, req, timer, ex)
        else:
            task = asyncio.get_running_loop().create_task(self._one(ticket, req, _monotonic_ns(), timer, ex))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        max_requests = self.spec["max_requests"]
        if max_requests is not None and self.n_sent >= max_requests:
            self.request_stop("max_requests")

    def _send_inline(self) -> None:
        ticket = self.pattern.poll(_monotonic_ns())
        if ticket is None:
            return
        if self._stopping or (self.end_ns is not None and ticket.sched_ns >= self.end_ns):
            self.pattern.unpoll(ticket)  # the scheduler ends the run
            return
        self._send_ticket(ticket)

    def _after_response(self, ticket, req, timer, ex, sent_ns, rc, error_class, error, end_ns) -> None:
        end_hint = end_ns
        if end_hint is None:
            end_hint = (ex.last_read_ns if ex is not None else None) or timer.last_event_ns or _monotonic_ns()
        if ex is not None and end_ns is None and ex.seen_ns and ex.parts:
            # kernel stamps: how long the last bytes waited before the event loop handed them over
            self.selfcheck.record_read_lag((ex.seen_ns - ex.parts[-1][0]) / 1e6)
        defer = not req.keep_text  # a session's next turn needs this reply in its history first
        counted = rc != 0
        if counted:
            self._note_error()
        if defer:
            # The pattern learns the end now and the scheduler sends the next requests before this
            # one's bookkeeping (SSE parsing, the record) runs; the bookkeeping queue is worked off a
            # few records per loop turn so that reads of other streams are stamped in between.
            # A closed-loop user can only act once the client has read the end: its next request is
            # due then, not at the kernel's earlier receive stamp (that gap is the client's read lag,
            # reported as read_lag_ms; the finished request's own latencies keep the kernel stamps).
            seen = ex.seen_ns if ex is not None and end_ns is None else 0
            self.pattern.completed(ticket, max(seen, end_hint), rc == 0)
            if self.inline:
                # Sending inline saves a loop turn, but a whole cohort of streams can end within the
                # same batch of reads; past a budget per batch the scheduler sends the rest in
                # slices, so that reads of the other streams are not held up for milliseconds.
                mark = self._turn_mark
                if mark is None:
                    self._turn_mark = _monotonic_ns()
                    asyncio.get_running_loop().call_soon(self._end_turn)
                    self._send_inline()
                elif _monotonic_ns() - mark < INLINE_TURN_NS:
                    self._send_inline()
            self._backlog.append((ticket, req, timer, ex, sent_ns, rc, error_class, error, end_ns, end_hint, counted))
            if len(self._backlog) > self.max_backlog:
                self.max_backlog = len(self._backlog)
            if self._backlog_wakeup is not None and not self._backlog_wakeup.done():
                self._backlog_wakeup.set_result(None)
            return
        self._bookkeep(ticket, req, timer, ex, sent_ns, rc, error_class, error, end_ns, end_hint, counted)
        self.pattern.completed(ticket, self._last_end_ns, rc == 0)

    def _end_turn(self) -> None:
        self._turn_mark = None

    async def _gc_tender(self) -> None:
        """Keep the collector's pauses short while timing: every GC_FREEZE_S, move what survived so far
        (mostly finished records) out of the generations the collector scans. Without it a gen-1/gen-2
        pass over thousands of records stalled the loop for 5-13 ms at c=256, and a token read in that
        stall looked like server latency. Reference counting still frees frozen objects."""
        while True:
            await asyncio.sleep(GC_FREEZE_S)
            gc.freeze()

    async def _backlog_worker(self) -> None:
        loop = asyncio.get_running_loop()
        backlog = self._backlog
        while True:
            if not backlog:
                self._backlog_wakeup = loop.create_future()
                await self._backlog_wakeup
                self._backlog_wakeup = None
                await asyncio.sleep(0)  # let the scheduler send first
            # a bounded slice per turn keeps reads of other streams (and the sends they trigger)
            # prompt; a growing backlog (the client is saturated) is worked off faster, which throttles
            # sending instead of hiding debt. The turn's records go out in one write, flushed before
            # the turn ends.
            n = len(backlog)
            if self._sending:  # sends first: they are timed, bookkeeping is not
                todo, deadline = 1, 0
            else:
                todo, deadline = n // 64, _monotonic_ns() + BOOKKEEP_TURN_NS
            self._pending = []
            try:
                while todo > 0 or (backlog and _monotonic_ns() < deadline):
                    self._bookkeep(*backlog.popleft())
                    todo -= 1
            finally:
                self._write_pending()
            if self.prebuild_target:  # keep requests encoded ahead, a few per turn, even when saturated
                self.workload.prebuild(min(self.prebuild_target, len(self.workload._prebuilt) + 2 * BOOKKEEP_PER_TURN))
            await asyncio.sleep(0)

    def _drain_backlog(self) -> None:
        self._pending = []
        try:
            while self._backlog:
                self._bookkeep(*self._backlog.popleft())
        finally:
            self._write_pending()

    def _write_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending:
            self._emit("".join(pending), len(pending))

    def _bookkeep(self, ticket, req, timer, ex, sent_ns, rc, error_class, error, end_ns, end_hint, counted) -> None:
        if ex is not None and ex.parts:
            try:
                ex.feed_timer()
            except StreamError as exc:
                rc, error_class, error, end_ns = -1, exc.error_class, str(exc), end_hint
            if rc == 0 and not timer.done and timer.usage is None:
                rc, error_class, error = -1, "disconnect", "stream ended before [DONE]"
        rec = timer.fields(ticket.sched_ns)
        if end_ns is not None or rec["end_ns"] is None:
            rec["end_ns"] = end_ns if end_ns is not None else end_hint
            if rc == 0:
                rc, error_class, error = -1, "disconnect", "no event received"
            rec["lat_e2e_ms"] = (rec["end_ns"] - ticket.sched_ns) / 1e6
        if rc != 0:
            rec["lat_tpot_ms"] = None
        if rc == 0 and rec["first_token_ns"] is None and (rec["output_tokens"] or 0) > 0:
            rc, error_class, error = -1, "parse", "usage reports output tokens but no event carried text"
        if rc != 0 and not counted:  # found only while parsing the stream
            self._note_error()
        self._last_end_ns = rec["end_ns"]
        self._finish(ticket, req, rec, sent_ns, rc, error_class, error, timer)

    async def _send_raw(self, req: Request, timer: StreamTimer, ex: _Exchange | None):
        """(rc, error_class, error, end_ns or None, exchange) over the raw protocol pool."""
        try:
            ex = await self.pool.request(req.path, req.body, timer, self.stream, self.timeout_s, ex)
        except TransportError as exc:
            return -1, exc.error_class, str(exc)[:200], _monotonic_ns(), None
        if ex.status != 200:
            return ex.status, f"http_{ex.status}", ex.error_body[:200].decode("utf-8", "replace"), _monotonic_ns(), None
        if not ex.parts and self.stream and not timer.done and timer.usage is None:
            return -1, "disconnect", "stream ended before [DONE]", None, ex
        return 0, None, None, None, ex

    async def _send_aiohttp(self, req: Request, timer: StreamTimer, ex=None):
        """(rc, error_class, error, end_ns or None, None) through aiohttp (``transport: "aiohttp"``)."""
        rc, error_class, error, end_ns = await self._aiohttp_exchange(req, timer)
        return rc, error_class, error, end_ns, None

    async def _aiohttp_exchange(self, req: Request, timer: StreamTimer):
        import aiohttp  # only for transport "aiohttp": importing it costs every run ~0.3 s of start-up

        try:
            async with self.session.post(self.url_base + req.path, data=req.body, headers=self.headers) as resp:
                timer.first_byte_ns = _monotonic_ns()
                if resp.status != 200:
                    body = await resp.read()
                    return resp.status, f"http_{resp.status}", body[:200].decode("utf-8", "replace"), _monotonic_ns()
                if self.stream:
                    feed = timer.feed
                    async for chunk in resp.content.iter_any():
                        feed(chunk, _monotonic_ns())
                    if not timer.done and timer.usage is None:
                        return -1, "disconnect", "stream ended before [DONE]", None
                else:
                    body = await resp.read()
                    timer.feed_body(body, timer.first_byte_ns, _monotonic_ns())
        except StreamError as exc:
            return -1, exc.error_class, str(exc), _monotonic_ns()
        except asyncio.TimeoutError:
            return -1, "timeout", f"no complete response within {self.timeout_s} s", _monotonic_ns()
        except aiohttp.ClientConnectorError as exc:
            return -1, "connect", str(exc)[:200], _monotonic_ns()
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError,
                ConnectionError) as exc:
            return -1, "disconnect", (str(exc) or type(exc).__name__)[:200], _monotonic_ns()
        except aiohttp.ClientResponseError as exc:
            return -1, "parse", str(exc)[:200], _monotonic_ns()
        except aiohttp.ClientError as exc:
            return -1, "client_error", (str(exc) or type(exc).__name__)[:200], _monotonic_ns()
        return 0, None, None, None

    def _finish(self, ticket: Ticket, req: Request, rec: dict, sent_ns: int, rc: int, error_class, error,
                timer: StreamTimer) -> None:
        sched = ticket.sched_ns
        rec["sched_ns"] = sched
        rec["sent_ns"] = sent_ns
        rec["client_queue_ms"] = (sent_ns - sched) / 1e6
        rec["ts"] = self.wall0 + (sched - self.t0_ns) / NS
        rec["rc"] = rc
        rec["error_class"] = error_class
        if error:
            rec["error"] = error
        rec.update(self.labels)
        rec.update(req.labels)
        rec["session_id"] = ticket.session_id
        rec["turn"] = ticket.turn
        rec["phase"] = ticket.phase
        rec["request_id"] = f"{self.run_id}-{ticket.seq}"
        rec["window"] = self._window(sched)
        rec["client_bound"] = self.selfcheck.client_bound_now
        ok = rc == 0
        line = _dumps(rec) + "\n"
        if self.lines is not None:
            self.lines.append(line)
        if self._pending is not None:
            self._pending.append(line)
        else:
            self._emit(line, 1)
        if ok:
            self.n_errors_in_row = 0
            if rec["window"] == "measure":
                self.n_ok_measured += 1
                if self.extended and self.n_ok_measured >= self.spec["min_ok_requests"]:
                    self.request_stop("min_ok_requests")
        self.n_done += 1
        self.workload.completed(ticket, req, ok, timer.text if req.keep_text else "")

    def _emit(self, text: str, n_records: int) -> None:
        """Write and flush records; the first failed write (ENOSPC, EIO) stops the run, never crashes it."""
        if self.write_error is not None:
            self.n_unwritten += n_records
            return
        try:
            self.out.write(text)
            self.out.flush()
        except OSError as exc:
            self.write_error = f"{exc.strerror or exc} ({getattr(self.out, 'name', 'output')})"
            self.n_unwritten += n_records
            self.request_stop("write_failed")

    def _note_error(self) -> None:
        self.n_errors += 1
        self.n_errors_in_row += 1
        max_errors = self.spec["max_errors"]
        if max_errors is not None and self.n_errors >= max_errors:
            self.request_stop("max_errors")
        in_row = self.spec.get("max_consecutive_errors")
        if in_row is not None and self.n_errors_in_row >= in_row:
            self.request_stop("max_consecutive_errors")

    def _extend(self, now_ns: int) -> bool:
        """At the end of ``duration_s``: run on (to ``max_duration_s``) while the measure window has fewer
        than ``min_ok_requests`` ok requests, if the ok rate so far reaches them, or at least the 299 a p99
        bound needs, by then; a load that cannot (errors, a collapsed stack) stops at once, reported short."""
        need, cap = self.spec.get("min_ok_requests"), self.spec.get("max_duration_s")
        if self.extended or not need or self.n_ok_measured >= need or not cap:
            return False
        elapsed = (now_ns - self.measure_start_ns) / NS
        cap_ns = self.t0_ns + int(cap * NS)
        if elapsed <= 0 or self.n_ok_measured == 0 or now_ns >= cap_ns:
            return False
        # run on when the ok rate so far brings, by the cap, the count asked for or at least what a p99
        # bound needs (stats.min_ok_requests): a load that cannot even get that (errors, a collapsed
        # stack) is not worth the wait
        from kvharness.stats import min_ok_requests

        projected = self.n_ok_measured + self.n_ok_measured / elapsed * (cap_ns - now_ns) / NS
        if projected < min(need, min_ok_requests(99)):
            return False
        self.extended = True
        self.end_ns = cap_ns
        self.measure_end_ns = None  # an extended load has no cooldown window: it stops on its count
        return True

    def _window(self, sched_ns: int) -> str:
        if sched_ns < self.measure_start_ns:
            return "warmup"
        if self.measure_end_ns is not None and sched_ns >= self.measure_end_ns:
            return "cooldown"
        return "measure"

    # ---- the run ----

    async def run(self) -> dict:
        """Phases: set up (URL, signals, transport), connect and prebuild, start the clock, the send loop,
        drain what is in flight, stop the helpers and the transport; then the summary."""
        loop = asyncio.get_running_loop()
        self._set_up(loop)
        await self._connect()
        gc.collect()
        gc.freeze()  # start-up objects (imports, spec) never need scanning again
        self.selfcheck.start()
        worker = loop.create_task(self._backlog_worker())
        tender = loop.create_task(self._gc_tender())
        if self.progress is not None:  # before t0: starting rich takes tens of ms
            self.progress.start(self)
        try:
            await self._send_loop(await self._start_clock())
            self.pattern.stop()
            while self.tasks or self.in_flight:
                if self.in_flight:
                    self._idle_waiter = loop.create_future()
                    await self._idle_waiter
                    self._idle_waiter = None
                if self.tasks:
                    await asyncio.gather(*list(self.tasks), return_exceptions=True)
        finally:
            tender.cancel()
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
            gc.unfreeze()  # everything collectable again once the timed part is over
            self._drain_backlog()
            self.run_wall_s = (_monotonic_ns() - self.t0_ns) / NS
            if self.session is not None:
                await self.session.close()
            else:
                self.pool.close()
        await self.selfcheck.stop()
        if self.progress is not None:
            self.progress.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        return self.summary()

    def _set_up(self, loop) -> None:
        """URL base, headers, signal handlers, run id and the transport (raw pool or aiohttp session)."""
        spec = self.spec
        cap = self.pattern.in_flight_cap
        raise_nofile_limit((cap or 4096) + 256)
        self.url_base = spec["base_url"].rstrip("/")
        if self.url_base.endswith("/v1"):
            self.url_base = self.url_base[:-3]
        self.headers = {"Content-Type": "application/json", **spec["headers"]}
        for sig, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
            try:
                loop.add_signal_handler(sig, self.on_signal, name)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        self.run_id = f"{os.getpid():x}{_monotonic_ns() & 0xffffff:06x}"
        self.stream = spec["stream"]
        self.timeout_s = spec["request_timeout_s"]
        self.transport = spec["transport"]
        self.session = None
        if self.transport == "aiohttp":
            import aiohttp

            connector = aiohttp.TCPConnector(limit=cap or 0, limit_per_host=0, ttl_dns_cache=300, force_close=False)
            self.session = aiohttp.ClientSession(connector=connector,
                                                 timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                                 auto_decompress=False, skip_auto_headers=("User-Agent",))
            self._send = self._send_aiohttp
        else:
            self.pool = HTTPPool(spec["base_url"], spec["headers"], kernel_stamps=spec["timestamps"] == "kernel")
            self._send = self._send_raw

    async def _connect(self) -> None:
        """Open the raw pool's connections and prebuild requests before t0 (nothing of it is timed)."""
        cap = self.pattern.in_flight_cap
        if self.session is None:
            n = cap if cap is not None else 16
            self.preconnected = await self.pool.preconnect(n, min(10.0, self.timeout_s))
        if self.workload.ticket_free:
            self.prebuild_target = min(256, max(16, cap or 64))
            self.workload.prebuild(self.prebuild_target)

    async def _start_clock(self) -> int | None:
        """t0 (at least 1 ms ahead, or the start time given), the measure window, the pattern started; the
        load's end (None: until the pattern is done)."""
        spec = self.spec
        now = _monotonic_ns()
        self.t0_ns = max(self.start_at_ns or 0, now + 1_000_000)
        self.wall0 = time.time() + (self.t0_ns - now) / NS
        await self._sleep_until(self.t0_ns)
        duration = spec["duration_s"]
        end_ns = self.t0_ns + int(duration * NS) if duration else None
        self.measure_start_ns = self.t0_ns + int(spec["warmup_s"] * NS)
        self.measure_end_ns = (end_ns - int(spec["cooldown_s"] * NS)) if end_ns else None
        self.pattern.start(self.t0_ns)
        self.end_ns = end_ns
        self.presend = self.session is None and self.sem is None
        # closed loop without think time: a completion sends its user's next request right in its
        # callback, not one event-loop turn later through the scheduler
        self.inline = self.presend and hasattr(self.pattern, "poll")
        return end_ns

    async def _send_loop(self, end_ns: int | None) -> None:
        """The scheduler (a state machine over the pattern's tickets): wait for each ticket's time and send it,
        letting reads in between when many are due at once; stop on the pattern's end, the duration (unless
        the evidence-sized stop extends it) or a stop request."""
        slice_start = last_send = slice_busy = 0
        while not self._stopping:
            ticket = await self.pattern.next()
            now = _monotonic_ns()
            if now - last_send > 50_000:  # the scheduler waited: a new slice of sends
                slice_start = now
                slice_busy = len(self.in_flight)  # streams that may have bytes to read
                self._sending = False
            elif slice_busy and now - slice_start > SEND_SLICE_NS:  # many due at once: let reads in between
                self._sending = True
                await asyncio.sleep(0)
                slice_start = _monotonic_ns()
            if ticket is None:
                if self.stop_reason is None:
                    self.stop_reason = "pattern_done"
                break
            if self._stopping:
                break
            if end_ns is not None and ticket.sched_ns >= end_ns:
                if self._extend(now):
                    end_ns = self.end_ns
                else:
                    self.stop_reason = "max_duration" if self.extended else "duration"
                    break
            await self._sleep_until(ticket.sched_ns)
            if self._stopping:
                break
            self._send_ticket(ticket)
            last_send = _monotonic_ns()

    @property
    def records(self) -> list[dict]:
        if self.lines is not None:
            return [json.loads(line) for line in self.lines]
        try:
            self.out.flush()
        except OSError:
            pass  # a full disk: what reached the file is what counts
        with open(self.out_path, encoding="utf-8") as fh:
            text = fh.read()
        lines = [line for line in text.split("\n") if line.strip()]
        self.n_torn = 0
        if lines and not text.endswith("\n"):
            try:
                json.loads(lines[-1])
            except ValueError:  # the last write was cut (disk full): counted, not parsed
                lines.pop()
                self.n_torn = 1
        return [json.loads(line) for line in lines]

    def summary(self) -> dict:
        records = self.records if self.summarize else []
        measured = [r for r in records if r.get("window") == "measure"]
        out = summarize_requests(measured, slo=self.spec["slo"])
        if self.spec.get("lora"):
            out["per_adapter"] = per_adapter(measured)
        check = self.selfcheck.summary(self.n_done)
        out.update(check)
        out.update({
            "n_records": len(records) if self.summarize else self.n_done,
            "n_excluded_warmup": sum(1 for r in records if r.get("window") == "warmup"),
            "n_excluded_cooldown": sum(1 for r in records if r.get("window") == "cooldown"),
            "n_sent": self.n_sent,
            "run_wall_s": getattr(self, "run_wall_s", None),
            "max_backlog": self.max_backlog,
            "n_cancelled": self.n_sent - self.n_done,
            "stop_reason": self.stop_reason,
            "n_ok_measured": self.n_ok_measured, "min_ok_requests": self.spec.get("min_ok_requests"),
            "extended": self.extended,
            "interrupted": self.signal_name,
            "write_error": self.write_error,
            "n_unwritten": self.n_unwritten,
            "n_torn_records": getattr(self, "n_torn", 0),
            "achieved_send_rate": _send_rate(records),
            "sched_lag_ms_p99": check["send_lag_ms_p99"],
            "client_bound_records": sum(1 for r in records if r.get("client_bound")),
            "loadgen_version": __version__,
            "transport": self.transport,
            "max_connections": self.pool.max_open if self.session is None else None,
            "preconnected": getattr(self, "preconnected", None),
            "host": socket.gethostname(),
            "python": sys.version.split()[0],
            "spec": self.spec,
        })
        return out


def _send_rate(records: list[dict]) -> float | None:
    sent = sorted(r["sent_ns"] for r in records if r.get("sent_ns") is not None)
    if len(sent) < 2 or sent[-1] == sent[0]:
        return None
    return (len(sent) - 1) / ((sent[-1] - sent[0]) / NS)

