"""Host samplers: iostat arithmetic on recorded /proc/diskstats snapshots, CPU, memory, device lookup."""

from __future__ import annotations

import os

import pytest

from kvharness.telemetry import host


def test_iostat_fields_hand_computed(fixture_text):
    a = host.parse_diskstats(fixture_text("diskstats_a.txt"))
    b = host.parse_diskstats(fixture_text("diskstats_b.txt"))
    # nvme0n1 over 0.2 s: rd_ios +50, rd_sectors +12800, rd_ticks +100 ms, wr_ios +20, wr_sectors +2048,
    # wr_ticks +60 ms, io_ticks +150 ms, time_in_queue +320 ms
    f = host.iostat_fields(a["nvme0n1"], b["nvme0n1"], 0.2)
    assert f["rps"] == pytest.approx(250.0)            # 50 / 0.2
    assert f["rMBs"] == pytest.approx(31.25)           # 12800 sectors / 2048 / 0.2
    assert f["wps"] == pytest.approx(100.0)            # 20 / 0.2
    assert f["wMBs"] == pytest.approx(5.0)             # 2048 / 2048 / 0.2
    assert f["r_await_ms"] == pytest.approx(2.0)       # 100 ms / 50 reads
    assert f["w_await_ms"] == pytest.approx(3.0)       # 60 ms / 20 writes
    assert f["aqu_sz"] == pytest.approx(1.6)           # 320 ms / 200 ms
    assert f["util_pct"] == pytest.approx(75.0)        # 150 ms busy / 200 ms
    assert f["rareq_sz_kb"] == pytest.approx(128.0)    # 12800 / 2 / 50
    assert f["rrqm_s"] == pytest.approx(25.0)          # 5 merges / 0.2
    assert f["r_bytes"] == 12800 * 512
    # the single-line fast path gives the same counters
    assert host.diskstats_line(fixture_text("diskstats_b.txt"), "nvme0n1") == b["nvme0n1"]
    assert host.diskstats_line(fixture_text("diskstats_b.txt"), "nvme0n") is None


def test_iostat_idle_device_and_util_cap(fixture_text):
    a = host.parse_diskstats(fixture_text("diskstats_a.txt"))
    f = host.iostat_fields(a["loop0"], a["loop0"], 1.0)
    assert f["rps"] == 0 and f["r_await_ms"] == 0.0 and f["util_pct"] == 0.0
    prev = a["nvme0n1"]
    cur = list(prev)
    cur[host.DISK_FIELDS.index("tot_ticks")] += 250  # more busy time than wall time (clock skew)
    assert host.iostat_fields(prev, tuple(cur), 0.2)["util_pct"] == 100.0
    with pytest.raises(ValueError):
        host.iostat_fields(prev, prev, 0)


def test_diskstats_older_kernel_fields_padded():
    snap = host.parse_diskstats("   8       0 sda 1 2 3 4 5 6 7 8 9 10 11\n")
    assert len(snap["sda"]) == len(host.DISK_FIELDS) and snap["sda"][-1] == 0


def test_cpu_percent_and_meminfo():
    prev = host.parse_proc_stat_cpu("cpu  100 0 50 800 10 0 0 0 0 0\ncpu0 1 2 3 4\n")
    cur = host.parse_proc_stat_cpu("cpu  130 10 60 880 18 1 1 0 0 0\n")
    c = host.cpu_percent(prev, cur)
    # deltas: user 30 nice 10 system 10 idle 80 iowait 8 irq 1 softirq 1 -> total 140
    assert c["user"] == pytest.approx(round(40 / 140 * 100, 2))
    assert c["system"] == pytest.approx(round(12 / 140 * 100, 2))
    assert c["iowait"] == pytest.approx(round(8 / 140 * 100, 2))
    assert host.cpu_percent(cur, cur)["user"] is None
    m = host.parse_meminfo("MemTotal: 1000 kB\nMemAvailable: 600 kB\nCached: 200 kB\n"
                           "SwapTotal: 100 kB\nSwapFree: 40 kB\n")
    assert m == {"MemTotal": 1024000, "MemAvailable": 614400, "Cached": 204800, "Dirty": None,
                 "swap_used": 61440}


def test_proc_pid_stat_parsing_with_spaces_in_comm():
    text = "1234 (python -m x) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 99 123456 789 18446744073709551615"
    comm, ppid, ticks, rss = host.parse_proc_pid_stat(text)
    assert (comm, ppid, ticks, rss) == ("python -m x", 1, 300, 789)


def _fake_sys(tmp_path):
    """A /sys tree: 259:1 is partition nvme0n1p1 of nvme0n1, 253:0 is dm-0 over nvme0n1p1."""
    sysr = tmp_path / "sys"
    disk = sysr / "devices" / "pci" / "nvme" / "nvme0n1"
    part = disk / "nvme0n1p1"
    part.mkdir(parents=True)
    (part / "partition").write_text("1\n")
    dm = sysr / "devices" / "virtual" / "block" / "dm-0"
    (dm / "slaves").mkdir(parents=True)
    (dm / "slaves" / "nvme0n1p1").mkdir()
    (sysr / "dev" / "block").mkdir(parents=True)
    os.symlink(disk, sysr / "dev" / "block" / "259:0")
    os.symlink(part, sysr / "dev" / "block" / "259:1")
    os.symlink(dm, sysr / "dev" / "block" / "253:0")
    (sysr / "block").mkdir()
    os.symlink(dm, sysr / "block" / "dm-0")
    os.symlink(disk, sysr / "block" / "nvme0n1")
    return str(sysr)


def test_partition_maps_to_parent_disk_and_dm_kept(tmp_path):
    sysr = _fake_sys(tmp_path)
    assert host._sys_block_name(259, 1, sysr) == "nvme0n1"
    assert host._sys_block_name(259, 0, sysr) == "nvme0n1"
    assert host._sys_block_name(253, 0, sysr) == "dm-0"
    assert host._sys_block_name(8, 0, sysr) is None
    ds = " 259 0 nvme0n1 " + " ".join(["0"] * 17) + "\n 253 0 dm-0 " + " ".join(["0"] * 17) + "\n"
    choice = host.resolve_block_device(None, "/dev/dm-0", sys_root=sysr, diskstats_text=ds)
    assert choice.device == "dm-0" and choice.source == "override" and choice.slaves == ["nvme0n1p1"]


def test_resolve_real_path_and_override_and_missing(tmp_path):
    ds = open("/proc/diskstats").read()
    choice = host.resolve_block_device(str(tmp_path / "not" / "yet" / "created"))
    # the nearest existing ancestor decides; on any Linux box with a block-backed root this resolves
    if choice.device is not None:
        assert choice.device in host.parse_diskstats(ds)
    else:
        assert choice.detail
    assert host.resolve_block_device(None).device is None
    bad = host.resolve_block_device(None, "nosuchdisk0")
    assert bad.device is None and "not in /proc/diskstats" in bad.detail


def test_tmpfs_path_degrades_with_reason(tmp_path):
    mi = ("27 1 254:0 / / rw - ext4 /dev/vda rw\n"
          "30 27 0:27 / /dev/shm rw - tmpfs tmpfs rw\n")
    m = host._mount_for("/dev/shm/x", mi)
    assert m == ("0:27", "tmpfs", "tmpfs")
    if os.path.isdir("/dev/shm") and os.major(os.stat("/dev/shm").st_dev) == 0:
        c = host.resolve_block_device("/dev/shm/kv", mountinfo_text=mi)
        assert c.device is None and "tmpfs" in c.detail


def test_proc_watcher_sees_children_not_itself():
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"  # the interpreter is running, its memory mapped
        w = host.ProcWatcher(os.getpid(), refresh_s=0.0)
        t = time.monotonic_ns()
        first = w.sample(t)
        assert child.pid in [p["pid"] for p in first]
        assert os.getpid() not in [p["pid"] for p in first]
        second = w.sample(t + 200_000_000)
        rec = next(p for p in second if p["pid"] == child.pid)
        assert rec["rss_bytes"] > 0 and rec["cpu_pct"] is not None and rec["name"].startswith("python")
    finally:
        child.kill()
        child.wait()
    assert child.pid not in [p["pid"] for p in w.sample(time.monotonic_ns())]
