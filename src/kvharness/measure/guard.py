"""Guards around one cell's measurement that hold even when the harness itself misbehaves.

* :class:`BenchmarkLock` — one benchmark at a time *on the machine*, not only inside one Snakemake
  invocation: an exclusive ``flock`` on a file in a fixed place (``$KVHARNESS_LOCK``, else
  ``/run/lock/kvharness-benchmark.lock`` when that directory is writable, else
  ``<tmp>/kvharness-benchmark.lock``), held for the whole measurement. A second cell waits and says
  for whom (pid, cell, folder), or fails at once when ``$KVHARNESS_LOCK_WAIT`` is ``fail`` (or after
  that many seconds when it is a number).
* :func:`claim_tmp` — the ``<cell>.tmp/`` folder carries an owner lock while a runner builds it: a
  folder whose lock is held is never touched; a leftover whose owner is gone is renamed
  ``<cell>.failed-<UTC>/`` with reason "previous run killed", never deleted.
* :class:`ParentWatch` — the runner dies with the workflow: a parent-death signal (``prctl``) and a
  thread that watches the parent and the Snakemake process above it. Either sends the runner SIGTERM,
  so the usual teardown (load, collector, stack) runs and the cell is kept as failed with reason
  "workflow process died".
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("kvharness.measure.cell")

LOCK_ENV = "KVHARNESS_LOCK"
LOCK_WAIT_ENV = "KVHARNESS_LOCK_WAIT"
LOCK_NAME = "kvharness-benchmark.lock"
OWNER_FILE = ".owner.lock"
PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
WORKFLOW_DIED = "workflow process died"


class BenchmarkBusy(RuntimeError):
    """The machine-wide benchmark lock (or the cell's own folder) is held by another live runner."""


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def lock_path() -> Path:
    """Where the machine-wide lock lives: ``$KVHARNESS_LOCK``, else /run/lock, else the temp dir."""
    env = os.environ.get(LOCK_ENV)
    if env:
        return Path(env)
    run_lock = Path("/run/lock")
    if run_lock.is_dir() and os.access(run_lock, os.W_OK | os.X_OK):
        return run_lock / LOCK_NAME
    return Path(tempfile.gettempdir()) / LOCK_NAME


def lock_wait() -> float | None:
    """Seconds to wait for the lock: None = forever (default), 0 = fail fast (``fail``)."""
    raw = (os.environ.get(LOCK_WAIT_ENV) or "wait").strip().lower()
    if raw in ("wait", "forever", ""):
        return None
    if raw in ("fail", "no", "0"):
        return 0.0
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise BenchmarkBusy(f"${LOCK_WAIT_ENV}={raw!r}: expected 'wait', 'fail' or a number of seconds") from None


def _open_lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666)  # other users' runners must be able to take it too
        return fd
    except PermissionError:
        return os.open(path, os.O_RDONLY)  # flock works on a read-only descriptor


def _read_holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw.decode() or "{}")
    except (OSError, ValueError):
        return {}


def _write_holder(fd: int, info: dict) -> None:
    with contextlib.suppress(OSError):
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


def describe_holder(info: dict) -> str:
    if not info:
        return "another runner (no details recorded)"
    return (f"pid {info.get('pid')} on {info.get('host')} (cell {info.get('cell')}, folder {info.get('dir')}, "
            f"since {info.get('since')})")


class BenchmarkLock:
    """The machine-wide benchmark lock, held from before the stack starts until the cell folder is final."""

    def __init__(self, cell: str, folder: str | Path, path: Path | None = None):
        self.cell = cell
        self.folder = str(folder)
        self.path = path or lock_path()
        self.fd: int | None = None
        self.waited_s = 0.0
        self.acquired_utc: str | None = None

    def acquire(self, wait_s: float | None = None, poll_s: float = 0.2) -> "BenchmarkLock":
        fd = _open_lock_file(self.path)
        t0 = time.monotonic()
        announced = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                holder = describe_holder(_read_holder(fd))
                waited = time.monotonic() - t0
                if wait_s is not None and waited >= wait_s:
                    raise BenchmarkBusy(f"benchmark lock {self.path} is held by {holder}; not waiting "
                                        f"(${LOCK_WAIT_ENV}={os.environ.get(LOCK_WAIT_ENV)})")
                if not announced:
                    log.info("cell %s: waiting for the benchmark lock %s, held by %s", self.cell, self.path, holder,
                             extra={"console": True})
                    announced = True
                time.sleep(poll_s)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.waited_s = time.monotonic() - t0
        self.acquired_utc = _iso_now()
        _write_holder(fd, {"pid": os.getpid(), "host": socket.gethostname(), "cell": self.cell,
                           "dir": self.folder, "since": self.acquired_utc})
        if announced:
            log.info("cell %s: got the benchmark lock after %.1f s", self.cell, self.waited_s, extra={"console": True})
        return self

    def describe(self) -> dict:
        return {"path": str(self.path), "acquired_utc": self.acquired_utc, "waited_s": round(self.waited_s, 3)}

    def release(self) -> None:
        if self.fd is not None:
            _write_holder(self.fd, {})
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _iso_now() -> str:
    from kvharness.provenance import utc_now

    return utc_now()


# --------------------------------------------------------------------------- the cell's .tmp folder


def _owner_held(tmp: Path) -> dict | None:
    """The owner's details when a live runner holds ``tmp``'s owner lock, else None."""
    path = tmp / OWNER_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(fd) or {"pid": "?"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def keep_leftover(tmp: Path, out_dir: Path, reason: str) -> Path:
    """Rename an ownerless ``.tmp`` folder to ``.failed-<UTC>`` with ``reason`` (never delete records)."""
    failed = out_dir.with_name(f"{out_dir.name}.failed-{_utc_stamp()}")
    n = 1
    while failed.exists():
        failed = out_dir.with_name(f"{out_dir.name}.failed-{_utc_stamp()}-{n}")
        n += 1
    with contextlib.suppress(OSError):
        with open(tmp / "reason.txt", "a") as fh:
            fh.write(reason + "\n")
    with contextlib.suppress(FileNotFoundError):
        (tmp / OWNER_FILE).unlink()
    os.replace(tmp, failed)
    return failed


class TmpClaim:
    """Ownership of ``<cell>.tmp/``: an exclusive flock on its ``.owner.lock`` for the runner's lifetime."""

    def __init__(self, tmp: Path, fd: int):
        self.tmp = tmp
        self.fd = fd

    def finish(self) -> None:
        """Called right after the folder was renamed away (and its owner file dropped): unlock."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


def claim_tmp(out_dir: Path, cell: str) -> TmpClaim:
    """Create and lock ``<out_dir>.tmp/``; a leftover of a dead runner is kept as failed first."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        holder = _owner_held(tmp)
        if holder is not None:
            raise BenchmarkBusy(f"{tmp} is being measured by {describe_holder(holder)}; not touching it")
        kept = keep_leftover(tmp, out_dir, "previous run killed (its .tmp folder was left without a live owner)")
        log.warning("cell %s: a previous run was killed; its records are kept in %s", cell, kept)
    tmp.mkdir(parents=True)
    fd = os.open(tmp / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _write_holder(fd, {"pid": os.getpid(), "host": socket.gethostname(), "cell": cell, "dir": str(tmp),
                       "since": _iso_now()})
    return TmpClaim(tmp, fd)


def drop_owner_file(folder: Path) -> None:
    """The owner lock is bookkeeping of the runner, not a record: remove it from a finished folder."""
    with contextlib.suppress(OSError):
        (folder / OWNER_FILE).unlink()


# --------------------------------------------------------------------------- parent death


def _prctl(option: int, arg: int) -> int | None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):
        return None


def _get_pdeathsig() -> int:
    value = ctypes.c_int(0)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0)
    except (OSError, AttributeError):
        return 0
    return value.value


def _workflow_chain() -> list:
    """Ancestors from the parent up to the outermost Snakemake process (the runner's parent is usually
    Snakemake's shell, which outlives a killed Snakemake); empty when no ancestor is Snakemake."""
    try:
        import psutil

        chain = psutil.Process().parents()[:8]
        last = -1
        for i, parent in enumerate(chain):
            with contextlib.suppress(psutil.Error):
                if any("snakemake" in Path(part).name for part in parent.cmdline()[:3]):
                    last = i
        return chain[:last + 1]
    except Exception:  # no psutil or no /proc: the getppid() watch still works
        return []


def _gone(proc) -> bool:
    import psutil

    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


class ParentWatch:
    """Turn the death of the parent (or of the Snakemake process above it) into SIGTERM for this runner."""

    def __init__(self, poll_s: float = 0.1):
        self.poll_s = poll_s
        self.ppid0 = os.getppid()
        self.chain = _workflow_chain()
        self.pdeathsig0 = 0
        self.died: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "ParentWatch":
        if self.ppid0 == 1:  # started without a parent to watch (a daemon): nothing to do
            return self
        self.pdeathsig0 = _get_pdeathsig()
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != self.ppid0:  # the parent died before the signal was armed
            self._fire(f"parent {self.ppid0} gone")
            return self
        self._thread = threading.Thread(target=self._run, name="parent-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            if os.getppid() != self.ppid0:
                self._fire(f"parent {self.ppid0} gone")
                return
            gone = next((p for p in self.chain if _gone(p)), None)
            if gone is not None:
                self._fire(f"ancestor {gone.pid} of the workflow gone")
                return

    def _fire(self, why: str) -> None:
        self.died = why
        log.error("%s (%s): stopping the cell", WORKFLOW_DIED, why)
        with contextlib.suppress(ProcessLookupError):
            os.kill(os.getpid(), signal.SIGTERM)

    def _evidence(self) -> bool:
        if self.died is not None or (self.ppid0 != 1 and os.getppid() != self.ppid0):
            return True
        return any(_gone(p) for p in self.chain)

    def parent_died(self, wait_s: float = 0.0) -> bool:
        """Whether the workflow died; ``wait_s`` lets the evidence arrive. The parent-death signal fires
        when the parent *thread* exits: while the rest of a killed multi-threaded Snakemake is still
        exiting, getppid() has not changed yet."""
        deadline = time.monotonic() + wait_s
        while True:
            if self._evidence():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        if self.ppid0 != 1:
            _prctl(PR_SET_PDEATHSIG, self.pdeathsig0)
