"""Tier 2 (G3, disk) as real bytes in a real file, written and read with real I/O.

One file per server process, ``<tier2_dir>/kvsim-g3-<pid>.bin``, holds fixed-size slots, one per block,
like KVBM's disk pool. Slot bytes = real block bytes x ``--block-bytes-scale`` rounded up to 4 KiB so that
O_DIRECT works; O_DIRECT (bypassing the page cache, so reads really reach the device) is used where the
filesystem supports it, else buffered I/O followed by ``posix_fadvise(DONTNEED)``. Every slot starts
with the block hash, so each read is verified. I/O runs on a small thread pool; the event loop only
awaits futures.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor

ALIGN = 4096


def _round_up(n: int, a: int = ALIGN) -> int:
    return max(a, (n + a - 1) // a * a)


class Tier2Store:
    def __init__(self, directory: str, block_bytes: int, scale: float, capacity_blocks: int,
                 loop: asyncio.AbstractEventLoop, io_threads: int = 4, prefix: str = "kvsim-g3",
                 on_io=None):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{prefix}-{os.getpid()}.bin")
        self.slot_bytes = _round_up(int(block_bytes * scale))
        self.capacity = capacity_blocks
        self.loop = loop
        self.direct = False
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
        if hasattr(os, "O_DIRECT") and os.environ.get("KVSIM_NO_O_DIRECT") != "1":
            try:
                self.fd = os.open(self.path, flags | os.O_DIRECT, 0o644)
                self.direct = True
                self._probe()
            except OSError:
                try:
                    os.close(self.fd)
                except Exception:
                    pass
                self.direct = False
        if not self.direct:
            self.fd = os.open(self.path, flags, 0o644)
        self.pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="kvsim-t2")
        self._free: list[int] = []
        self._next = 0
        self.on_io = on_io  # callback(kind, nbytes, seconds) on the loop thread
        self.bytes_written = 0
        self.bytes_read = 0
        self.verify_failures = 0

    def _probe(self) -> None:
        buf = mmap.mmap(-1, ALIGN)
        os.pwritev(self.fd, [buf], 0)
        os.preadv(self.fd, [buf], 0)
        os.ftruncate(self.fd, 0)

    # -- slots ----------------------------------------------------------------------------------
    def alloc_slot(self) -> int:
        if self._free:
            return self._free.pop()
        s = self._next
        self._next += 1
        return s

    def free_slot(self, slot: int, pending=None) -> None:
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda _f: self._free.append(slot))
        else:
            self._free.append(slot)

    # -- I/O (thread side) ------------------------------------------------------------------------
    def _write_sync(self, slot: int, h: int) -> float:
        buf = mmap.mmap(-1, self.slot_bytes)
        buf[:8] = struct.pack("<q", h)
        t = time.perf_counter()
        os.pwritev(self.fd, [buf], slot * self.slot_bytes)
        if not self.direct:
            os.fdatasync(self.fd)
            os.posix_fadvise(self.fd, slot * self.slot_bytes, self.slot_bytes, os.POSIX_FADV_DONTNEED)
        dt = time.perf_counter() - t
        buf.close()
        return dt

    def _read_sync(self, slots_hashes: list[tuple[int, int]]) -> tuple[float, int]:
        """Read each (slot, hash); returns (seconds, verify failures)."""
        fails = 0
        buf = mmap.mmap(-1, self.slot_bytes)
        t = time.perf_counter()
        for slot, h in slots_hashes:
            off = slot * self.slot_bytes
            if not self.direct:
                os.posix_fadvise(self.fd, off, self.slot_bytes, os.POSIX_FADV_DONTNEED)
            os.preadv(self.fd, [buf], off)
            if struct.unpack("<q", buf[:8])[0] != h:
                fails += 1
        dt = time.perf_counter() - t
        buf.close()
        return dt, fails

    # -- loop side --------------------------------------------------------------------------------
    def write_block(self, slot: int, h: int) -> asyncio.Future:
        fut = self.loop.run_in_executor(self.pool, self._write_sync, slot, h)
        self.bytes_written += self.slot_bytes

        def done(f):
            if not f.cancelled() and f.exception() is None and self.on_io:
                self.on_io("write", self.slot_bytes, f.result())
        fut.add_done_callback(done)
        return fut

    async def read_blocks(self, slots_hashes: list[tuple[int, int]], pending: list) -> float:
        """Read blocks (waiting first for their writes if still in flight); returns the real seconds."""
        t = time.perf_counter()
        waits = [p for p in pending if p is not None and not p.done()]
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)
        # split across the pool so reads run at a queue depth > 1 like a real loader
        n = len(slots_hashes)
        k = min(4, max(1, n // 4))
        parts = [slots_hashes[i::k] for i in range(k)]
        results = await asyncio.gather(*(self.loop.run_in_executor(self.pool, self._read_sync, p) for p in parts))
        fails = sum(r[1] for r in results)
        self.verify_failures += fails
        nbytes = n * self.slot_bytes
        self.bytes_read += nbytes
        dt = time.perf_counter() - t
        if self.on_io:
            self.on_io("read", nbytes, dt)
        return dt

    def close(self, remove: bool = True) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        try:
            os.close(self.fd)
        except OSError:
            pass
        if remove:
            try:
                os.unlink(self.path)
            except OSError:
                pass
