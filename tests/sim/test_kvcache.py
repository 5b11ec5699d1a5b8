"""Unit tests of the block KV index: chained hashes, eviction policies, the offload cascade."""

from __future__ import annotations

import asyncio

import pytest

from kvharness.sim.kvcache import KVCache, TierIndex, block_hashes


def test_chained_hashes_share_prefixes_only():
    a = [f"w{i}" for i in range(100)]
    b = a[:64] + ["other"] + a[65:]
    ha, hb = block_hashes(a, 32), block_hashes(b, 32)
    assert len(ha) == 3  # full blocks only
    assert ha[:2] == hb[:2] and ha[2] != hb[2]
    # a change in block 0 changes every later hash (chaining), an adapter changes the root
    c = ["x"] + a[1:]
    assert all(x != y for x, y in zip(block_hashes(c, 32), ha))
    assert block_hashes(a, 32, adapter="ad") != ha
    assert block_hashes(a, 32) == ha  # deterministic
    assert block_hashes([1, 2, 3, 4], 2) == block_hashes([1, 2, 3, 4], 2)


@pytest.mark.parametrize("policy,expected", [("lru", [3, 1, 2]), ("fifo", [1, 2, 3]), ("lfu", [3, 2, 1])])
def test_eviction_policies(policy, expected):
    t = TierIndex("t", 10, policy)
    for h in (1, 2, 3):
        t.add(h)
    t.touch(1)
    t.touch(1)
    t.touch(2)          # hits: 1 -> 2, 2 -> 1, 3 -> 0; recency: 3 < 1 < 2; insertion: 1 < 2 < 3
    order = [t.pop_victim()[0] for _ in range(3)]
    assert order == expected
    assert t.pop_victim() is None


def test_lfu_orders_an_inserted_block_by_the_hits_it_brings():
    # an offloaded block arrives in the lower tier with its reuse history; LFU must key on it from the
    # start (it used to be set after the block had joined the heap with 0 hits, so it went first)
    t = TierIndex("t", 10, "lfu")
    t.add(1, hits=5)
    t.add(2)
    t.add(3, hits=2)
    assert [t.pop_victim()[0] for _ in range(3)] == [2, 3, 1]


def test_referenced_blocks_are_never_evicted():
    t = TierIndex("t", 10, "lru")
    t.add(1)
    t.add(2)
    t.acquire(1)
    assert t.pop_victim()[0] == 2 and t.pop_victim() is None
    t.release(1)
    assert t.pop_victim()[0] == 1


class FakeStore:
    def __init__(self):
        self.writes, self.freed, self.next = [], [], 0

    def alloc_slot(self):
        self.next += 1
        return self.next

    def free_slot(self, slot, pending=None):
        self.freed.append(slot)

    def write_block(self, slot, h):
        self.writes.append((slot, h))
        return None


def put(kv, h):
    """A sequence computes block ``h`` (registration) and finishes: an unreferenced hashed T0 block."""
    assert kv.alloc_private(1)
    kv.commit_block(h)
    kv.release_t0([h])


def test_mode_b_writes_through_at_registration_and_t0_evictions_move_nothing():
    store = FakeStore()
    kv = KVCache(4, 2, 3, "lru", store=store)
    for h in range(4):
        put(kv, h)  # each registration copies the block to T1, and T1's new block on to T2
    st = kv.stats
    assert st.offload_d2h == 4 and st.offload_h2d == 4 and st.t1_evictions == 2 and st.t2_evictions == 1
    assert set(kv.t1.entries) == {2, 3} and set(kv.t2.entries) == {1, 2, 3}
    assert [h for _, h in store.writes] == [0, 1, 2, 3]
    assert kv.alloc_private(4)  # evicts all four T0 blocks: their copies are already below
    assert st.t0_evictions == 4 and st.offload_d2h == 4 and st.offload_h2d == 4
    assert set(kv.t1.entries) == {2, 3} and set(kv.t2.entries) == {1, 2, 3}
    n0, onboard = kv.match([1, 2, 3], 3)
    assert n0 == 0 and onboard == [(1, "d"), (2, "h"), (3, "h")]
    kv.record_lookup(3, n0, onboard)
    assert kv.host_hit_rate == 2 / 3 and kv.disk_hit_rate == 1 / 3
    kv.free_private(4)
    kv.commit_block(1) if kv.alloc_private(1) else None  # onboarded from disk: registered again ...
    assert set(kv.t1.entries) == {3, 1}                  # ... so it is copied to the host (T1 inclusive)


def test_mode_a_evictions_are_lost():
    kv = KVCache(2, 0, 0, "lru")
    kv.t0.add(7)
    kv.t0.add(8)
    assert kv.alloc_private(2)
    assert kv.stats.t0_evictions == 2 and kv.stats.offload_d2h == 0
    assert kv.match([7, 8], 2) == (0, [])
    assert not kv.alloc_private(1)  # private blocks are not evictable


def test_tier2_store_writes_and_verifies_real_bytes(tmp_path):
    from kvharness.sim.tier2 import Tier2Store

    async def run():
        loop = asyncio.get_running_loop()
        st = Tier2Store(str(tmp_path), block_bytes=2 << 20, scale=1 / 32, capacity_blocks=8, loop=loop)
        try:
            slots = [st.alloc_slot() for _ in range(5)]
            futs = [st.write_block(s, 1000 + s) for s in slots]
            await asyncio.gather(*set(futs))
            secs = await st.read_blocks([(s, 1000 + s) for s in slots], futs)
            bad = await st.read_blocks([(slots[0], 42)], [])
            return st, secs, bad
        finally:
            st.close(remove=False)

    st, secs, _ = asyncio.run(run())
    assert st.slot_bytes == 65536
    assert (tmp_path / st.path.split("/")[-1]).stat().st_size == 5 * 65536
    assert st.bytes_written == 5 * 65536 and st.bytes_read == 6 * 65536
    assert st.verify_failures == 1 and secs > 0


def test_disk_offload_filter_keeps_never_reused_blocks_off_disk():
    store = FakeStore()
    kv = KVCache(2, 1, 4, "lru", store=store, disk_offload_filter=True)
    put(kv, 1)
    put(kv, 2)                  # both registered once: copied to the host, kept off disk
    assert not store.writes and kv.stats.t2_filtered == 2
    assert kv.alloc_private(2)  # both leave T0
    kv.free_private(2)
    put(kv, 2)                  # block 2 is computed again: its host copy is reused ...
    written = {h for _, h in store.writes}
    assert written == {2}       # ... so it may reach disk; block 1 never does


def test_match_never_lists_a_block_its_own_flush_evicts():
    # issue 24: match() used to land queued offloads in the middle of its walk; the landing evicted
    # from T1 a block the walk had already listed, and the engine's kv.t1.acquire raised KeyError
    kv = KVCache(t0_blocks=1, t1_blocks=1, t2_blocks=0, policy="lru", defer_offload=True)
    put(kv, 101)
    kv.flush_offloads()                    # 101 fills T1
    assert kv.alloc_private(1)             # evicts 101 from T0
    kv.commit_block(102)                   # 102 registered: its copy is queued, not flushed
    kv.release_t0([102])
    assert kv.alloc_private(1)             # evicts 102 from T0 (its copy still queued)
    n0, onboard = kv.match([101, 102], limit=2)
    for h, tier in onboard:                # what the engine does next must not raise
        (kv.t1 if tier == "h" else kv.t2).acquire(h)
    assert n0 == 0 and onboard == []       # landing 102 pushed 101 out of the one-block T1 first


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("defer", [False, True])
def test_random_sequences_keep_the_tier_invariants(seed, defer):
    """Property test: random register / reuse / evict / flush / match sequences against the tiers'
    invariants — capacities never exceeded, every listed onboard block present in the tier it is listed
    for (and pinnable), T0 evictions move nothing (the copies were written at registration), and a
    block registered and flushed is in T1 and T2 (inclusive tiers) when they have unpinned room."""
    import random

    rng = random.Random(seed)
    store = FakeStore()
    caps = (rng.randint(1, 6), rng.randint(1, 6), rng.randint(0, 8))
    policy = rng.choice(["lru", "lfu", "fifo"])
    kv = KVCache(*caps, policy, store=store if caps[2] else None, defer_offload=defer)
    universe = range(1, 3 * sum(caps) + 3)

    def check():
        assert len(kv.t0) + kv.private <= kv.t0.capacity
        assert len(kv.t1) <= kv.t1.capacity and len(kv.t2) <= kv.t2.capacity

    for _ in range(150):
        op = rng.random()
        if op < 0.35:  # a request: match a random chain, pin, allocate, compute the rest, finish
            chain = rng.sample(universe, rng.randint(1, 4))
            n0, onboard = kv.match(chain, len(chain))
            for h, tier in onboard:
                assert h in (kv.t1 if tier == "h" else kv.t2).entries
            hit = chain[:n0]
            kv.acquire_t0(hit)
            pinned = [(kv.t1 if t == "h" else kv.t2, h) for h, t in onboard]
            for idx, h in pinned:
                idx.acquire(h)
            need = len(chain) - n0
            if kv.alloc_private(need):
                fresh = [h for h in chain[n0:] if h not in kv.t0.entries]
                kv.free_private(need - len(fresh))
                kv.commit_blocks(fresh)
                kv.release_t0(fresh)
            for idx, h in pinned:
                idx.release(h)
            kv.release_t0(hit)
        elif op < 0.6:  # room for private blocks: T0 evictions, which must not touch the lower tiers
            before = (set(kv.t1.entries), set(kv.t2.entries), kv.pending_offloads)
            n = rng.randint(1, caps[0])
            if kv.alloc_private(n):
                assert (set(kv.t1.entries), set(kv.t2.entries), kv.pending_offloads) == before
                kv.free_private(n)
        elif op < 0.75:
            kv.flush_offloads(rng.choice([None, 1, 2]))
        else:  # register one new block and land its copy
            h = rng.choice(universe)
            if h not in kv.t0.entries and kv.alloc_private(1):
                kv.flush_offloads()
                new_to_host = h not in kv.t1.entries  # a host copy already there is only refreshed
                kv.commit_block(h)
                kv.release_t0([h])
                kv.flush_offloads()
                assert h in kv.t1.entries
                if caps[2] and new_to_host:
                    assert h in kv.t2.entries
        check()
@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo"])
def test_bulk_commit_and_release_keep_counts_consistent(policy):
    kv = KVCache(8, 0, 0, policy)
    assert kv.alloc_private(6)
    kv.commit_blocks([1, 2, 3])       # a prefill chunk completed three blocks
    kv.commit_blocks([1])             # another sequence computed block 1 too: shared, not duplicated
    assert kv.private == 2 and len(kv.t0) == 3 and kv.t0.entries[1].ref == 2
    kv.release_t0([1, 2, 3])
    assert kv.t0.n_evictable == 2 and kv.t0_available() == 8 - 3 - 2 + 2
    kv.release_t0([1])
    assert kv.t0.n_evictable == 3
    victims = {kv.t0.pop_victim()[0] for _ in range(3)}
    assert victims == {1, 2, 3} and kv.t0.pop_victim() is None


def test_tier2_store_removes_files_of_dead_sims_only(tmp_path):
    import os
    import subprocess

    from kvharness.sim.tier2 import Tier2Store

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f"kvsim-g3-{dead.pid}.bin").write_bytes(b"x")
    (tmp_path / f"kvsim-g3-{os.getppid()}.bin").write_bytes(b"x")  # a live process: kept
    (tmp_path / "kvsim-g3-notapid.bin").write_bytes(b"x")
    (tmp_path / "other.bin").write_bytes(b"x")

    async def run():
        st = Tier2Store(str(tmp_path), 2 << 20, 1 / 32, 4, asyncio.get_running_loop())
        st.close()
        return st

    st = asyncio.run(run())
    assert st.removed_orphans == [f"kvsim-g3-{dead.pid}.bin"]
    assert sorted(os.listdir(tmp_path)) == sorted([f"kvsim-g3-{os.getppid()}.bin", "kvsim-g3-notapid.bin", "other.bin"])
