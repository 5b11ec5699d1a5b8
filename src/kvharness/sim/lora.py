"""LoRA adapters: files on tier 2, a limited number of resident slots (LRU), a miss reads the file.

An adapter is named by the request's ``model`` (any name other than the served model) or its
``adapter_id``. Names are checked against ``^[A-Za-z0-9._-]{1,128}$`` and may not contain ``..``, so a
name can never leave the adapter directory (the v3.3 LoRA proxy wrote under an unchecked path). An
adapter's file is created (written) on its first use and read on every miss; a resident adapter costs
nothing. Slots pinned by running sequences are never evicted; when every slot is pinned the request
waits in the queue.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import re
import time
from collections import OrderedDict

ADAPTER_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def valid_adapter_id(name: str) -> bool:
    return isinstance(name, str) and bool(ADAPTER_RE.match(name)) and ".." not in name and name not in (".",)


class LoraManager:
    def __init__(self, max_loras: int, directory: str | None, adapter_bytes: int, loop, executor,
                 speedup: float, bandwidth: float, metrics, direct_io: bool = True):
        self.max_loras = max_loras
        self.directory = directory
        self.adapter_bytes = max(4096, (int(adapter_bytes) + 4095) // 4096 * 4096)
        self.loop = loop
        self.executor = executor
        self.speedup = speedup
        self.bandwidth = bandwidth
        self.m = metrics
        self.direct_io = direct_io and hasattr(os, "O_DIRECT")
        self.resident: OrderedDict[str, int] = OrderedDict()   # name -> pin count
        self.loading: dict[str, asyncio.Future] = {}
        self.modelled_bytes = adapter_bytes
        if directory:
            os.makedirs(directory, exist_ok=True)

    def path(self, name: str) -> str:
        if not valid_adapter_id(name):  # defence in depth: callers validate first
            raise ValueError(f"invalid adapter id {name!r}")
        p = os.path.join(self.directory, f"{name}.lora")
        if os.path.dirname(os.path.abspath(p)) != os.path.abspath(self.directory):
            raise ValueError(f"invalid adapter id {name!r}")
        return p

    def try_pin(self, name: str) -> bool:
        if name in self.resident:
            self.resident[name] += 1
            self.resident.move_to_end(name)
            if name not in self.loading:
                self.m.lora_hits.inc()
            return True
        if len(self.resident) >= self.max_loras:
            victim = next((n for n, pins in self.resident.items() if pins == 0), None)
            if victim is None:
                return False
            del self.resident[victim]
        self.resident[name] = 1
        fut = self.loop.create_future()
        self.loading[name] = fut
        self.loop.create_task(self._load(name, fut))
        return True

    def unpin(self, name: str) -> None:
        if name in self.resident:
            self.resident[name] -= 1

    def pending_load(self, name: str):
        fut = self.loading.get(name)
        return fut if fut is not None and not fut.done() else None

    def _read_file_sync(self, path: str) -> float:
        t = time.perf_counter()
        buf = mmap.mmap(-1, self.adapter_bytes)
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwritev(fd, [buf], 0)
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        fd = -1
        if self.direct_io:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            except OSError:
                fd = -1
        if fd < 0:
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            try:
                os.preadv(fd, [buf], 0)
            except OSError:  # O_DIRECT refused at read time (some filesystems)
                os.close(fd)
                fd = os.open(path, os.O_RDONLY)
                os.preadv(fd, [buf], 0)
        finally:
            os.close(fd)
            buf.close()
        return time.perf_counter() - t

    async def _load(self, name: str, fut: asyncio.Future) -> None:
        t0 = self.loop.time()
        try:
            if self.directory:
                await self.loop.run_in_executor(self.executor, self._read_file_sync, self.path(name))
            modelled = self.modelled_bytes / self.bandwidth / self.speedup
            await asyncio.sleep(modelled)
            self.m.lora_loads.inc()
            self.m.lora_load_seconds.observe(self.loop.time() - t0)
        finally:
            self.loading.pop(name, None)
            if not fut.done():
                fut.set_result(None)
