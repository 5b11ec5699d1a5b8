"""The continuous-batching engine: one asyncio task runs engine steps back to back.

Each step (one forward pass) decodes one token for every running sequence and computes prefill chunks
for admitted ones, within ``max_num_tokens``; its duration comes from the roofline ``TimingModel``
divided by the speedup. The loop sleeps until the *modelled* end of the step (``loop.call_at``) and the
next step starts at that modelled time, so lateness never accumulates; ``emission_lag`` (actual -
modelled emission time) is exported as ground truth.

Admission is FIFO: a request waits while the batch is full or the device pool cannot hold its prompt.
When a running sequence needs a block and none can be freed it preempts the most recently admitted
sequence (its blocks are released; it re-queues at the head and recomputes, reusing whatever prefix is
still cached -- in mode B that includes blocks onboarded from host or disk).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import zlib
from collections import deque

from kvharness.sim.kvcache import KVCache, block_hashes

WAITING, LOADING, PREFILL, DECODE, DONE = range(5)
WAKE_EARLY_S = 0.0015

VOCAB = ("the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by",
         "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had",
         "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there", "been", "if",
         "more", "when", "will", "would", "who", "so", "no", "out", "up", "into", "do", "any", "time",
         "about", "than", "two", "may", "only", "most", "other", "some", "what")


class RejectedError(Exception):
    """A request the engine can never serve (e.g. its prompt does not fit the device pool)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Sequence:
    __slots__ = ("rid", "n_prompt", "max_tokens", "hashes", "adapter", "sink", "t_arrival",
                 "t_ready", "state", "n_computed", "n_gen", "held_hashes", "n_private", "cached_tokens",
                 "cached_set", "t_first", "t_last", "t_admitted", "word_base", "cancelled", "preemptions",
                 "onboard_blocks", "t_queue_s", "lora_pinned", "t_onboard_s", "onboard_tier")

    def __init__(self, rid, n_prompt, max_tokens, hashes, adapter, sink, t_arrival, t_ready, word_base):
        self.rid = rid
        self.n_prompt = n_prompt
        self.max_tokens = max_tokens
        self.hashes = hashes
        self.adapter = adapter
        self.sink = sink
        self.t_arrival = t_arrival
        self.t_ready = t_ready
        self.state = WAITING
        self.n_computed = 0
        self.n_gen = 0
        self.held_hashes: list[int] = []
        self.n_private = 0
        self.cached_tokens = 0
        self.cached_set = False
        self.t_first = None
        self.t_last = None
        self.t_admitted = None
        self.word_base = word_base
        self.cancelled = False
        self.preemptions = 0
        self.onboard_blocks = 0
        self.t_queue_s = 0.0
        self.lora_pinned = False
        self.t_onboard_s = 0.0
        self.onboard_tier = None


class Engine:
    def __init__(self, timing, kv: KVCache, *, tokens_per_block: int, max_batch_size: int, max_num_tokens: int,
                 speedup: float, seed: int, mode: str, metrics, jitter: float = 0.0, lora=None, watermark: float = 0.01,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.timing = timing
        self.kv = kv
        self.tpb = tokens_per_block
        self.max_batch = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.speedup = float(speedup)
        self.mode = mode
        self.m = metrics
        self.jitter = jitter
        # admission keeps this many blocks obtainable for the decode growth of running sequences
        self.watermark = max(0, int(kv.t0.capacity * watermark))
        self.rng = random.Random(seed)
        self.seed = seed
        self.lora = lora
        self.loop = loop or asyncio.get_event_loop()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._wake = asyncio.Event()
        self._task = None
        self.steps = 0
        self.modelled_busy_s = 0.0
        self.link_free = {"g1g2": 0.0, "g2g3": 0.0}
        self.completed = 0
        self.on_complete = None  # callback(seq) after a sequence finished (fault injection hooks in)
        self._t_end = 0.0
        self._t_woke = 0.0
        self._draining = False

    # -- submission -------------------------------------------------------------------------------
    def submit(self, rid: str, tokens: list, max_tokens: int, sink, adapter: str | None = None) -> Sequence:
        """Queue a request; ``tokens`` are the prompt's words (kvharness.tokens contract) or token ids."""
        now = time.monotonic()  # same clock as loop.time(), without uvloop's per-iteration caching
        n_prompt = len(tokens)
        hashes = block_hashes(tokens, self.tpb, adapter)
        need = self.blocks_for(n_prompt + max(1, max_tokens))
        if need > self.kv.t0.capacity:
            raise RejectedError(400, f"request needs {need} KV blocks of {self.tpb} tokens "
                                     f"(prompt {n_prompt} + {max_tokens} output tokens); the device pool "
                                     f"holds {self.kv.t0.capacity}")
        word_base = zlib.crc32(f"{self.seed}:{rid}".encode()) & 0xFFFF  # deterministic (str hash is salted)
        seq = Sequence(rid, n_prompt, max_tokens, hashes, adapter, sink, now,
                       now + self.timing.request_overhead_s / self.speedup, word_base)
        self.waiting.append(seq)
        self._wake.set()
        return seq

    def cancel(self, seq: Sequence) -> None:
        if seq.state != DONE:
            seq.cancelled = True
            self._wake.set()

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.tpb)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    def start(self) -> None:
        self._task = self.loop.create_task(self._run())
        self._task.add_done_callback(self._engine_died)

    @staticmethod
    def _engine_died(task) -> None:
        """An engine bug must crash the server loudly (the launcher sees the exit), never hang it."""
        if task.cancelled() or task.exception() is None:
            return
        import os
        import traceback
        traceback.print_exception(task.exception(), file=sys.stderr)
        print("kvharness sim: engine loop failed; exiting", file=sys.stderr, flush=True)
        os._exit(1)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    # -- block helpers ----------------------------------------------------------------------------
    def _release(self, seq: Sequence) -> None:
        if seq.held_hashes:
            self.kv.release_t0(seq.held_hashes)
            seq.held_hashes = []
        if seq.n_private:
            self.kv.free_private(seq.n_private)
            seq.n_private = 0
        if seq.lora_pinned and self.lora is not None:
            self.lora.unpin(seq.adapter)
            seq.lora_pinned = False

    def _commit_blocks(self, seq: Sequence) -> None:
        """Prompt blocks completed by prefill become shared, hashed blocks (prefix reuse for others)."""
        full = min(seq.n_computed, seq.n_prompt) // self.tpb
        i = len(seq.held_hashes)
        n = min(full - i, seq.n_private)
        if n > 0:
            new = seq.hashes[i:i + n]
            self.kv.commit_blocks(new)
            seq.n_private -= n
            seq.held_hashes.extend(new)

    def _held(self, seq: Sequence) -> int:
        return len(seq.held_hashes) + seq.n_private

    def _preempt(self, seq: Sequence) -> None:
        self._release(seq)
        seq.state = WAITING
        seq.n_computed = 0
        seq.preemptions += 1
        self.m.preemptions.inc()
        self.running.remove(seq)
        self.waiting.appendleft(seq)

    # -- scheduling -------------------------------------------------------------------------------
    def _admit(self, seq: Sequence, t_now: float) -> bool:
        """Try to admit the head of the queue; False leaves it waiting."""
        target = seq.n_prompt + seq.n_gen  # tokens whose KV must exist before the next token
        limit = min(len(seq.hashes), (target - 1) // self.tpb)  # always recompute >= 1 token
        if self.lora is not None and seq.adapter and not seq.lora_pinned:
            if not self.lora.try_pin(seq.adapter):
                return False
            seq.lora_pinned = True
        kv = self.kv
        n0, onboard = kv.match(seq.hashes, limit)
        hit = seq.hashes[:n0]
        kv.acquire_t0(hit)
        # pin the lower-tier copies before allocating: the allocation's evictions must not take them
        host = [h for h, t in onboard if t == "h"]
        disk = [h for h, t in onboard if t == "d"]
        for h in host:
            kv.t1.acquire(h)
        for h in disk:
            kv.t2.acquire(h)
        need = self.blocks_for(target) - n0  # the prompt only; decode grows on demand (vLLM-style)
        if (self.running and kv.t0_available() - need < self.watermark) or not kv.alloc_private(need):
            kv.release_t0(hit)
            for h in host:
                kv.t1.release(h)
            for h in disk:
                kv.t2.release(h)
            if seq.lora_pinned:
                self.lora.unpin(seq.adapter)
                seq.lora_pinned = False
            return False
        seq.held_hashes = list(hit)
        seq.n_private = need
        matched = (n0 + len(onboard)) * self.tpb
        if not seq.cached_set:
            seq.cached_tokens = matched
            seq.cached_set = True
            kv.record_lookup(len(seq.hashes), n0, onboard)
            seq.t_queue_s = t_now - seq.t_arrival
        seq.t_admitted = t_now
        seq.n_computed = n0 * self.tpb
        self.running.append(seq)
        lora_wait = self.lora.pending_load(seq.adapter) if (self.lora is not None and seq.adapter) else None
        if onboard or lora_wait is not None:
            seq.state = LOADING
            seq.onboard_blocks = len(onboard)
            self.loop.create_task(self._load(seq, onboard, host, [(h, kv.t2.entries[h]) for h in disk], lora_wait))
        else:
            seq.state = PREFILL
        return True

    async def _load(self, seq: Sequence, onboard: list, host: list, disk: list, lora_wait) -> None:
        """Onboard matched T1/T2 blocks (real reads for T2, overlapped with the modelled link transfer) and/or wait for the
        adapter, then the sequence proceeds to prefill with those tokens already computed."""
        t_start = time.monotonic()
        disk_pinned = bool(disk)
        host_pinned = bool(host)
        try:
            if lora_wait is not None:
                await lora_wait
            if onboard:
                kv, st = self.kv, self.kv.stats
                bb = self.timing.kv_bytes_per_token * self.tpb
                # The modelled transfers, FIFO-shared per link (processor sharing approximated), start now,
                # and the real tier-2 read is the same transfer done on this machine's disk, at the same
                # time: the blocks are in when both are done. The modelled time is the floor (the tier's
                # bandwidth, divided by the speedup); a real read slower than that (a busy disk, background
                # fio) shows through, as it would on the box, instead of being added on top of the model.
                now = time.monotonic()
                done_at = now
                if host:
                    done_at = max(done_at, self._link("g1g2", now, len(host) * bb / self.timing.bw_g1_g2))
                if disk:
                    done_at = max(done_at, self._link("g2g3", now, len(disk) * bb / self.timing.bw_g2_g3))
                real_s = 0.0
                try:
                    if disk:
                        real_s = await kv.store.read_blocks([(e.slot, h) for h, e in disk], [e.ready for _, e in disk])
                finally:
                    for h, _e in disk:
                        kv.t2.release(h)
                    disk_pinned = False
                for h in host:
                    kv.t1.release(h)
                host_pinned = False
                now = time.monotonic()
                if done_at > now:
                    await asyncio.sleep(done_at - now)
                if seq.cancelled:
                    return
                # the onboarded blocks become hashed T0 blocks held by the sequence
                for h, _t in onboard:
                    if seq.n_private <= 1:
                        break
                    kv.commit_block(h)
                    seq.n_private -= 1
                    seq.held_hashes.append(h)
                st.onboard_h2d += len(host)
                st.onboard_d2d += len(disk)
                st.matched_tokens += (len(host) + len(disk)) * self.tpb
                seq.n_computed = len(seq.held_hashes) * self.tpb
                dt = time.monotonic() - t_start
                seq.t_onboard_s = dt
                tier = "2" if disk else "1"
                seq.onboard_tier = tier
                self.m.fetch_seconds.labels(tier).observe(dt)
                self.m.fetch_real_io_seconds.observe(real_s)
        except Exception as e:  # pragma: no cover - never leave a sequence stuck in LOADING
            print(f"kvharness sim: onboarding failed for {seq.rid}: {e!r}; recomputing", file=sys.stderr, flush=True)
            seq.cached_tokens = len(seq.held_hashes) * self.tpb
        finally:
            if disk_pinned:
                for h, _e in disk:
                    self.kv.t2.release(h)
            if host_pinned:
                for h in host:
                    self.kv.t1.release(h)
            if seq.state == LOADING:  # a cancelled one is dropped by the next schedule
                seq.state = PREFILL
            self._wake.set()

    def _drain_offloads(self) -> None:
        """The offload cascade of evicted blocks, in small chunks between other loop work."""
        self.kv.flush_offloads(32)
        if self.kv.pending_offloads:
            self.loop.call_soon(self._drain_offloads)
        else:
            self._draining = False

    def _link(self, link: str, now: float, modelled_s: float) -> float:
        start = max(now, self.link_free[link])
        end = start + modelled_s / self.speedup
        self.link_free[link] = end
        return end

    def _schedule(self, t_now: float):
        # Offloads queued by the previous step land before this step touches any tier (normally the
        # drain already did it while that step ran), so decisions do not depend on drain progress.
        if self.kv.pending_offloads:
            self.kv.flush_offloads()
        # drop cancelled sequences
        if any(s.cancelled for s in self.running):
            for s in [s for s in self.running if s.cancelled]:
                if s.state != LOADING:
                    self._release(s)
                    self.running.remove(s)
                    s.state = DONE
        if self.waiting and any(s.cancelled for s in self.waiting):
            self.waiting = deque(s for s in self.waiting if not s.cancelled)

        # decode sequences first: each needs room for one more token
        budget = self.max_num_tokens
        decode: list[Sequence] = []
        for s in list(self.running):
            if s.state != DECODE:  # also skips sequences preempted earlier in this loop
                continue
            # this step writes the KV of the latest generated token: context grows to n_prompt + n_gen
            need = self.blocks_for(s.n_prompt + s.n_gen) - self._held(s)
            if need > 0:
                ok = self.kv.alloc_private(need)
                while not ok:
                    victim = self._pick_victim(exclude=s)
                    if victim is None:
                        break
                    if victim.state == DECODE and victim in decode:
                        decode.remove(victim)
                        budget += 1
                    self._preempt(victim)
                    ok = self.kv.alloc_private(need)
                if not ok:
                    self._preempt(s)
                    continue
                s.n_private += need
            decode.append(s)
            budget -= 1
            if len(decode) >= self.max_batch:
                break

        # chunks for sequences already in prefill, in admission order
        prefill: list[tuple[Sequence, int]] = []
        for s in self.running:
            if budget <= 0:
                break
            if s.state == PREFILL:
                chunk = min(s.n_prompt + s.n_gen - s.n_computed, budget)
                if chunk > 0:
                    prefill.append((s, chunk))
                    budget -= chunk

        # admit from the queue (FIFO, head-of-line) only while this step has token budget left, so a
        # step never admits (and evicts blocks for) more work than it can start
        while budget > 0 and self.waiting and len(self.running) < self.max_batch:
            head = self.waiting[0]
            if head.t_ready > t_now:
                break
            if not self._admit(head, t_now):
                break
            self.waiting.popleft()
            remaining = head.n_prompt + head.n_gen - head.n_computed
            chunk = min(remaining, budget)
            budget -= chunk  # a loading sequence reserves its share too (it prefills once loaded)
            if head.state == PREFILL and chunk > 0:
                prefill.append((head, chunk))
        return decode, prefill

    def _pick_victim(self, exclude: Sequence):
        for s in reversed(self.running):
            if s is not exclude and s.state in (DECODE, PREFILL):
                return s
        return None

    # -- the loop ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = self.loop
        t_start = time.monotonic()
        m = self.m
        while True:
            now = time.monotonic()
            decode, prefill = self._schedule(max(t_start, now) if t_start > now else now)
            if not decode and not prefill:
                # idle: wait for an arrival, an onboarding completion or the head's request overhead
                self._wake.clear()
                timeout = None
                if self.waiting and self.waiting[0].t_ready > now:
                    timeout = self.waiting[0].t_ready - now
                m.queue_depth.set(len(self.waiting))
                m.running.set(len(self.running))
                try:
                    if timeout is not None:
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    else:
                        await self._wake.wait()
                except asyncio.TimeoutError:
                    pass
                t_start = time.monotonic()
                self._t_woke = 0.0
                continue

            ctx = 0
            for s in decode:
                ctx += s.n_prompt + s.n_gen
            pf_tokens = 0
            pairs = 0.0
            for s, c in prefill:
                ctx += s.n_computed
                pf_tokens += c
                pairs += c * (s.n_computed + c / 2.0)
            dur = self.timing.step_s(len(decode), ctx, pf_tokens, pairs)
            if self.jitter:
                dur *= min(1.7, max(0.3, self.rng.gauss(1.0, self.jitter)))
            t_end = t_start + dur / self.speedup
            if self._t_woke:
                m.step_work.observe(time.monotonic() - self._t_woke)
            if self.kv.pending_offloads and not self._draining:
                self._draining = True
                loop.call_soon(self._drain_offloads)  # runs while this step "computes"
            fut = loop.create_future()
            # event-loop timers are millisecond-granular (libuv) and fire late by up to ~1 ms: wake a
            # little early, then sleep the last stretch precisely (blocks the loop < WAKE_EARLY_S)
            h = loop.call_at(t_end - WAKE_EARLY_S, fut.set_result, None)
            try:
                await fut
            except asyncio.CancelledError:
                h.cancel()
                raise
            t_fired = time.monotonic()
            m.timer_late.observe(t_fired - (t_end - WAKE_EARLY_S))
            rest = t_end - t_fired
            if rest > 0:
                time.sleep(rest)
            self._t_woke = time.monotonic()
            self.steps += 1
            self.modelled_busy_s += dur
            actual = time.monotonic()
            lag = actual - t_end
            m.step_seconds.observe(dur)
            m.wake_lag.observe(lag)
            self._t_end = t_end
            self._complete_step(decode, prefill, actual)
            m.queue_depth.set(len(self.waiting))
            m.running.set(len(self.running))
            m.iteration_latency.observe(dur)
            # next step starts at the modelled end (no drift); rebase only after a gross overrun
            t_start = t_end if lag < 0.050 else actual

    def _complete_step(self, decode, prefill, now: float) -> None:
        """Write every token of the step first (that is the latency a client sees), then do the
        bookkeeping: block commits of prefill chunks and the release of finished sequences."""
        finished: list[Sequence] = []
        emitted: list[Sequence] = []
        written: list[float] = []
        emit = self._emit
        for s in decode:
            if s.state == DECODE and not s.cancelled:
                emit(s, finished, emitted, written)
        for s, c in prefill:
            if s.cancelled or s.state != PREFILL:
                continue
            s.n_computed += c
            if s.n_computed >= s.n_prompt + s.n_gen:
                s.state = DECODE
                emit(s, finished, emitted, written)
        # metrics only after every token of the step is on the wire (observing is not free)
        m = self.m
        t_end = self._t_end
        for s, t_written in zip(emitted, written):
            m.emission_lag.observe(t_written - t_end)
            if s.t_first is None:
                s.t_first = now
                m.on_first_token(s, now)
            else:
                m.itl(now - s.t_last)
            s.t_last = now
        for s, _c in prefill:
            if not s.cancelled and s.state != DONE:
                self._commit_blocks(s)
        for s in finished:
            self._commit_blocks(s)
            self._release(s)
            self.running.remove(s)
            self.completed += 1
            self.m.on_finish(s, now)
            if self.on_complete is not None:
                self.on_complete(s)

    def _emit(self, s: Sequence, finished: list, emitted: list, written: list) -> None:
        i = s.n_gen
        s.n_gen += 1
        last = s.n_gen >= s.max_tokens
        if last:
            s.state = DONE
            finished.append(s)
        s.sink.token(VOCAB[(s.word_base + i * 7) % len(VOCAB)], last, s)  # the write first
        emitted.append(s)
        written.append(time.monotonic())  # after the write: what the client gets
