"""Load patterns behind one interface: when is the next request scheduled?

The scheduler (``runner.Runner``) only calls ``start``, ``await next()``, ``completed`` and ``stop``;
it never looks at the kind. A pattern hands out ``Ticket``s whose ``sched_ns`` is the monotonic time
the request is *due* — every latency is measured from it (no coordinated omission):

* closed loop: a user's next request is due when its previous one ended (+ think time);
* open loop (constant / Poisson / gamma / ramp / trace): due times follow the arrival process,
  whatever the server does; an optional ``max_in_flight`` cap queues on the client and the wait
  shows as ``client_queue_ms``;
* bursty: bursts of B requests worked off by N users, then a pause after the burst has finished;
* sessions: build every session's turns, stay idle (optionally sending eviction-pressure traffic),
  then resume every session.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from abc import ABC, abstractmethod
from collections import deque
from typing import Iterator

NS = 1_000_000_000


class Ticket:
    """One scheduled request."""

    __slots__ = ("sched_ns", "user", "session_id", "turn", "phase", "item", "seq")

    def __init__(self, sched_ns: int, user: int | None = None, session_id: str | None = None,
                 turn: int | None = None, phase: str | None = None, item: dict | None = None):
        self.sched_ns = sched_ns
        self.user = user
        self.session_id = session_id
        self.turn = turn
        self.phase = phase
        self.item = item
        self.seq = -1


class LoadPattern(ABC):
    """What the scheduler needs from a load pattern."""

    #: most requests in flight at once (None = unbounded); the HTTP pool is sized to it
    in_flight_cap: int | None = None
    #: the concurrency label copied into records (None for open loop)
    concurrency: int | None = None

    def start(self, t0_ns: int) -> None:
        self.t0_ns = t0_ns

    @abstractmethod
    async def next(self) -> Ticket | None:
        """The next ticket (may wait for a completion); None when the pattern is exhausted."""

    def completed(self, ticket: Ticket, end_ns: int, ok: bool) -> None:
        """A ticket's request finished (ok or not) at ``end_ns``."""

    def stop(self) -> None:
        """Wake any waiter in ``next`` so that it returns None."""


def draw(rng: random.Random, dist: str, mean: float) -> float:
    if mean <= 0 or dist == "fixed":
        return mean
    if dist == "exponential":
        return rng.expovariate(1.0 / mean)
    if dist == "uniform":
        return rng.uniform(0.0, 2.0 * mean)
    raise ValueError(f"unknown distribution {dist!r}")


class _Waiter:
    """A FIFO of due times (or other items) with an awaitable get and a stop sentinel."""

    def __init__(self) -> None:
        self.items: deque = deque()
        self.waiter: asyncio.Future | None = None
        self.stopped = False

    def put(self, item) -> None:
        self.items.append(item)
        self._wake()

    def put_in_order(self, item) -> None:
        """Insert keeping the FIFO sorted by its first field (scans back from the end: cheap when
        ``item`` belongs near the end, which is the only way it is used)."""
        items = self.items
        i = len(items)
        while i > 0 and items[i - 1][0] > item[0]:
            i -= 1
        items.insert(i, item)
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def get(self):
        while not self.items:
            if self.stopped:
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None
        return self.items.popleft()

    def stop(self) -> None:
        self.stopped = True
        self._wake()


# ---- closed loop --------------------------------------------------------------------------------


class ClosedLoop(LoadPattern):
    """N users, each sending its next request when the previous ended (+ think time).

    Users start at ``spawn_rate`` per second (Locust's term): user i's first request is due at
    t0 + i / spawn_rate. All N due at t0 would be a schedule no client can keep (every send costs tens
    of microseconds), and the first wave would report the client's own send queue as server latency.
    ``spawn_rate=None`` starts every user at t0.
    """

    def __init__(self, concurrency: int, think_time_s: float = 0.0, think_dist: str = "fixed",
                 seed: int = 0, spawn_rate: float | None = None):
        self.concurrency = self.in_flight_cap = concurrency
        self.think_s = think_time_s
        self.think_dist = think_dist
        self.rng = random.Random(seed)
        self.free = _Waiter()
        self.spawn_gap_ns = int(NS / spawn_rate) if spawn_rate else 0
        self.last_spawn_ns = 0

    def start(self, t0_ns: int) -> None:
        super().start(t0_ns)
        gap = self.spawn_gap_ns
        for user in range(self.concurrency):
            self.free.put((t0_ns + user * gap, user))
        self.last_spawn_ns = t0_ns + (self.concurrency - 1) * gap

    async def next(self) -> Ticket | None:
        item = await self.free.get()
        if item is None:
            return None
        return Ticket(item[0], user=item[1])

    def completed(self, ticket: Ticket, end_ns: int, ok: bool) -> None:
        think = draw(self.rng, self.think_dist, self.think_s)
        item = (end_ns + int(think * NS), ticket.user)
        if item[0] < self.last_spawn_ns:  # still spawning: a completion can be due before a later start
            self.free.put_in_order(item)
        else:
            self.free.put(item)

    def poll(self, now_ns: int) -> Ticket | None:
        """A ticket already due, without waiting (None if none is due yet)."""
        items = self.free.items
        if items and items[0][0] <= now_ns and not self.free.stopped:
            t, user = items.popleft()
            return Ticket(t, user=user)
        return None

    def unpoll(self, ticket: Ticket) -> None:
        self.free.items.appendleft((ticket.sched_ns, ticket.user))

    def stop(self) -> None:
        self.free.stop()


class Bursty(LoadPattern):
    """Bursts of ``burst_size`` requests worked off by ``concurrency`` users; ``pause_s`` between bursts.

    A burst's requests are due when a user is free to take them (closed loop inside the burst); the
    next burst starts ``pause_s`` (drawn from ``pause_dist``) after the last request of the burst ended.
    """

    def __init__(self, concurrency: int, burst_size: int, pause_s: float, burst_size_dist: str = "fixed",
                 pause_dist: str = "fixed", seed: int = 0):
        self.concurrency = self.in_flight_cap = concurrency
        self.burst_size = burst_size
        self.burst_size_dist = burst_size_dist
        self.pause_s = pause_s
        self.pause_dist = pause_dist
        self.rng = random.Random(seed)
        self.free = _Waiter()
        self.remaining = 0
        self.outstanding = 0
        self.last_end_ns = 0
        self.burst_index = -1
        self.idle: asyncio.Event | None = None
        self.stopped = False

    def _size(self) -> int:
        if self.burst_size_dist == "poisson":
            # Knuth's method is fine for the burst sizes used here; fall back to normal for large means
            lam = self.burst_size
            if lam > 50:
                return max(1, round(self.rng.gauss(lam, math.sqrt(lam))))
            limit, k, p = math.exp(-lam), 0, 1.0
            while True:
                p *= self.rng.random()
                if p <= limit:
                    return max(1, k)
                k += 1
        if self.burst_size_dist == "uniform":
            return self.rng.randint(1, 2 * self.burst_size - 1)
        return self.burst_size

    def start(self, t0_ns: int) -> None:
        super().start(t0_ns)
        self.idle = asyncio.Event()
        self.last_end_ns = t0_ns

    async def next(self) -> Ticket | None:
        if self.remaining == 0:
            while self.outstanding > 0 and not self.stopped:
                self.idle.clear()
                await self.idle.wait()
            if self.stopped:
                return None
            self.burst_index += 1
            pause = 0.0 if self.burst_index == 0 else draw(self.rng, self.pause_dist, self.pause_s)
            self.burst_start_ns = self.last_end_ns + int(pause * NS)
            self.remaining = self._size()
            self.free = _Waiter()
            for user in range(self.concurrency):
                self.free.put((self.burst_start_ns, user))
        item = await self.free.get()
        if item is None:
            return None
        self.remaining -= 1
        self.outstanding += 1
        return Ticket(item[0], user=item[1], phase=None)

    def completed(self, ticket: Ticket, end_ns: int, ok: bool) -> None:
        self.outstanding -= 1
        self.last_end_ns = max(self.last_end_ns, end_ns)
        if self.remaining > 0:
            self.free.put((end_ns, ticket.user))
        elif self.outstanding == 0 and self.idle is not None:
            self.idle.set()

    def stop(self) -> None:
        self.stopped = True
        self.free.stop()
        if self.idle is not None:
            self.idle.set()


# ---- open loop ---------------------------------------------------------------------------------


class OpenLoop(LoadPattern):
    """Due times from an inter-arrival generator (seconds), independent of the server."""

    def __init__(self, gaps: Iterator[float], max_in_flight: int | None = None):
        self.in_flight_cap = max_in_flight
        self.gaps = gaps
        self.stopped = False

    def start(self, t0_ns: int) -> None:
        super().start(t0_ns)
        self.t_s = 0.0

    async def next(self) -> Ticket | None:
        if self.stopped:
            return None
        try:
            gap = next(self.gaps)
        except StopIteration:
            return None
        t = self.t_s
        self.t_s += gap
        return Ticket(self.t0_ns + int(t * NS))

    def stop(self) -> None:
        self.stopped = True


def constant_gaps(rate: float) -> Iterator[float]:
    gap = 1.0 / rate
    while True:
        yield gap


def poisson_gaps(rate: float, rng: random.Random) -> Iterator[float]:
    while True:
        yield rng.expovariate(rate)


def gamma_gaps(rate: float, cov: float, rng: random.Random) -> Iterator[float]:
    """Gamma inter-arrivals with mean 1/rate and coefficient of variation ``cov`` (1 = Poisson)."""
    shape = 1.0 / (cov * cov)
    scale = 1.0 / (rate * shape)
    while True:
        yield rng.gammavariate(shape, scale)


def ramp_gaps(start_rate: float, end_rate: float, ramp_s: float, mode: str, steps: int, arrival: str,
              rng: random.Random) -> Iterator[float]:
    """Arrivals whose rate goes from ``start_rate`` to ``end_rate`` over ``ramp_s`` (then stays).

    ``linear``: the rate changes continuously; ``steps``: ``steps`` equal plateaus. Poisson arrivals
    are drawn by thinning against the peak rate, constant arrivals step by 1/rate(t).
    """

    def rate_at(t: float) -> float:
        if t >= ramp_s:
            return end_rate
        if mode == "steps":
            k = min(steps - 1, int(t / ramp_s * steps))
            return start_rate + (end_rate - start_rate) * k / (steps - 1)
        return start_rate + (end_rate - start_rate) * t / ramp_s

    peak = max(start_rate, end_rate)
    t = 0.0
    last = 0.0
    while True:
        if arrival == "constant":
            t += 1.0 / rate_at(t)
        else:
            while True:
                t += rng.expovariate(peak)
                if rng.random() * peak <= rate_at(t):
                    break
        yield t - last
        last = t


# ---- trace replay --------------------------------------------------------------------------------


def trace_path(path: str) -> str:
    """A trace path as given, else relative to the repository (the shipped ``data/traces/``), so a
    workflow run in another directory finds the shipped traces."""
    import os

    from kvharness import REPO_ROOT

    if os.path.isabs(path) or os.path.exists(path):
        return path
    shipped = REPO_ROOT / path
    return str(shipped) if shipped.exists() else path


def read_trace(path: str, start_s: float = 0.0, window_s: float | None = None) -> list[dict]:
    """Rows of a Mooncake-format JSONL trace (``timestamp`` ms, ``input_length``, ``output_length``,
    ``hash_ids``; plain or ``.gz``), sorted by time, keeping those whose time from the trace's first row
    is in ``[start_s, start_s + window_s)``; ValueError naming the line on a malformed row."""
    import gzip

    rows: list[dict] = []
    path = trace_path(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"trace {path}:{lineno}: not valid JSON ({exc.msg})") from None
            for key in ("timestamp", "input_length", "output_length"):
                v = row.get(key)
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                    raise ValueError(f"trace {path}:{lineno}: {key}: expected a number >= 0, got {v!r}")
            hids = row.get("hash_ids", [])
            if not isinstance(hids, list) or not all(isinstance(h, int) for h in hids):
                raise ValueError(f"trace {path}:{lineno}: hash_ids: expected a list of integers")
            rows.append(row)
    rows.sort(key=lambda r: r["timestamp"])
    if rows and (start_s > 0 or window_s is not None):
        lo = rows[0]["timestamp"] + start_s * 1000.0
        hi = lo + window_s * 1000.0 if window_s is not None else math.inf
        rows = [r for r in rows if lo <= r["timestamp"] < hi]
    return rows


def trace_rows(p: dict) -> list[dict]:
    """The rows a ``trace`` pattern spec replays (its file and window)."""
    return read_trace(p["path"], p.get("start_s", 0.0), p.get("window_s"))


class TraceReplay(LoadPattern):
    """Sends each trace row at its (scaled) timestamp relative to the first row."""

    def __init__(self, rows: list[dict], time_scale: float = 1.0, max_in_flight: int | None = None):
        self.rows = rows
        self.time_scale = time_scale
        self.in_flight_cap = max_in_flight
        self.i = 0
        self.stopped = False

    async def next(self) -> Ticket | None:
        if self.stopped or self.i >= len(self.rows):
            return None
        row = self.rows[self.i]
        self.i += 1
        offset_ms = (row["timestamp"] - self.rows[0]["timestamp"]) * self.time_scale
        return Ticket(self.t0_ns + int(offset_ms * 1_000_000), item=row)

    def stop(self) -> None:
        self.stopped = True


# ---- sessions ------------------------------------------------------------------------------------


class SessionPhases(LoadPattern):
    """Multi-turn sessions: build (every session's first ``turns`` turns, ``concurrency`` sessions at a
    time, each turn due when the previous ended + think), idle (``idle_s``; Poisson eviction-pressure
    requests at ``pressure_rate`` if given, or exactly ``pressure_count`` requests spread evenly over the
    gap, the resume then waiting until every one of them finished), resume (``resume_turns`` more turns
    per session)."""

    def __init__(self, concurrency: int, sessions: int, turns: int, idle_s: float, resume_turns: int,
                 think_time_s: float = 0.0, think_dist: str = "fixed", pressure_rate: float | None = None,
                 seed: int = 0, pressure_count: int | None = None):
        self.concurrency = self.in_flight_cap = concurrency
        self.sessions = sessions
        self.turns = {"build": turns, "resume": resume_turns}
        self.idle_s = idle_s
        self.think_s = think_time_s
        self.think_dist = think_dist
        self.pressure_rate = pressure_rate
        self.pressure_count = pressure_count or 0
        self.rng = random.Random(seed)
        self.stopped = False
        self.session_turn = [0] * sessions

    def start(self, t0_ns: int) -> None:
        super().start(t0_ns)
        self.phases = deque(["build", "idle", "resume"] if self.turns["resume"] > 0 else ["build"])
        self.phase = None
        self.outstanding = 0
        self.last_end_ns = t0_ns
        self.idle_event = asyncio.Event()
        self._begin_next_phase(t0_ns)

    def _begin_next_phase(self, t_ns: int) -> None:
        self.phase = self.phases.popleft() if self.phases else None
        if self.phase in ("build", "resume"):
            self.pending = deque(range(self.sessions))
            self.left = {}  # session -> turns left in this phase
            self.free = _Waiter()
            self.active_users = self.concurrency
            for user in range(self.concurrency):
                self.free.put((t_ns, user, None))
        elif self.phase == "idle":
            self.idle_start_ns = t_ns
            self.idle_end_ns = t_ns + int(self.idle_s * NS)
            self.pressure_t_ns = t_ns
            self.pressure_sent = self.pressure_open = 0
            self.pressure_last_end_ns = t_ns

    async def next(self) -> Ticket | None:
        while not self.stopped and self.phase is not None:
            if self.phase == "idle":
                if self.pressure_count:
                    if self.pressure_sent < self.pressure_count:
                        gap = (self.idle_end_ns - self.idle_start_ns) // self.pressure_count
                        t = self.idle_start_ns + self.pressure_sent * gap
                        self.pressure_sent += 1
                        self.pressure_open += 1
                        return Ticket(t, phase="pressure")
                    while self.pressure_open > 0 and not self.stopped:
                        self.idle_event.clear()
                        await self.idle_event.wait()
                    self._begin_next_phase(max(self.idle_end_ns, self.pressure_last_end_ns))
                    continue
                if self.pressure_rate:
                    self.pressure_t_ns += int(self.rng.expovariate(self.pressure_rate) * NS)
                    if self.pressure_t_ns < self.idle_end_ns:
                        return Ticket(self.pressure_t_ns, phase="pressure")
                self._begin_next_phase(self.idle_end_ns)
                continue
            item = await self.free.get()
            if item is None:
                return None
            t_ns, user, session = item
            if session is None:
                if not self.pending:
                    self.active_users -= 1
                    if self.active_users == 0:
                        while self.outstanding > 0 and not self.stopped:
                            self.idle_event.clear()
                            await self.idle_event.wait()
                        self._begin_next_phase(self.last_end_ns)
                    continue
                session = self.pending.popleft()
                self.left[session] = self.turns[self.phase]
            self.left[session] -= 1
            self.outstanding += 1
            turn = self.session_turn[session]
            self.session_turn[session] += 1
            ticket = Ticket(t_ns, user=user, session_id=f"s{session}", turn=turn, phase=self.phase)
            ticket.item = {"session": session, "more": self.left[session] > 0}
            return ticket
        return None

    def completed(self, ticket: Ticket, end_ns: int, ok: bool) -> None:
        if ticket.phase == "pressure":
            if self.pressure_count:
                self.pressure_open -= 1
                self.pressure_last_end_ns = max(self.pressure_last_end_ns, end_ns)
                if self.pressure_open == 0:
                    self.idle_event.set()
            return
        self.outstanding -= 1
        self.last_end_ns = max(self.last_end_ns, end_ns)
        session = ticket.item["session"]
        if ticket.item["more"]:
            think = draw(self.rng, self.think_dist, self.think_s)
            self.free.put((end_ns + int(think * NS), ticket.user, session))
        else:
            self.free.put((end_ns, ticket.user, None))
        if self.outstanding == 0:
            self.idle_event.set()

    def stop(self) -> None:
        self.stopped = True
        if getattr(self, "free", None) is not None:
            self.free.stop()
        if getattr(self, "idle_event", None) is not None:
            self.idle_event.set()


def make_pattern(spec: dict) -> LoadPattern:
    """The pattern of a resolved load spec."""
    p = spec["pattern"]
    w = spec["workload"]
    seed = spec["seed"]
    rng = random.Random(seed * 7919 + 17)
    kind = p["kind"]
    if w["kind"] == "sessioned_chat":
        pressure = w.get("pressure") or {}
        return SessionPhases(p["concurrency"], w["sessions"], w["turns"], w["idle_s"], w["resume_turns"],
                             p["think_time_s"], p["think_dist"], pressure.get("rate"), seed, pressure.get("count"))
    if kind == "closed":
        return ClosedLoop(p["concurrency"], p["think_time_s"], p["think_dist"], seed, p["spawn_rate"])
    if kind == "bursty":
        return Bursty(p["concurrency"], p["burst_size"], p["pause_s"], p["burst_size_dist"], p["pause_dist"], seed)
    if kind == "constant":
        return OpenLoop(constant_gaps(p["rate"]), p["max_in_flight"])
    if kind == "poisson":
        return OpenLoop(poisson_gaps(p["rate"], rng), p["max_in_flight"])
    if kind == "gamma":
        return OpenLoop(gamma_gaps(p["rate"], p["cov"], rng), p["max_in_flight"])
    if kind == "ramp":
        ramp_s = p["ramp_s"] or spec["duration_s"] or 60.0
        return OpenLoop(ramp_gaps(p["start_rate"], p["end_rate"], ramp_s, p["mode"], p["steps"], p["arrival"], rng),
                        p["max_in_flight"])
    if kind == "trace":
        return TraceReplay(trace_rows(p), p["time_scale"], p["max_in_flight"])
    raise ValueError(f"unknown pattern kind {kind!r}")  # pragma: no cover - the spec validator rejects it
