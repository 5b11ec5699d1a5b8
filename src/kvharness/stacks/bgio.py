"""Background I/O noise for a cell: one ``fio`` job on the tier-2 directory for the length of the load.

A cell whose spec has ``background_io.enabled`` (the ``background_io: on`` sweep value) lays out fio's files
in ``<tier2 dir>/bgio`` (``--create_only``, so the noise is at full strength from the first request),
then starts the timed job right after the collector and stops it when the load ends, on every failure
path and on SIGINT/SIGTERM (own process group, SIGTERM then SIGKILL: no orphan). fio's JSON report is
kept in the cell as ``fio.json`` (its stdout/stderr in ``fio.log``), and :func:`fio_summary` turns it
into the achieved read/write IOPS, bandwidth and completion-latency percentiles that land in the tables.

The job defaults are the plan's (SPEC.md H4B): randrw 70/30, bs 16k, iodepth 32, 4 jobs, direct I/O,
time-based. ``ioengine: auto`` picks libaio when this fio has it, else io_uring, else posixaio, else
psync (a synchronous engine every fio has); ``direct: auto`` uses O_DIRECT when the directory's file
system supports it. What ran (engine, direct, argv) is recorded in the cell's ``summary.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from kvharness.errors import ConfigError
from kvharness.cellfiles import SUMMARY_JSON

#: the plan's job (SPEC.md H4B); every key can be overridden in the workflow config's `background_io`
DEFAULTS = {
    "enabled": False,
    "fio": "fio",            # binary name or path
    "rw": "randrw",
    "rwmixread": 70,
    "bs": "16k",
    "iodepth": 32,
    "numjobs": 4,
    "size": "64MiB",         # per job file; small on purpose (shared CI disks)
    "direct": "auto",        # true | false | auto (O_DIRECT when the file system supports it)
    "ioengine": "auto",      # auto = libaio, else io_uring, else posixaio, else psync
    "nice": 0,               # fio's own `nice` for its jobs (the noise is meant for the disk, not the CPUs)
    "runtime_s": None,       # default: the load's whole budget; fio is stopped the moment the load ends
    "layout_timeout_s": 60,
}
ENGINE_PREFERENCE = ("libaio", "io_uring", "posixaio", "psync")
ASYNC_ENGINES = ("libaio", "io_uring", "posixaio")
FIO_JSON = "fio.json"
FIO_LOG = "fio.log"


def settings(spec: dict) -> dict:
    """The cell's background-I/O settings over the defaults."""
    return {**DEFAULTS, **(spec.get("background_io") or {})}


def enabled(spec: dict) -> bool:
    return bool((spec.get("background_io") or {}).get("enabled"))


def fio_binary(cfg: dict) -> str | None:
    return shutil.which(str(cfg.get("fio") or "fio"))


def check_available(cells: list[dict]) -> None:
    """Config-time check: a cell with background I/O on needs the fio binary (never a silent quiet cell)."""
    on = [c for c in cells if enabled(c)]
    if not on:
        return
    cfg = settings(on[0])
    if fio_binary(cfg) is None:
        raise ConfigError(
            f"config error: hypotheses.{on[0]['hyp']}: background_io is on (cell {on[0]['cell']}) but the fio binary "
            f"{cfg.get('fio') or 'fio'!r} is not on PATH (install fio: ./setup.sh or apt-get install fio)")


@lru_cache(maxsize=8)
def available_engines(fio: str) -> tuple[str, ...]:
    """I/O engines this fio build lists in ``fio --enghelp``."""
    try:
        out = subprocess.run([fio, "--enghelp"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines()[1:] if line.strip())


def pick_engine(requested: str, engines: tuple[str, ...]) -> tuple[str, str]:
    """(engine, why). ``auto`` takes the first of ENGINE_PREFERENCE that this fio lists."""
    if requested != "auto":
        if engines and requested not in engines:
            raise ConfigError(f"background_io.ioengine: {requested!r} is not an engine of this fio (has: {', '.join(engines)})")
        return requested, "configured"
    for name in ENGINE_PREFERENCE:
        if name in engines:
            return name, "preferred" if name == ENGINE_PREFERENCE[0] else f"fallback ({ENGINE_PREFERENCE[0]} not in this fio)"
    return "psync", "fallback (fio lists no engine; psync is built in)"


def direct_io_supported(directory: Path) -> bool:
    """Can files in ``directory`` be opened with O_DIRECT (tmpfs and some overlays cannot)?"""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    fd, path = tempfile.mkstemp(dir=directory, prefix=".odirect-")
    os.close(fd)
    try:
        fd = os.open(path, os.O_RDWR | flag)
        os.close(fd)
        return True
    except OSError:
        return False
    finally:
        os.unlink(path)


def _fio_size(size) -> str:
    from kvharness.units import parse_bytes

    return str(parse_bytes(size))


def job_argv(cfg: dict, fio: str, directory: Path, engine: str, direct: bool, runtime_s: float | None,
             output: Path | None) -> list[str]:
    """fio's argv (a list, never a shell string). ``runtime_s`` None = lay out the files only."""
    argv = [fio, "--name=bgio", f"--directory={directory}", f"--rw={cfg['rw']}", f"--rwmixread={int(cfg['rwmixread'])}",
            f"--bs={cfg['bs']}", f"--iodepth={int(cfg['iodepth'])}", f"--numjobs={int(cfg['numjobs'])}",
            f"--size={_fio_size(cfg['size'])}", f"--ioengine={engine}", f"--direct={1 if direct else 0}",
            "--group_reporting"]
    if int(cfg.get("nice") or 0):
        argv.append(f"--nice={int(cfg['nice'])}")
    if runtime_s is None:
        argv.append("--create_only=1")
    else:
        argv += ["--time_based", f"--runtime={max(1, math.ceil(runtime_s))}"]
    if output is not None:
        argv += ["--output-format=json", f"--output={output}"]
    return argv


class BackgroundIO:
    """fio for one cell. ``start()`` lays out and launches; ``stop()`` is idempotent and safe on any path."""

    def __init__(self, spec: dict, tier2_dir: Path, cell_dir: Path, runtime_s: float):
        self.cfg = settings(spec)
        self.directory = Path(tier2_dir) / "bgio"
        self.cell_dir = Path(cell_dir)
        self.runtime_s = float(self.cfg.get("runtime_s") or runtime_s)
        self.proc: subprocess.Popen | None = None
        self.info: dict = {"enabled": True}

    def start(self) -> dict:
        from kvharness.stacks.launcher import child_env, child_popen_kwargs

        fio = fio_binary(self.cfg)
        if fio is None:
            raise ConfigError(f"background_io: the fio binary {self.cfg.get('fio')!r} is not on PATH")
        self.directory.mkdir(parents=True, exist_ok=True)
        engine, why = pick_engine(str(self.cfg["ioengine"]), available_engines(fio))
        direct = self.cfg["direct"]
        direct = direct_io_supported(self.directory) if direct == "auto" else bool(direct)
        self.info.update(engine=engine, engine_choice=why, direct=direct, directory=str(self.directory),
                         runtime_s=self.runtime_s, size_per_job=_fio_size(self.cfg["size"]), numjobs=int(self.cfg["numjobs"]))
        log_path = self.cell_dir / FIO_LOG
        layout = job_argv(self.cfg, fio, self.directory, engine, direct, None, None)
        with open(log_path, "ab", buffering=0) as fh:
            fh.write(("$ " + " ".join(layout) + "\n").encode())
            self.proc = subprocess.Popen(layout, env=child_env(), stdin=subprocess.DEVNULL, stdout=fh,
                                         stderr=subprocess.STDOUT, **child_popen_kwargs())
        try:
            rc = self.proc.wait(timeout=float(self.cfg["layout_timeout_s"]))
        except subprocess.TimeoutExpired:
            self.stop()
            raise ConfigError(f"background_io: fio could not lay out its files in {self.cfg['layout_timeout_s']} s "
                              f"(background_io.size {self.cfg['size']}; see {FIO_LOG})") from None
        if rc != 0:
            raise ConfigError(f"background_io: fio's file layout exited with code {rc} (engine {engine}, "
                              f"direct {int(direct)}; see {FIO_LOG})")
        argv = job_argv(self.cfg, fio, self.directory, engine, direct, self.runtime_s, self.cell_dir / FIO_JSON)
        self.info["argv"] = argv
        with open(log_path, "ab", buffering=0) as fh:
            fh.write(("$ " + " ".join(argv) + "\n").encode())
            self.proc = subprocess.Popen(argv, env=child_env(), stdin=subprocess.DEVNULL, stdout=fh,
                                         stderr=subprocess.STDOUT, **child_popen_kwargs())
        self.info["pid"] = self.proc.pid
        return self.info

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> dict:
        """Stop fio's whole process group (SIGTERM: fio writes its report, then SIGKILL what is left)."""
        from kvharness.stacks.launcher import terminate_group

        if self.proc is not None:
            self.info["still_running_at_stop"] = self.proc.poll() is None
            terminate_group(self.proc, grace_s=5.0)
            self.info["exit_code"] = self.proc.returncode
        shutil.rmtree(self.directory, ignore_errors=True)  # fio's files are noise, not tier-2 KV bytes
        return self.info


def read_fio_json(path: str | Path) -> dict | None:
    """fio's JSON report; fio may put notices ("fio: terminating on signal 15") before the object."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    start = text.find("{")
    if start < 0:
        return None
    try:
        return json.loads(text[start:])
    except ValueError:
        return None


def _pct(clat: dict, q: str) -> float | None:
    value = (clat.get("percentile") or {}).get(q)
    return round(value / 1e6, 4) if value is not None else None


def fio_summary(report: dict | None) -> dict:
    """Achieved read/write IOPS, bandwidth (MiB/s) and completion-latency p50/p95/p99 (ms), summed over jobs."""
    keys = [f"fio_{d}_{m}" for d in ("read", "write") for m in ("iops", "mib_s", "clat_p50_ms", "clat_p95_ms", "clat_p99_ms")]
    out: dict = {k: None for k in keys}
    out["fio_runtime_s"] = None
    if not report or not report.get("jobs"):
        return out
    jobs = report["jobs"]
    for d in ("read", "write"):
        out[f"fio_{d}_iops"] = round(sum(float(j[d].get("iops") or 0) for j in jobs), 1)
        out[f"fio_{d}_mib_s"] = round(sum(float(j[d].get("bw") or 0) for j in jobs) / 1024.0, 2)  # bw is KiB/s
        clat = jobs[0][d].get("clat_ns") or {}
        for q, name in (("50.000000", "p50"), ("95.000000", "p95"), ("99.000000", "p99")):
            out[f"fio_{d}_clat_{name}_ms"] = _pct(clat, q)
    out["fio_runtime_s"] = round(max(float(j.get("elapsed") or 0) for j in jobs), 1)
    return out


def cell_fio_row(cell_dir: str | Path) -> dict:
    """The fio columns of one cell: engine, direct, and :func:`fio_summary` of its ``fio.json`` (all None when off)."""
    cell_dir = Path(cell_dir)
    try:
        summary = json.loads((cell_dir / SUMMARY_JSON).read_text())
    except (OSError, ValueError):
        summary = {}
    info = summary.get("background_io") or {}
    row = {"fio_engine": info.get("engine"), "fio_direct": info.get("direct")}
    row.update(fio_summary(read_fio_json(cell_dir / FIO_JSON) if info.get("enabled") else None))
    return row
