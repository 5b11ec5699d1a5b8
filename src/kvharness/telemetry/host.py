"""Host samplers that read /proc directly: CPU, memory, block-device I/O (iostat math), processes.

Every reader here is a plain function over a file's text, so that the arithmetic can be tested on
recorded snapshots, and the per-tick cost stays a few ``open``/``read`` calls (no psutil in the hot
path except the once-a-second process-tree refresh in :class:`ProcWatcher`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the device's logical block size

# ----------------------------------------------------------------------------------------------- CPU

CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_proc_stat_cpu(text: str) -> tuple[int, ...]:
    """The aggregate ``cpu`` line of /proc/stat as jiffies (user nice system idle iowait irq softirq steal)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            parts = line.split()[1:9]
            vals = [int(x) for x in parts]
            vals += [0] * (8 - len(vals))
            return tuple(vals)
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def cpu_percent(prev: tuple[int, ...], cur: tuple[int, ...]) -> dict[str, float | None]:
    """Share of all CPU time in the interval, in % of the whole machine (like mpstat's ``all`` row).

    ``user`` = user + nice (guest time is already inside user), ``system`` = system + irq + softirq,
    ``iowait``, ``idle`` and ``steal`` as the kernel reports them.
    """
    d = [c - p for p, c in zip(prev, cur)]
    total = sum(d)
    if total <= 0:
        return {"user": None, "system": None, "iowait": None, "idle": None, "steal": None}
    u, n, s, idle, iow, irq, sirq, steal = d
    f = 100.0 / total
    return {
        "user": round((u + n) * f, 2),
        "system": round((s + irq + sirq) * f, 2),
        "iowait": round(iow * f, 2),
        "idle": round(idle * f, 2),
        "steal": round(steal * f, 2),
    }


# -------------------------------------------------------------------------------------------- memory

def parse_meminfo(text: str) -> dict[str, int | None]:
    """MemTotal, MemAvailable, Cached and swap_used (SwapTotal - SwapFree), in bytes."""
    kv: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable", "Cached", "SwapTotal", "SwapFree", "Dirty", "Writeback"):
            parts = rest.split()
            if parts:
                kv[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    swap_used = None
    if "SwapTotal" in kv and "SwapFree" in kv:
        swap_used = kv["SwapTotal"] - kv["SwapFree"]
    return {
        "MemTotal": kv.get("MemTotal"),
        "MemAvailable": kv.get("MemAvailable"),
        "Cached": kv.get("Cached"),
        "Dirty": kv.get("Dirty"),
        "swap_used": swap_used,
    }


# --------------------------------------------------------------------------------------- block I/O

# Field order after "major minor name" in /proc/diskstats (Documentation/admin-guide/iostats.rst).
DISK_FIELDS = (
    "rd_ios", "rd_merges", "rd_sectors", "rd_ticks",
    "wr_ios", "wr_merges", "wr_sectors", "wr_ticks",
    "ios_in_progress", "tot_ticks", "rq_ticks",
    "dc_ios", "dc_merges", "dc_sectors", "dc_ticks",
    "fl_ios", "fl_ticks",
)


def parse_diskstats(text: str) -> dict[str, tuple[int, ...]]:
    """Map device name -> counters (17 fields, zero-padded for older kernels with 11 or 15)."""
    out: dict[str, tuple[int, ...]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 14:
            continue
        vals = [int(x) for x in parts[3:3 + len(DISK_FIELDS)]]
        vals += [0] * (len(DISK_FIELDS) - len(vals))
        out[parts[2]] = tuple(vals)
    return out


def _read_or_empty(path: str) -> str:
    """A /proc file's text, or "" where it cannot be read (the caller then reports why)."""
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def diskstats_line(text: str, device: str) -> tuple[int, ...] | None:
    """Counters of one device without parsing the whole file (cheap per-tick path)."""
    key = f" {device} "
    for line in text.splitlines():
        if key in line:
            parts = line.split()
            if len(parts) >= 14 and parts[2] == device:
                vals = [int(x) for x in parts[3:3 + len(DISK_FIELDS)]]
                vals += [0] * (len(DISK_FIELDS) - len(vals))
                return tuple(vals)
    return None


def _wrap_delta(prev: int, cur: int) -> int:
    """Counter delta; /proc/diskstats fields are unsigned long and may wrap on 32-bit kernels."""
    d = cur - prev
    if d < 0:
        d += 1 << 32 if prev < (1 << 32) else 1 << 64
    return d


def iostat_fields(prev: tuple[int, ...], cur: tuple[int, ...], itv_s: float) -> dict[str, float | None]:
    """iostat -x arithmetic (sysstat ``compute_ext_disk_stats`` and ``write_ext_stat``) on two snapshots.

    r/s = Δrd_ios/itv; rMB/s = Δrd_sectors/2048/itv (MiB, as iostat -m prints); r_await = Δrd_ticks/Δrd_ios
    (0 when no I/O completed); aqu-sz = Δrq_ticks/(itv·1000); %util = Δtot_ticks/(itv·1000)·100, capped at
    100 like sysstat. ``itv_s`` is the wall interval between the two reads.
    """
    if itv_s <= 0:
        raise ValueError("interval must be positive")
    d = {name: _wrap_delta(p, c) for name, p, c in zip(DISK_FIELDS, prev, cur)}
    itv_ms = itv_s * 1000.0
    r_ios, w_ios = d["rd_ios"], d["wr_ios"]
    util = d["tot_ticks"] / itv_ms * 100.0
    return {
        "rps": r_ios / itv_s,
        "rMBs": d["rd_sectors"] / 2048.0 / itv_s,
        "wps": w_ios / itv_s,
        "wMBs": d["wr_sectors"] / 2048.0 / itv_s,
        "rrqm_s": d["rd_merges"] / itv_s,
        "wrqm_s": d["wr_merges"] / itv_s,
        "r_await_ms": d["rd_ticks"] / r_ios if r_ios else 0.0,
        "w_await_ms": d["wr_ticks"] / w_ios if w_ios else 0.0,
        "rareq_sz_kb": d["rd_sectors"] / 2.0 / r_ios if r_ios else 0.0,
        "wareq_sz_kb": d["wr_sectors"] / 2.0 / w_ios if w_ios else 0.0,
        "aqu_sz": d["rq_ticks"] / itv_ms,
        "util_pct": min(util, 100.0),
        "r_bytes": d["rd_sectors"] * SECTOR_BYTES,
        "w_bytes": d["wr_sectors"] * SECTOR_BYTES,
    }


@dataclass
class DeviceChoice:
    device: str | None
    source: str  # how it was found: "override", "st_dev", "mountinfo", "none"
    detail: str = ""
    slaves: list[str] = field(default_factory=list)


def _existing_ancestor(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _sys_block_name(major: int, minor: int, sys_root: str = "/sys") -> str | None:
    link = os.path.join(sys_root, "dev", "block", f"{major}:{minor}")
    try:
        real = os.path.realpath(link)
    except OSError:
        return None
    if not os.path.exists(real):
        return None
    # A partition's sysfs dir has a "partition" file and sits inside its disk's dir.
    if os.path.exists(os.path.join(real, "partition")):
        return os.path.basename(os.path.dirname(real))
    return os.path.basename(real)


def _mount_for(path: str, mountinfo_text: str) -> tuple[str, str, str] | None:
    """(major:minor, fstype, source) of the longest mount point that contains ``path``."""
    best = None
    for line in mountinfo_text.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        f = pre.split()
        if len(f) < 5:
            continue
        mnt = f[4].replace("\\040", " ")
        if path == mnt or path.startswith(mnt.rstrip("/") + "/") or mnt == "/":
            if best is None or len(mnt) > len(best[0]):
                p = post.split()
                best = (mnt, f[2], p[0] if p else "", p[1] if len(p) > 1 else "")
    if best is None:
        return None
    return best[1], best[2], best[3]


def resolve_block_device(path: str | None, override: str | None = None, sys_root: str = "/sys",
                         diskstats_text: str | None = None, mountinfo_text: str | None = None) -> DeviceChoice:
    """The whole-disk block device that holds ``path`` (mount -> device; partition -> its disk).

    ``override`` (``--device``) wins: a name such as ``nvme0n1`` or ``/dev/nvme0n1``. dm/md devices are kept
    as they are (their own diskstats line is what the filesystem sees) with their slaves recorded; loop
    devices likewise. Returns ``device=None`` with the reason when nothing can be found (tmpfs, overlay
    without a block source), so the caller writes ``nvme: null`` rather than crashing.
    """
    if diskstats_text is None:
        diskstats_text = _read_or_empty("/proc/diskstats")
    known = set(parse_diskstats(diskstats_text))

    def finish(name: str | None, source: str, detail: str = "") -> DeviceChoice:
        if name is None:
            return DeviceChoice(None, "none", detail)
        if known and name not in known:
            return DeviceChoice(None, "none", f"{name} ({source}) is not in /proc/diskstats")
        slaves: list[str] = []
        sd = os.path.join(sys_root, "block", name, "slaves")
        if os.path.isdir(sd):
            slaves = sorted(os.listdir(sd))
        return DeviceChoice(name, source, detail, slaves)

    if override:
        name = os.path.basename(os.path.realpath(override)) if override.startswith("/") else override
        # A partition given explicitly is kept: the operator asked for it.
        return finish(name, "override")
    if not path:
        return DeviceChoice(None, "none", "no --tier2-path or --device given")
    p = _existing_ancestor(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        return DeviceChoice(None, "none", f"stat {p}: {exc}")
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    if major != 0:
        name = _sys_block_name(major, minor, sys_root)
        if name:
            return finish(name, "st_dev", f"{p} on {major}:{minor}")
    # Anonymous device (btrfs subvolume, overlayfs, tmpfs, ...): ask mountinfo for the mount's source.
    if mountinfo_text is None:
        mountinfo_text = _read_or_empty("/proc/self/mountinfo")
    m = _mount_for(p, mountinfo_text)
    if m is None:
        return DeviceChoice(None, "none", f"no mount found for {p}")
    devno, fstype, source = m
    if source.startswith("/dev/"):
        real = os.path.realpath(source)
        try:
            st2 = os.stat(real)
            name = _sys_block_name(os.major(st2.st_rdev), os.minor(st2.st_rdev), sys_root)
        except OSError:
            name = None
        name = name or os.path.basename(real)
        return finish(name, "mountinfo", f"{p} on {fstype} {source}")
    return DeviceChoice(None, "none", f"{p} is on {fstype} ({source or devno}), not a block device")


# --------------------------------------------------------------------------------------- processes

def parse_proc_pid_stat(text: str) -> tuple[str, int, int, int]:
    """(comm, ppid, utime+stime in clock ticks, rss pages) from /proc/PID/stat."""
    lp, rp = text.index("("), text.rindex(")")
    comm = text[lp + 1:rp]
    rest = text[rp + 2:].split()
    # rest[0] is state (field 3); utime is field 14, stime 15, rss 24 -> indexes 11, 12, 21
    return comm, int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[21])


def children_of(pid: int) -> list[int] | None:
    """Direct children of ``pid`` from /proc/PID/task/*/children (None when the kernel lacks that file)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(x) for x in fh.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread exited meanwhile
            return None
        except OSError:
            continue
    return out


def descendants(root: int) -> list[int] | None:
    """Every descendant pid of ``root`` (breadth first), reading only the tree's own /proc entries."""
    out: list[int] = []
    frontier = [root]
    seen = {root}
    while frontier:
        nxt = []
        for pid in frontier:
            kids = children_of(pid)
            if kids is None:
                return None
            for k in kids:
                if k not in seen:
                    seen.add(k)
                    out.append(k)
                    nxt.append(k)
        frontier = nxt
    return out


class ProcWatcher:
    """CPU% and RSS of every descendant of ``root_pid`` (not the collector itself).

    The descendant set is refreshed at most once per ``refresh_s`` by following /proc/PID/task/*/children
    down from the root (psutil's whole-table walk only as a fallback); each tick reads only
    ``/proc/PID/stat`` of the known pids.
    """

    def __init__(self, root_pid: int, refresh_s: float = 1.0, include_root: bool = False):
        self.root_pid = root_pid
        self.refresh_s = refresh_s
        self.include_root = include_root
        self.self_pid = os.getpid()
        self.clk_tck = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")
        self._pids: list[int] = []
        self._last_refresh_ns: int | None = None
        self._prev: dict[int, tuple[int, int]] = {}  # pid -> (cpu ticks, mono_ns)
        self.root_alive = True

    def _refresh(self, now_ns: int) -> None:
        self._last_refresh_ns = now_ns
        if not os.path.exists(f"/proc/{self.root_pid}"):
            self.root_alive = False
            self._pids = []
            return
        pids = descendants(self.root_pid)
        if pids is None:  # kernel without /proc/PID/task/TID/children: psutil's full process-table walk
            import psutil

            try:
                pids = [k.pid for k in psutil.Process(self.root_pid).children(recursive=True)]
            except psutil.Error:
                self.root_alive = False
                pids = []
        pids = [p for p in pids if p != self.self_pid]
        if self.include_root and self.root_pid != self.self_pid:
            pids.insert(0, self.root_pid)
        self._pids = pids
        keep = set(pids)
        self._prev = {p: v for p, v in self._prev.items() if p in keep}

    def sample(self, now_ns: int) -> list[dict]:
        if self._last_refresh_ns is None or now_ns - self._last_refresh_ns >= self.refresh_s * 1e9:
            self._refresh(now_ns)
        out = []
        for pid in self._pids:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    comm, _ppid, ticks, rss = parse_proc_pid_stat(fh.read())
            except (OSError, ValueError, IndexError):
                self._prev.pop(pid, None)
                continue
            prev = self._prev.get(pid)
            self._prev[pid] = (ticks, now_ns)
            cpu = None
            if prev is not None and now_ns > prev[1]:
                cpu = round((ticks - prev[0]) / self.clk_tck / ((now_ns - prev[1]) / 1e9) * 100.0, 1)
            out.append({"pid": pid, "name": comm, "cpu_pct": cpu, "rss_bytes": rss * self.page})
        return out
