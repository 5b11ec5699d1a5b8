"""Block KV cache with prefix reuse and up to three tiers.

T0 (device pool, G1) holds the blocks of running sequences (private while being filled, hashed once a
prompt block is complete) plus unreferenced hashed blocks kept for prefix reuse. When T0 needs room it
evicts an unreferenced hashed block by the eviction policy. Mode A (``t1_blocks == t2_blocks == 0``):
the block is gone.

Mode B follows KVBM (Dynamo ``lib/llm/src/block_manager/offload.rs``): the tiers are *inclusive* and
written through at registration. Every block that becomes a hashed T0 block (computed, or onboarded
from disk) is copied to T1 (host, G2) — skipped when T1 already holds it, which refreshes its place in
T1's order —, and every block that enters T1 is copied to T2 (disk, G3; real bytes in a file, see
``tier2.py``). A full lower tier makes room by dropping its own victim (it needs no copy further down:
it got one when it entered). Evicting from T0 therefore moves nothing; onboarding copies and keeps the
lower copy. So T0 and T1 do not add up: for a working set cycled through in LRU order, T1 serves it
while it fits ``max(T0, T1)`` and T2 reads start above that (docs/simulator.md).

Block identity is a chained hash: ``h_i = blake2b(h_{i-1} || tokens of block i)`` with the root seeded by
the LoRA adapter, so equal prefixes give equal hashes, different adapters never share KV, and the
hashes are the same in every run (no per-process salt).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from hashlib import blake2b


def block_hashes(tokens: list, tokens_per_block: int, adapter: str | None = None) -> list[int]:
    """Chained 64-bit hashes of every *full* block of ``tokens`` (words per kvharness.tokens, or token ids).

    ``h_i = blake2b(h_{i-1} || block i)``; hashing a block's words directly is equivalent to hashing their
    CRC32 token ids and ~4x cheaper per request. The root is seeded by the LoRA adapter.
    """
    prev = blake2b(adapter.encode(), digest_size=8).digest() if adapter else bytes(8)
    n_full = len(tokens) // tokens_per_block
    out: list[int] = []
    if not n_full:
        return out
    words = isinstance(tokens[0], str)
    for i in range(n_full):
        blk = tokens[i * tokens_per_block:(i + 1) * tokens_per_block]
        data = "\x1f".join(blk).encode() if words else repr(blk).encode()
        prev = blake2b(prev + data, digest_size=8).digest()
        out.append(int.from_bytes(prev, "little", signed=True))
    return out


class Entry:
    __slots__ = ("ref", "hits", "last", "inserted", "ver", "slot", "ready")

    def __init__(self, tick: int):
        self.ref = 0
        self.hits = 0
        self.last = tick
        self.inserted = tick
        self.ver = 0
        self.slot = -1
        self.ready = None  # tier 2: a future while the write is in flight


class TierIndex:
    """Hashed blocks of one tier; unreferenced ones form the eviction order.

    LRU keeps that order in an OrderedDict (O(1) per operation, the hot path: a full pool evicts and
    offloads a block per allocated block). LFU and FIFO use a lazy-deletion heap keyed by (hits, last
    use) and insertion order respectively.
    """

    def __init__(self, name: str, capacity: int, policy: str):
        if policy not in ("lru", "lfu", "fifo"):
            raise ValueError(f"eviction policy must be lru, lfu or fifo, got {policy!r}")
        self.name, self.capacity, self.policy = name, int(capacity), policy
        self.entries: dict[int, Entry] = {}
        self._lru = policy == "lru"
        self._order: OrderedDict = OrderedDict()   # lru: evictable hashes, oldest first
        self._heap: list = []                      # lfu/fifo
        self.n_evictable = 0
        self._tick = 0

    def __len__(self):
        return len(self.entries)

    def __contains__(self, h):
        return h in self.entries

    def _key(self, e: Entry):
        if self.policy == "lfu":
            return (e.hits, e.last)
        return e.inserted

    def _push(self, h: int, e: Entry) -> None:
        if self._lru:
            self._order[h] = None
            self._order.move_to_end(h)
        else:
            e.ver += 1
            heapq.heappush(self._heap, (self._key(e), e.ver, h))

    def add(self, h: int, ref: int = 0, hits: int = 0) -> Entry:
        """Insert block ``h``; ``hits`` is the reuse history it brings from the tier above (LFU keys on it,
        so it is set before the block joins the eviction order)."""
        self._tick += 1
        e = Entry(self._tick)
        e.ref = ref
        e.hits = hits
        self.entries[h] = e
        if ref == 0:
            self.n_evictable += 1
            self._push(h, e)
        return e

    def acquire(self, h: int) -> Entry:
        """Reference a block (a hit): it leaves the eviction order while referenced."""
        e = self.entries[h]
        self._tick += 1
        e.hits += 1
        e.last = self._tick
        if e.ref == 0:
            self.n_evictable -= 1
            if self._lru:
                del self._order[h]
            else:
                e.ver += 1  # invalidates its heap item
        e.ref += 1
        return e

    def release(self, h: int) -> None:
        e = self.entries[h]
        e.ref -= 1
        if e.ref == 0:
            self.n_evictable += 1
            self._push(h, e)

    def touch(self, h: int) -> None:
        """A hit on an unreferenced block (lower tiers): update its recency/frequency."""
        e = self.entries[h]
        self._tick += 1
        e.hits += 1
        e.last = self._tick
        if e.ref == 0:
            self._push(h, e)

    def pop_victim(self):
        if self._lru:
            if not self._order:
                return None
            h, _ = self._order.popitem(last=False)
            self.n_evictable -= 1
            return h, self.entries.pop(h)
        heap = self._heap
        while heap:
            _, ver, h = heapq.heappop(heap)
            e = self.entries.get(h)
            if e is not None and e.ref == 0 and e.ver == ver:
                del self.entries[h]
                self.n_evictable -= 1
                return h, e
        return None

    def compact(self) -> None:
        if not self._lru and len(self._heap) > 4 * (self.n_evictable + 64):
            self._heap = [(k, v, h) for (k, v, h) in self._heap
                          if (e := self.entries.get(h)) is not None and e.ref == 0 and e.ver == v]
            heapq.heapify(self._heap)


class KVCache:
    """Tier bookkeeping; the engine owns timing. ``store`` (tier 2 file store) may be None."""

    def __init__(self, t0_blocks: int, t1_blocks: int, t2_blocks: int, policy: str, store=None,
                 stats=None, hit_window: int = 256, disk_offload_filter: bool = False,
                 defer_offload: bool = False):
        # defer_offload: a newly registered T0 block only queues its copy; the T1/T2 writes run later in
        # small chunks (flush_offloads), off the engine's critical path, as KVBM offloads asynchronously.
        # A lookup that meets a queued block flushes the queue first, so no hit is ever missed.
        self.defer_offload = defer_offload
        self._pending: dict[int, Entry] = {}
        # KVBM's disk offload filter: a block goes to disk only once its frequency (1, doubling per hit)
        # is >= 2, i.e. after it was reused at least once (decay is not modelled)
        self.disk_offload_filter = disk_offload_filter
        self.t0 = TierIndex("t0", t0_blocks, policy)
        self.t1 = TierIndex("t1", t1_blocks, policy)
        self.t2 = TierIndex("t2", t2_blocks if store is not None else 0, policy)
        self.private = 0
        self.store = store
        self.stats = stats if stats is not None else KVStats()
        self._window: deque = deque(maxlen=hit_window)
        self._win = [0, 0, 0]  # queried, host hits, disk hits

    def drop_unreferenced(self, include_host: bool = False) -> int:
        """Forget every cached block no running sequence holds (vLLM's /reset_prefix_cache; with
        ``include_host`` also the host tier, like SGLang's /flush_cache). Queued offloads are dropped."""
        self._pending.clear()
        n = 0
        for idx in ((self.t0, self.t1) if include_host else (self.t0,)):
            while idx.pop_victim() is not None:
                n += 1
        return n

    # -- capacity -----------------------------------------------------------------------------
    @property
    def t0_free(self) -> int:
        return self.t0.capacity - len(self.t0.entries) - self.private

    @property
    def t0_used(self) -> int:
        return len(self.t0.entries) + self.private

    def t0_available(self) -> int:
        """Blocks obtainable now: free plus evictable."""
        return self.t0_free + self.t0.n_evictable

    def alloc_private(self, n: int) -> bool:
        """Reserve ``n`` T0 blocks, evicting unreferenced cached blocks as needed."""
        if n <= 0:
            return True
        if self.t0_available() < n:
            return False
        while self.t0_free < n:
            self._evict_t0()
        self.private += n
        return True

    def free_private(self, n: int) -> None:
        self.private -= n

    def _evict_t0(self) -> None:
        victim = self.t0.pop_victim()
        if victim is None:  # pragma: no cover - guarded by t0_available
            raise RuntimeError("no evictable T0 block")
        self.stats.t0_evictions += 1  # its lower-tier copy (written at registration) stays; nothing moves
        self.t0.compact()

    def _register(self, h: int, e: Entry) -> None:
        """A block became a hashed T0 block: copy it down (now, or queued with ``defer_offload``)."""
        if not (self.t1.capacity or self.t2.capacity):
            return
        if self.defer_offload:
            self._pending[h] = e
        else:
            self._offload(h, e)

    def _offload(self, h: int, e: Entry) -> None:
        if self.t1.capacity > 0:
            self._offload_to_t1(h, e)
        elif self.t2.capacity > 0:
            self._offload_to_t2(h, e, from_device=True)

    @property
    def pending_offloads(self) -> int:
        return len(self._pending)

    def flush_offloads(self, limit: int | None = None) -> int:
        """Write the queued copies of registered blocks down (T1, then T2), oldest first; at most
        ``limit`` blocks."""
        pending = self._pending
        n = 0
        while pending and (limit is None or n < limit):
            h = next(iter(pending))
            e = pending.pop(h)
            self._offload(h, e)
            n += 1
        return n

    def _offload_to_t1(self, h: int, e0: Entry) -> None:
        if h in self.t1:  # already there (KVBM skips the copy); the registration counts as a use
            self.t1.touch(h)
            if self.disk_offload_filter and self.t2.capacity and h not in self.t2:
                self._offload_to_t2(h, self.t1.entries[h], from_device=False)  # reused now: may pass the filter
            return
        while len(self.t1) >= self.t1.capacity:
            if self.t1.pop_victim() is None:
                return  # every T1 block is pinned: the copy is skipped, as KVBM skips it on a full pool
            self.stats.t1_evictions += 1
        e1 = self.t1.add(h, hits=e0.hits)  # the block's reuse history travels with it
        self.stats.offload_d2h += 1
        self.t1.compact()
        if self.t2.capacity > 0:  # a block registered on the host is copied on to disk
            self._offload_to_t2(h, e1, from_device=False)

    def _offload_to_t2(self, h: int, e: Entry, from_device: bool) -> None:
        if h in self.t2:
            self.t2.touch(h)
            return
        if self.disk_offload_filter and e.hits < 1:
            self.stats.t2_filtered += 1
            return
        while len(self.t2) >= self.t2.capacity:
            victim = self.t2.pop_victim()
            if victim is None:
                return
            self.stats.t2_evictions += 1
            self.store.free_slot(victim[1].slot, victim[1].ready)
        ne = self.t2.add(h, hits=e.hits)
        ne.slot = self.store.alloc_slot()
        ne.ready = self.store.write_block(ne.slot, h)
        if from_device:
            self.stats.offload_d2d += 1
        else:
            self.stats.offload_h2d += 1
        self.t2.compact()

    # -- lookup -------------------------------------------------------------------------------
    def match(self, hashes: list[int], limit: int) -> tuple[int, list[tuple[int, str]]]:
        """Longest cached prefix of ``hashes[:limit]``: (number of leading T0 blocks, then the blocks
        that continue it from T1 ('h') or T2 ('d'))."""
        t0e = self.t0.entries
        n0 = 0
        while n0 < limit and hashes[n0] in t0e:
            n0 += 1
        onboard: list[tuple[int, str]] = []
        if self.t1.capacity or self.t2.capacity:
            pending = self._pending
            if pending and any(hashes[i] in pending for i in range(n0, limit)):
                # a block of the walk is on its way down: land the whole queue *before* the walk, so the
                # cascade's evictions cannot remove a block this walk has already listed for onboarding
                self.flush_offloads()
            i = n0
            while i < limit:
                h = hashes[i]
                if h in self.t1.entries:
                    onboard.append((h, "h"))
                elif h in self.t2.entries:
                    onboard.append((h, "d"))
                else:
                    break
                i += 1
        return n0, onboard

    def record_lookup(self, n_blocks: int, n0: int, onboard: list) -> None:
        """Count one admitted lookup (not every head-of-line retry): per-tier hits and misses, and the
        sliding window behind the kvbm hit-rate gauges (share of blocks past the T0 match found in
        T1 / T2)."""
        st = self.stats
        nh = sum(1 for _, t in onboard if t == "h")
        nd = len(onboard) - nh
        st.t0_hit_blocks += n0
        st.t0_miss_blocks += n_blocks - n0
        if self.t1.capacity or self.t2.capacity:
            queried = n_blocks - n0
            st.t1_hit_blocks += nh
            st.t1_miss_blocks += queried - nh
            st.t2_hit_blocks += nd
            st.t2_miss_blocks += queried - nh - nd
            if queried > 0:
                self._record_window(queried, nh, nd)

    def _record_window(self, queried: int, host: int, disk: int) -> None:
        if len(self._window) == self._window.maxlen:
            q, hh, dd = self._window[0]
            self._win[0] -= q
            self._win[1] -= hh
            self._win[2] -= dd
        self._window.append((queried, host, disk))
        self._win[0] += queried
        self._win[1] += host
        self._win[2] += disk

    @property
    def host_hit_rate(self) -> float:
        return self._win[1] / self._win[0] if self._win[0] else 0.0

    @property
    def disk_hit_rate(self) -> float:
        return self._win[2] / self._win[0] if self._win[0] else 0.0

    def acquire_t0(self, hashes) -> None:
        for h in hashes:
            self.t0.acquire(h)

    def release_t0(self, hashes) -> None:
        t0 = self.t0
        if not t0._lru:
            for h in hashes:
                t0.release(h)
            return
        # the hot path (a finished sequence releases all its blocks), inlined for LRU
        entries, order = t0.entries, t0._order
        n = 0
        for h in hashes:
            e = entries[h]
            e.ref -= 1
            if e.ref == 0:
                order[h] = None  # absent while referenced: appended as most recently used
                n += 1
        t0.n_evictable += n

    def commit_block(self, h: int) -> None:
        """A private block of a sequence has become a complete, hashed block: share it (a new one is
        registered: its copy goes down to T1/T2)."""
        self.private -= 1
        if h in self.t0.entries:
            self.t0.acquire(h)
        else:
            self._register(h, self.t0.add(h, ref=1))

    def commit_blocks(self, hashes) -> None:
        """``commit_block`` for each of ``hashes`` (a prefill chunk completes many blocks at once)."""
        t0 = self.t0
        entries = t0.entries
        tick = t0._tick
        lower = self.t1.capacity or self.t2.capacity
        for h in hashes:
            e = entries.get(h)
            if e is not None:
                t0.acquire(h)
            else:
                tick += 1
                e = Entry(tick)
                e.ref = 1
                entries[h] = e
                if lower:
                    self._register(h, e)
        t0._tick = max(t0._tick, tick)
        self.private -= len(hashes)


class KVStats:
    __slots__ = ("offload_d2h", "offload_h2d", "offload_d2d", "onboard_h2d", "onboard_d2d", "matched_tokens",
                 "t0_evictions", "t1_evictions", "t2_evictions", "t0_hit_blocks", "t0_miss_blocks",
                 "t1_hit_blocks", "t1_miss_blocks", "t2_hit_blocks", "t2_miss_blocks", "t2_filtered")

    def __init__(self):
        for s in self.__slots__:
            setattr(self, s, 0)
