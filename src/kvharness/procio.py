"""Storage bytes a process tree has read and written (``/proc/<pid>/io`` ``read_bytes``/``write_bytes``:
bytes that reached the block layer, page-cache hits excluded), summed over a stack's processes and their
descendants. Lets a control gate attribute device reads to the stack under test on a shared disk."""

from __future__ import annotations

from typing import Iterable


def tree_io(pids: Iterable[int]) -> dict | None:
    """{read_bytes, write_bytes, processes} over ``pids`` and their descendants; None when unavailable."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return None
    seen: dict[int, object] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                seen.setdefault(p.pid, p)
        except psutil.Error:
            continue
    read = written = n = 0
    for p in seen.values():
        try:
            io = p.io_counters()
        except (psutil.Error, AttributeError, NotImplementedError):
            continue
        read += io.read_bytes
        written += io.write_bytes
        n += 1
    return {"read_bytes": read, "write_bytes": written, "processes": n} if n else None
