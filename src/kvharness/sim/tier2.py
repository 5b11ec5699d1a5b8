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
import sys
import threading
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
        self.removed_orphans = self._remove_orphans(directory, prefix)
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
        self.io_errors = {"write": 0, "read": 0}  # blocks whose tier-2 write / read raised (ENOSPC, EIO)
        self._io_error_logged = False
        self.reads = 0
        self.io_threads = io_threads
        self._batch = None
        self._tls = threading.local()

    @staticmethod
    def _remove_orphans(directory: str, prefix: str) -> list[str]:
        """Delete tier-2 files left by simulator processes that no longer exist (a SIGKILLed sim cannot
        clean up); a file whose pid is alive, or whose name does not parse, is left alone."""
        removed = []
        for name in os.listdir(directory):
            if not (name.startswith(prefix + "-") and name.endswith(".bin")):
                continue
            try:
                pid = int(name[len(prefix) + 1:-4])
            except ValueError:
                continue
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
                continue  # alive (or not ours to judge)
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except OSError:
                pass
        return removed

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
    IO_BATCH = 32  # blocks per syscall at most (KVBM's offload batch size)

    def _runs(self, items: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        """Group (slot, hash) pairs into runs of consecutive slots (<= IO_BATCH): one syscall per run."""
        runs: list[list[tuple[int, int]]] = []
        cap = self.IO_BATCH
        for slot, h in sorted(items):
            if runs and runs[-1][-1][0] + 1 == slot and len(runs[-1]) < cap:
                runs[-1].append((slot, h))
            elif not (runs and runs[-1][-1][0] == slot):
                runs.append([(slot, h)])
        return runs

    def _buffer(self) -> mmap.mmap:
        """A page-aligned buffer per I/O thread, allocated and faulted in once: no mmap/munmap per I/O
        (those take the address-space lock and stall the event-loop thread)."""
        buf = getattr(self._tls, "buf", None)
        if buf is None:
            buf = mmap.mmap(-1, self.slot_bytes * self.IO_BATCH)
            buf.write(bytes(len(buf)))
            self._tls.buf = buf
        return buf

    def _write_many_sync(self, items: list[tuple[int, int]]) -> float:
        sb = self.slot_bytes
        buf = self._buffer()
        t = time.perf_counter()
        for run in self._runs(items):
            for i, (_slot, h) in enumerate(run):
                struct.pack_into("<q", buf, i * sb, h)
            off = run[0][0] * sb
            n = sb * len(run)
            os.pwritev(self.fd, [memoryview(buf)[:n]], off)
            if not self.direct:
                os.fdatasync(self.fd)
                os.posix_fadvise(self.fd, off, n, os.POSIX_FADV_DONTNEED)
        return time.perf_counter() - t

    def _read_sync(self, items: list[tuple[int, int]]) -> tuple[float, int]:
        """Read each (slot, hash), verifying the hash; returns (seconds, verify failures)."""
        sb = self.slot_bytes
        buf = self._buffer()
        fails = 0
        t = time.perf_counter()
        for run in self._runs(items):
            off = run[0][0] * sb
            n = sb * len(run)
            if not self.direct:
                os.posix_fadvise(self.fd, off, n, os.POSIX_FADV_DONTNEED)
            os.preadv(self.fd, [memoryview(buf)[:n]], off)
            for i, (_slot, h) in enumerate(run):
                if struct.unpack_from("<q", buf, i * sb)[0] != h:
                    fails += 1
        return time.perf_counter() - t, fails

    # -- loop side --------------------------------------------------------------------------------
    def write_block(self, slot: int, h: int) -> asyncio.Future:
        """Queue a block write; writes queued in one loop iteration go out as one batch (KVBM offloads in
        batches too). Returns the batch's future."""
        if self._batch is None:
            self._batch = ([], self.loop.create_future())
            self.loop.call_soon(self._flush)
        self._batch[0].append((slot, h))
        return self._batch[1]

    def _flush(self) -> None:
        items, fut = self._batch
        self._batch = None
        cf = self.loop.run_in_executor(self.pool, self._write_many_sync, items)
        n = len(items) * self.slot_bytes

        def done(f):
            if f.cancelled() or f.exception() is not None:
                if not f.cancelled():  # ENOSPC, EIO: an error, counted and logged, never bytes written
                    self._io_error("write", len(items), f.exception())
                if not fut.done():
                    fut.set_result(None)
                return
            self.bytes_written += n
            if self.on_io:
                self.on_io("write", n, f.result())
            if not fut.done():
                fut.set_result(None)
        cf.add_done_callback(done)

    async def read_blocks(self, slots_hashes: list[tuple[int, int]], pending: list) -> float:
        """Read blocks (waiting first for their writes if still in flight); returns the real seconds."""
        t = time.perf_counter()
        waits = {id(p): p for p in pending if p is not None and not p.done()}
        if waits:
            await asyncio.gather(*waits.values(), return_exceptions=True)
        runs = self._runs(slots_hashes)
        k = min(self.io_threads, len(runs))  # runs spread over the pool: queue depth > 1 like a real loader
        parts = [[x for run in runs[i::k] for x in run] for i in range(k)]
        results = await asyncio.gather(*(self.loop.run_in_executor(self.pool, self._read_sync, p) for p in parts),
                                       return_exceptions=True)
        for part, r in zip(parts, results):
            if isinstance(r, BaseException):
                self._io_error("read", len(part), r)
        fails = sum(r[1] for r in results if not isinstance(r, BaseException))
        self.verify_failures += fails
        nbytes = len(slots_hashes) * self.slot_bytes
        self.bytes_read += nbytes
        self.reads += len(runs)
        dt = time.perf_counter() - t
        if self.on_io:
            self.on_io("read", nbytes, dt)
        return dt

    def _io_error(self, kind: str, blocks: int, exc: BaseException) -> None:
        self.io_errors[kind] += blocks
        if not self._io_error_logged:  # one line in the server log, then the counter speaks
            self._io_error_logged = True
            print(f"kvsim: tier-2 {kind} of {blocks} block(s) failed: {exc} ({self.path}); further errors "
                  f"counted in kvsim_tier2_io_errors_total", file=sys.stderr, flush=True)

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
