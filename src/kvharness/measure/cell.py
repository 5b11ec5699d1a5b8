"""Measure one cell: launch the stack with its tier settings, wait for health, start the collector,
run the load, stop everything, and write the cell folder atomically.

The folder is built as ``<cell>.tmp/`` and renamed to ``<cell>/`` only when the cell finished. A cell
that fails (the stack does not start or crashes, the load produced no successful request, an
interrupt) is renamed ``<cell>.failed-<UTC>/`` with ``reason.txt`` and everything measured so far,
and :class:`CellFailed` is raised so the workflow marks the job failed and a rerun repeats only it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvharness import REPO_ROOT, clock, stats
from kvharness.measure import guard as cellguard, validity
from kvharness.stacks import bgio
from kvharness.plan import uwork as uwork_result
from kvharness.records import RecordError, read_json, read_jsonl
from kvharness.defaults import SIM
from kvharness.errors import ConfigError
from kvharness.loadgen.spec import DEFAULT_PATTERN, default as load_default
from kvharness.procio import tree_io
from kvharness.provenance import measurement_fingerprint, provenance, scrub, secret_values, utc_now
from kvharness.units import format_bytes
from kvharness.stacks.coldstart import baseline_check, first_request_check, prepare as cold_prepare
from kvharness.sim.profiles import kv_bytes_per_token
from kvharness.stacks.names import template_names
from kvharness.stacks.sizing import check_host_tier, check_memory_pools
from kvharness.stacks.launcher import (
    RunningStack,
    StackLaunchError,
    child_env,
    child_popen_kwargs,
    plan_launch,
    terminate_group,
)
from kvharness.stacks.capacity import CapacityMismatch, verify_capacity
from kvharness.cellfiles import (CELL_JSON, COLLECTOR_LOG, COLLECTOR_SUMMARY_JSON, DYNKV_JSONL, LOAD_JSON, LOADGEN_LOG,
                                  LOADGEN_SUMMARY_JSON, METRICS_JSONL, PROVENANCE_JSON, SUMMARY_JSON, SYSMON_JSONL)

log = logging.getLogger("kvharness.measure.cell")
logging.getLogger("httpx").setLevel(logging.WARNING)

ALIGNMENT_GATE = 0.95
ITL_STALL_SHARE = 0.01  # a cell is flagged when more than 1 % of its token gaps are stalls


class CellFailed(RuntimeError):
    """The cell did not produce a trustworthy measurement; its partial folder was kept."""


class CellInterrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP/SIGINT during a cell; its text names the signal."""


_interrupted: list[str] = []


def _raise_interrupt(signum, _frame):
    # Only the first signal interrupts: a second one (the parent-death signal and the watch thread
    # both fire when Snakemake dies) must not break the teardown that the first one started.
    if _interrupted:
        log.warning("signal %s during teardown: ignored (teardown under way)", signal.Signals(signum).name)
        return
    _interrupted.append(signal.Signals(signum).name)
    raise CellInterrupted(f"signal {signal.Signals(signum).name}")


def _defer_signal(signum, _frame):
    # After the teardown the cell folder is being written: a late SIGTERM (the parent-death signal
    # arriving after the watch thread's), a second Ctrl-C or a SIGHUP must not kill the runner between
    # summary.json and reason.txt or before the rename. It is logged and the folder finished.
    log.warning("signal %s while the cell folder is written: finishing it first", signal.Signals(signum).name)


RESERVE_BYTES = 1 << 20  # freed before the closing files are written: a full disk still gets them
RESERVE_REASON_BYTES = 64 << 10  # freed right before reason.txt


def _reserve(path: Path, nbytes: int) -> None:
    """Hold ``nbytes`` of the cell folder's filesystem in ``path`` (real blocks), for the failure record."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError:  # a filesystem without fallocate: write the bytes
            os.pwrite(fd, b"\0" * nbytes, 0)
            os.fsync(fd)
    finally:
        os.close(fd)


def _release(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def read_uwork(path: str | Path, stack_name: str, rule: str = "uwork", stacks: list[str] | None = None) -> int:
    """U_work of ``stack_name`` from an H0 ``uwork.csv`` (validated by :mod:`kvharness.plan.uwork`); with ``rule``
    ``uwork_min`` / ``uwork_max`` the lower / higher U_work of ``stacks`` (default: every stack in the file),
    so every stack runs at the same load."""
    found = uwork_result.read(path)
    if rule == "uwork":
        stacks = [stack_name]
    return uwork_result.value(found, path, rule, list(stacks or found))


def resolve_load(spec: dict, uwork_csv: str | None = None, uwork: dict | int | None = None) -> dict:
    """The concrete load of a cell: `uwork` concurrency from the `uwork` result, burst size defaulted.

    ``uwork`` is what the workflow resolved (``{"value": 4, "from": "results/H0/uwork.csv"}``); ``uwork_csv``
    is read instead when it is not given (``kvharness cell --uwork``). The cell records which it used.
    """
    load = json.loads(json.dumps(spec["load"]))
    rule = load.get("concurrency")
    if rule in ("uwork", "uwork_min", "uwork_max"):
        if isinstance(uwork, dict):
            value, source = int(uwork["value"]), str(uwork.get("from"))
        elif isinstance(uwork, int):
            value, source = uwork, "given"
        elif uwork_csv:
            value, source = read_uwork(uwork_csv, spec["stack"]["name"], rule), str(uwork_csv)
        else:
            raise ConfigError(f"hypotheses.{spec['hyp']}.load.concurrency: 'uwork' needs the uwork result (H0's uwork.csv)")
        load["concurrency"] = value
        load["concurrency_source"] = {"result": "uwork", "rule": rule, "from": source, "value": value}
    pattern = load.setdefault("pattern", dict(DEFAULT_PATTERN))
    if pattern.get("kind") == "bursty" and not pattern.get("burst_size"):
        pattern["burst_size"] = load["concurrency"]
    if pattern.get("kind") == "trace" and isinstance(load.get("concurrency"), int):
        pattern["max_in_flight"] = load["concurrency"]  # a replayed trace at a concurrency: at most that many in flight
    return load


def resident_adapter_bytes(spec: dict, load: dict) -> int:
    """Adapter bytes a cell keeps resident: min(adapters the load uses, resident slots) x adapter bytes."""
    lora = load.get("lora") or {}
    n = len(lora.get("adapters") or ()) or int(lora.get("count") or 0)
    slots, size = int(spec["engine"].get("max_loras") or 0), int(spec["engine"].get("lora_adapter_bytes") or 0)
    proxy = spec["stack"].get("proxy")
    if proxy:  # the proxy's resident set and adapter files stand in for the engine's
        from kvharness.units import parse_bytes

        slots, size = int(proxy["resident"]), parse_bytes(proxy["adapter_bytes"])
    return min(n, slots) * size


def check_tier2_space(spec: dict, tier2_dir: Path) -> None:
    """Refuse to start a tiered stack whose disk tier cannot fit on the tier-2 filesystem.

    Real KVBM allocates its disk cache up front; the simulator writes ``block_bytes_scale`` of it.
    """
    if not spec["stack"].get("tiered"):
        return
    scale = float(spec["sim"].get("block_bytes_scale", SIM["block_bytes_scale"])) if spec["stack"]["kind"] == "sim" else 1.0
    need = int(spec["tiers"]["tier2_bytes"] * scale)
    probe = tier2_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise ConfigError(
            f"tier-2 disk full: {probe} has {format_bytes(free)} free but profile {spec['profile']!r} needs "
            f"{format_bytes(need)} of tier-2 files (tier2 {format_bytes(spec['tiers']['tier2_bytes'])} x scale {scale:g}); "
            f"free space, move tier2_root, or shrink profiles.{spec['profile']}.tier2"
        )


def scrub_logs(folder: Path) -> None:
    """Remove the values of secret-looking environment variables from every log in ``folder``."""
    if not secret_values():
        return
    for log_path in folder.glob("*.log"):
        text = log_path.read_text(errors="replace")
        clean = scrub(text)
        if clean != text:
            log_path.write_text(clean)


def itl_flags(records: list[dict], stall_ms: float) -> dict:
    """Token gaps longer than ``stall_ms`` (a slow drip, a stalled stream), counted over ok requests."""
    gaps = [g for r in records if r.get("rc") == 0 for g in (r.get("itl_ms") or [])]
    stalls = sum(1 for g in gaps if g > stall_ms)
    share = stalls / len(gaps) if gaps else 0.0
    return {"itl_stall_ms": stall_ms, "itl_stalls": stalls, "itl_stall_share": round(share, 4),
            "itl_stalled": share > ITL_STALL_SHARE}


class _Phases:
    """Seconds spent per phase of a cell (setup, launch, health, collectors, load, teardown, write)."""

    def __init__(self, t0: float):
        self.t, self.name, self.spent, self.starts_ns = t0, "setup", {}, {}

    def start(self, name: str) -> None:
        now = time.monotonic()
        self.spent[self.name] = round(self.spent.get(self.name, 0.0) + now - self.t, 4)
        self.t, self.name = now, name
        self.starts_ns.setdefault(name, time.monotonic_ns())  # same clock as the records' *_ns stamps

    def done(self) -> dict:
        self.start("end")
        return {k: v for k, v in self.spent.items() if k != "end"}


def _python_module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "kvharness", module, *args]


def _start(argv: list[str], log_path: Path) -> subprocess.Popen:
    fh = open(log_path, "ab", buffering=0)
    try:
        return subprocess.Popen(argv, env=child_env(), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                **child_popen_kwargs())
    finally:
        fh.close()


def _wait_for_file(path: Path, proc: subprocess.Popen, timeout_s: float, nonempty: bool = True) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and (not nonempty or path.stat().st_size > 0):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def _first_record(path: Path, timeout_s: float = 1.0) -> dict | None:
    """The first JSON line of a file another process is writing (None when it is not complete in time)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError):
            with open(path, encoding="utf-8") as fh:
                line = fh.readline()
            if line.endswith("\n"):
                with contextlib.suppress(ValueError):
                    return json.loads(line)
                return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def _dir_bytes(path: Path) -> tuple[int, int]:
    total = files = 0
    if path.is_dir():
        for p in path.rglob("*"):
            if p.is_file():
                files += 1
                total += p.stat().st_size
    return files, total


def _quality(collector_summary: dict | None, collector_rc: int | None) -> dict:
    if collector_summary is None:
        return {"collector_ok": False, "alignment": None, "alignment_ok": False,
                "collector_note": f"collector gave no summary (exit code {collector_rc})"}
    alignment = collector_summary.get("alignment_fraction")
    return {
        "collector_ok": collector_rc in (0, None, -signal.SIGTERM),
        "alignment": alignment,
        "alignment_ok": alignment is not None and alignment >= ALIGNMENT_GATE,
        "ticks_missed": collector_summary.get("ticks_missed"),
    }


def log_outcome(summary: dict) -> str:
    """Log (and return) the cell log's closing line: status, request counts, TTFT p50/p99, tier-2 bytes,
    and why the cell was degraded or failed."""
    req = summary.get("requests") or {}

    def ms(key: str) -> str:
        return "-" if req.get(key) is None else f"{req[key]:.1f}"

    why = ((summary.get("reason") or summary.get("degraded_reason") or "").splitlines()[:1]
           or summary.get("degraded_because") or [])
    line = (f"cell {summary.get('hyp')}/{summary.get('cell')} {summary.get('status')}: "
            f"requests {req.get('n_ok', 0)} ok / {req.get('n_errors', 0)} errors, "
            f"TTFT p50 {ms('ttft_ms_p50')} ms p99 {ms('ttft_ms_p99')} ms, "
            f"tier-2 {format_bytes(summary.get('tier2_file_bytes') or 0)} in {summary.get('tier2_files') or 0} files"
            + (f"; because: {', '.join(why)}" if why else ""))
    level = {"failed": logging.ERROR, "invalid": logging.ERROR, "degraded": logging.WARNING}.get(summary.get("status"), logging.INFO)
    log.log(level, "%s", line, extra={"console": True})  # also on Snakemake's console (run_cell.py)
    return line


def run_cell(spec: dict, out_dir: str | Path, uwork_csv: str | None = None, uwork: dict | int | None = None) -> dict:
    """Measure one cell into ``out_dir``; returns the cell summary. Raises CellFailed (folder kept).

    The whole measurement holds the machine-wide benchmark lock (cellguard.BenchmarkLock) and dies
    with the workflow (cellguard.ParentWatch).
    """
    out_dir = Path(out_dir)
    _interrupted.clear()
    watch = cellguard.ParentWatch().start()
    try:
        lock = cellguard.BenchmarkLock(f"{spec['hyp']}/{spec['cell']}", out_dir.resolve()).acquire(cellguard.lock_wait())
    except cellguard.BenchmarkBusy as exc:
        watch.stop()
        raise CellFailed(f"cell {spec['hyp']}/{spec['cell']} not started: {exc}") from None
    except BaseException:
        watch.stop()
        raise
    try:
        return _measure(spec, out_dir, uwork_csv, uwork, lock, watch)
    finally:
        lock.release()
        watch.stop()


def _dead_stack_line(spec: dict, stack: RunningStack, dead: subprocess.Popen) -> str:
    """Which part of which stack died, by its role in the config (not the interpreter's path)."""
    idx = stack.procs.index(dead)
    part = "main command" if idx == len(stack.procs) - 1 else f"pre_commands[{idx}]"
    return f"stack {stack.plan.name} (role {spec['role']}, {part}, pid {dead.pid}) exited with code {dead.returncode}"


def _wait_load(loadgen: subprocess.Popen, stack: RunningStack, budget: float, poll_s: float = 0.02):
    """Wait for the load; stop it at once when a stack process dies. (rc or None on timeout, dead proc)."""
    deadline = time.monotonic() + budget
    while True:
        rc = loadgen.poll()
        if rc is not None:
            return rc, stack.dead_process()
        dead = stack.dead_process()
        if dead is not None:
            terminate_group(loadgen, grace_s=5.0)
            return loadgen.returncode, dead
        if time.monotonic() > deadline:
            return None, None
        time.sleep(poll_s)


LOADGEN_EXIT = {
    3: "the load stopped after load.max_errors failed requests in a row (see loadgen.log)",
    4: "the load generator could not write its records (disk full?) and stopped; see loadgen.log",
}


def _write_text(path: Path, text: str) -> str | None:
    """Write a file of the cell folder whole or not at all (via a sibling, then rename); the OSError's
    text instead of raising (a full disk), so a failed write never leaves a cut or empty file."""
    part = path.with_name(path.name + ".part")
    try:
        part.write_text(text)
        os.replace(part, path)
        return None
    except OSError as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        return f"cannot write {path.name}: {exc.strerror or exc}"


def _stamp_cell_json(tmp: Path, **stamps) -> str | None:
    """Add the measurement's UTC start/end (taken under the benchmark lock) to cell.json."""
    try:
        resolved = json.loads((tmp / CELL_JSON).read_text())
    except (OSError, ValueError):
        return None
    resolved.setdefault("measurement", {}).update(stamps)
    return _write_text(tmp / CELL_JSON, json.dumps(resolved, indent=2, default=str))


def _measure(spec: dict, out_dir: Path, uwork_csv, uwork, lock: cellguard.BenchmarkLock,
             watch: cellguard.ParentWatch) -> dict:
    claim = _claim_folder(spec, out_dir)
    tmp = claim.tmp
    if out_dir.exists():
        shutil.rmtree(out_dir)
    started = utc_now()
    t_start = time.monotonic()
    tier2_dir = Path(spec["tier2_root"]).resolve() / spec["hyp"] / spec["cell"]
    summary: dict = {"hyp": spec["hyp"], "cell": spec["cell"], "stack": spec["stack"]["name"],
                     "role": spec["role"], "profile": spec["profile"], "status": "running"}
    old_handlers = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    stack = loadgen = collector = noise = None
    load: dict = spec["load"]
    failure: str | None = None
    phases = _Phases(t_start)
    try:
        load = resolve_load(spec, uwork_csv, uwork)
        check_host_tier(spec)
        check_memory_pools(spec)
        shutil.rmtree(tier2_dir, ignore_errors=True)
        check_tier2_space(spec, tier2_dir)
        tier2_dir.mkdir(parents=True)
        plan = plan_launch(spec["stack"], template_names(spec, tier2_dir), tmp)
        from kvharness.plan.workingset import working_set

        ws = working_set(load, spec["tiers"], kv_bytes_per_token(spec["model"], spec["precision"], spec["hardware"]),
                         adapter_bytes=resident_adapter_bytes(spec, load))
        resolved = {**spec, "load": load, "launch": plan.describe(), "tier2_dir": str(tier2_dir), "working_set": ws,
                    "measurement": {"lock": lock.describe(), "started_utc": started}}
        summary["engine_settings"] = plan.engine_settings  # what this stack's engine really ran with
        (tmp / CELL_JSON).write_text(json.dumps(resolved, indent=2, default=str))
        log.info("cell %s/%s: launching %s (%s)", spec["hyp"], spec["cell"], plan.name, " ".join(plan.argvs[-1][:6]) if plan.argvs else "external")
        load_spec = _load_spec(spec, load, plan)
        (tmp / LOAD_JSON).write_text(json.dumps(load_spec, indent=2))
        stack = RunningStack(plan, poll_s=0.02)  # health every 20 ms: a cell waits for its stack, not for the poll
        phases.start("launch")
        launched_at = time.time()
        stack.start()
        # The load generator and the collector start with the stack, so their start-up overlaps the
        # server's; the collector samples once the stack is healthy and ours (telemetry.go), the load generator
        # sends nothing until the collector has taken its baseline (load.go), and its clock starts then.
        go_file = tmp / "load.go"
        loadgen = _start(_python_module_argv("loadgen", "--spec", str(tmp / LOAD_JSON), "--out", str(tmp / METRICS_JSONL),
                                             "--summary-out", str(tmp / LOADGEN_SUMMARY_JSON), "--start-file", str(go_file),
                                             "--first-request", "skip", "--max-error-pct", "off"),
                         tmp / LOADGEN_LOG)
        argv = _collector_argv(spec, plan, tmp, tier2_dir)
        telemetry_go = tmp / "telemetry.go"  # the collector, too, starts now and samples from the go on
        collector = _start(argv + ["--start-file", str(telemetry_go)], tmp / COLLECTOR_LOG)
        phases.start("health")
        _wait_ready(spec, plan, stack, tier2_dir, launched_at, summary)

        phases.start("collectors")
        _start_sampling(spec, plan, tmp, telemetry_go, collector, summary)
        _idle_window(load, stack, summary)
        longest = max(float(load.get("duration_s") or 600.0), float(load_spec.get("max_duration_s") or 0.0))
        budget = load.get("cell_timeout_s") or longest + float(load.get("request_timeout_s", load_default("request_timeout_s"))) + 30.0
        if bgio.enabled(spec):  # fio noise on the tier-2 directory from before the first request to the load's end
            noise = bgio.BackgroundIO(spec, tier2_dir, tmp, budget)
            summary["background_io"] = noise.info
            noise.start()
            log.info("cell %s: background fio running (%s, direct=%s)", spec["cell"], noise.info["engine"], noise.info["direct"])
        log.info("cell %s: load %s x%s for %s s", spec["cell"], load["pattern"]["kind"], load.get("concurrency"), load.get("duration_s"))
        phases.start("load")
        go_file.touch()
        loadgen_rc, dead = _wait_load(loadgen, stack, budget)
        if loadgen_rc is None and dead is None:
            failure = f"cell timeout: the load did not finish within {budget:.0f} s (load.cell_timeout_s)"
        if noise is not None:
            noise.stop()  # the noise lasts exactly as long as the load
        summary["loadgen_rc"] = loadgen_rc
        if "idle_window" in summary:  # the stack's own storage reads during the load, for the idle comparison
            summary["idle_window"]["stack_io_load_end"] = tree_io(stack.pids)
        if dead is not None:
            failure = failure or f"{_dead_stack_line(spec, stack, dead)} during the load (crash); the load was stopped"
        elif loadgen_rc not in (0, None) and failure is None:
            failure = LOADGEN_EXIT.get(loadgen_rc, f"load generator exited with code {loadgen_rc} (see loadgen.log)")
    except StackLaunchError as exc:
        failure = scrub(str(exc))
    except CapacityMismatch as exc:
        failure = str(exc)
    except ConfigError as exc:
        failure = str(exc)
    except KeyboardInterrupt as exc:
        died = watch.parent_died(wait_s=1.0 if "SIGTERM" in str(exc) else 0.0)  # SIGTERM is also the parent-death signal
        failure = cellguard.WORKFLOW_DIED if died else f"interrupted ({str(exc) or 'signal SIGINT'})"
    except OSError as exc:  # the cell folder cannot be written (disk full, read-only)
        failure = f"cannot write the cell folder {tmp}: {exc.strerror or exc}"
    finally:
        phases.start("teardown")
        _teardown(noise, loadgen, collector, stack, old_handlers)
    try:
        return _finish(spec, out_dir, tmp, claim, summary, failure, phases, t_start, started, tier2_dir, load,
                       collector)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)


def _wait_ready(spec: dict, plan, stack, tier2_dir: Path, launched_at: float, summary: dict) -> None:
    """Wait for the stack's health (which also proves the listener is ours), prepare the cold-start checks and
    verify the tier capacity it reports (CapacityMismatch otherwise)."""
    health_s = stack.wait_healthy()  # also proves the listener is ours (stacks/identity.py)
    summary["health_wait_s"] = round(health_s, 3)
    summary["listener"] = stack.identity  # who holds the ports (external stacks: not checked, and why)
    summary["ready_steps"] = plan.ready_steps
    summary["cold_start"] = cold_prepare(plan, spec["stack"].get("cold_start"), tier2_dir,
                                         fresh=plan.kind != "external", launched_at=launched_at)
    summary["capacity"] = verify_capacity(spec, plan, stack)  # the tiers the stack reports, or CapacityMismatch
    log.info("cell %s: healthy after %.2f s; collector sampling", spec["cell"], health_s)


def _start_sampling(spec: dict, plan, tmp: Path, telemetry_go: Path, collector, summary: dict) -> None:
    """Let the collector sample and wait for its baseline. The load starts after the collector's first scrape
    of the stack's counters (its tick-0 line in dynkv.jsonl, written at once): that scrape is the baseline
    every counter delta of the cell is taken from (adapter loads, tier bytes), so nothing the load does may
    happen before it. Without a metrics source, the first host tick (one interval) stands in."""
    telemetry_go.touch()
    first = tmp / (DYNKV_JSONL if plan.metrics_urls else SYSMON_JSONL)
    if not _wait_for_file(first, collector, max(5.0, 2.5 * spec["telemetry"]["interval_ms"] / 1000)):
        log.warning("cell %s: collector did not start sampling within 5 s", spec["cell"])
    if plan.metrics_urls:  # cold-start check 2 on that same baseline scrape (stacks/coldstart.py)
        baseline_check(summary["cold_start"], _first_record(first))


def _idle_window(load: dict, stack, summary: dict) -> None:
    """The idle baseline: collector on, stack up, no load (read back by analysis.spill.idle_nvme)."""
    idle_s = float(load.get("idle_window_s") or 0.0)
    if idle_s > 0:
        idle_start, io_start = time.monotonic_ns(), tree_io(stack.pids)
        time.sleep(idle_s)
        summary["idle_window"] = {"start_mono_ns": idle_start, "end_mono_ns": time.monotonic_ns(), "seconds": idle_s,
                                  "stack_io_start": io_start, "stack_io_load_start": tree_io(stack.pids)}


def _claim_folder(spec: dict, out_dir: Path):
    """The cell's tmp folder, claimed (one benchmark at a time) and with room reserved for its closing files."""
    try:
        claim = cellguard.claim_tmp(out_dir, f"{spec['hyp']}/{spec['cell']}")
    except cellguard.BenchmarkBusy as exc:
        raise CellFailed(f"cell {spec['hyp']}/{spec['cell']} not started: {exc}") from None
    except OSError as exc:
        raise CellFailed(f"cell {spec['hyp']}/{spec['cell']} not started: cannot create its folder next to "
                         f"{out_dir}: {exc.strerror or exc}") from None
    tmp = claim.tmp
    try:  # before anything can fill the disk: room for reason.txt, summary.json and provenance.json
        _reserve(tmp / ".reserve", RESERVE_BYTES)
        _reserve(tmp / ".reserve-reason", RESERVE_REASON_BYTES)
    except OSError as exc:
        _release(tmp / ".reserve")
        _release(tmp / ".reserve-reason")
        cellguard.keep_leftover(tmp, out_dir, f"not started: no room for the cell's records next to {out_dir}: "
                                f"{exc.strerror or exc}")
        claim.finish()
        raise CellFailed(f"cell {spec['hyp']}/{spec['cell']} not started: no room for its records next to "
                         f"{out_dir}: {exc.strerror or exc}") from None
    return claim


def _load_spec(spec: dict, load: dict, plan) -> dict:
    """The load generator's spec for this cell: the resolved load, the stack's URL, SLOs in wall time and,
    for a cell sized by evidence, the longest it may run."""
    load_spec = {
        "base_url": plan.base_url, "endpoint": load.get("endpoint", "completions"),
        "model": spec["served_model_name"], "stream": True,
        "pattern": {**load["pattern"], **({"concurrency": load["concurrency"]}
                                          if load.get("concurrency") and load["pattern"].get("kind") != "trace" else {})},
        "workload": load["workload"], "duration_s": load["duration_s"],
        "warmup_s": load.get("warmup_s", 0.0), "seed": load.get("seed", load_default("seed")),
        "request_timeout_s": load.get("request_timeout_s", load_default("request_timeout_s")),
        "labels": {"stack": plan.name, "concurrency": load.get("concurrency")},
        "tokenizer": os.path.abspath(load["tokenizer"]) if load.get("tokenizer") else None,
        "max_consecutive_errors": load.get("max_errors", 100),
    }
    for key in ("lora", "slo", "max_requests", "min_ok_requests"):
        if load.get(key) is not None:
            load_spec[key] = load[key]
    if load_spec.get("slo"):  # the load generator measures wall time; SLOs are stated in the stack's
        load_spec["slo"] = clock.wall_slo(load_spec["slo"], clock.speedup_of(spec))
    if load.get("min_ok_requests") and load.get("duration_s"):  # cells sized by evidence (docs/definitions.md)
        load_spec["max_duration_s"] = float(load.get("max_duration_s") or 5.0 * float(load["duration_s"]))
    return load_spec


def _collector_argv(spec: dict, plan, tmp: Path, tier2_dir: Path) -> list[str]:
    """``kvharness sysmon`` for this cell: cadence, tier-2 path, the stack's metrics URLs, KV block bytes."""
    block_bytes = None
    kvpt = kv_bytes_per_token(spec["model"], spec["precision"], spec["hardware"])
    if kvpt:
        block_bytes = kvpt * int(spec["engine"]["tokens_per_block"])
    argv = _python_module_argv("sysmon", "--out-dir", str(tmp), "--interval-ms", str(spec["telemetry"]["interval_ms"]),
                               "--tier2-path", str(tier2_dir), "--watch-tree", str(os.getpid()))
    for name, url in plan.metrics_urls.items():
        argv += ["--scrape", f"{name}={url}"]
    if block_bytes:
        argv += ["--kv-block-bytes", str(block_bytes)]
    for tier, family in (spec["stack"].get("fetch_histograms") or {}).items():
        argv += ["--fetch-hist", f"{tier}={family}"]
    return argv


def _teardown(noise, loadgen, collector, stack, old_handlers: dict) -> None:
    """Stop the noise, the load generator and the collector, then the stack; from here on signals are
    deferred (the closing files are written whatever arrives)."""
    try:
        if noise is not None:
            noise.stop()
        for proc in (loadgen, collector):
            if proc is not None:
                terminate_group(proc, grace_s=5.0)
        if stack is not None:
            stack.stop()
    finally:
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            old_handlers.setdefault(s, signal.getsignal(s))
            signal.signal(s, _defer_signal)


def _finish(spec, out_dir, tmp, claim, summary, failure, phases, t_start, started, tier2_dir, load, collector):
    """Summarize what was measured (also for failed cells: nothing is lost), write the closing files and
    rename the folder; runs with signals deferred (_defer_signal)."""
    # ---- summarize what was measured (also for failed cells: nothing is lost)
    records_file = tmp / METRICS_JSONL
    if not (tmp / "load.go").exists() and records_file.exists() and records_file.stat().st_size == 0:
        records_file.unlink()  # the load generator was started early but never let go: no record, no file
    phases.start("write")
    _release(tmp / ".reserve")
    summary["collector_rc"] = collector.returncode if collector is not None else None
    try:
        records, truncated = read_jsonl(tmp / METRICS_JSONL) if (tmp / METRICS_JSONL).exists() else ([], 0)
    except RecordError as exc:
        records, truncated = [], 0
        failure = failure or str(exc)
    summary["truncated_lines"] = truncated
    summary["requests"] = stats.summarize_requests(records)
    collector_summary = None
    if (tmp / COLLECTOR_SUMMARY_JSON).exists():
        try:
            collector_summary = read_json(tmp / COLLECTOR_SUMMARY_JSON)
        except RecordError:
            collector_summary = None
    summary["quality"] = _quality(collector_summary, summary["collector_rc"])
    summary["quality"].update(itl_flags(records, float(spec.get("quality", {}).get("itl_stall_ms", 1000.0))))
    lg = None
    if (tmp / LOADGEN_SUMMARY_JSON).exists():
        try:
            lg = read_json(tmp / LOADGEN_SUMMARY_JSON)
            summary["client_bound"] = bool(lg.get("client_bound", False))
        except RecordError:
            lg = None
    files, nbytes = _dir_bytes(tier2_dir)
    summary["tier2_files"] = files
    summary["tier2_file_bytes"] = nbytes
    if not spec.get("keep_tier2_files"):
        shutil.rmtree(tier2_dir, ignore_errors=True)
    if failure is None and summary["requests"]["n_ok"] == 0:
        failure = f"no successful request ({summary['requests']['n_requests']} sent, errors: {summary['requests']['error_classes']})"
    if summary.get("cold_start"):
        first_request_check(summary["cold_start"], records)
    if failure is None:
        quality = spec.get("quality") or {}
        checked = validity.assess(records=records, requests=summary["requests"], load=load, loadgen=lg,
                                  quality=summary["quality"], sim_io=_sim_io(tmp) if spec["stack"]["kind"] == "sim" else None,
                                  hang_s=float(quality.get("hang_s", validity.HANG_S)))
        summary["checks"] = checked["checks"]  # every validity check: value, limit, passed (validity.py)
        degraded = [k for k in ("alignment_ok",) if not summary["quality"].get(k)] + checked["degraded_because"]
        if summary.get("cold_start") and not summary["cold_start"]["verified"]:
            degraded.append("cold_start")
        if summary["quality"]["itl_stalled"]:
            degraded.append("itl_stalled")
        summary["degraded_because"] = degraded
        if checked["invalid_because"]:  # the measurement failed: kept and listed, never analysed
            summary["status"] = "invalid"
            summary["invalid_because"] = checked["invalid_because"]
            summary["reason"] = validity.reasons(checked["checks"], checked["invalid_because"])
        else:
            summary["status"] = "degraded" if degraded else "ok"
            if checked["degraded_because"]:
                summary["degraded_reason"] = validity.reasons(checked["checks"], checked["degraded_because"])
    else:
        summary["status"] = "failed"
        summary["reason"] = failure
    summary["started_utc"] = started
    summary["finished_utc"] = utc_now()
    summary["wall_s"] = round(time.monotonic() - t_start, 3)
    summary["phases_s"] = phases.done()  # where the wall time went (benchmarks/cell_overhead.py)
    summary["phase_starts_ns"] = {k: v for k, v in phases.starts_ns.items() if k != "end"}
    if failure is not None:  # the reason first: it is what a failed folder must always have
        _release(tmp / ".reserve-reason")
        _write_reason(spec, tmp, failure)
    write_error = _write_cell_files(tmp, spec, summary)
    if write_error is not None and failure is None:  # a full disk while finishing: failed, keep what was written
        failure = write_error
        summary["status"] = "failed"
        summary["reason"] = failure
        _write_text(tmp / SUMMARY_JSON, json.dumps(summary, indent=2, default=str))
        _release(tmp / ".reserve-reason")
        _write_reason(spec, tmp, failure)
    _release(tmp / ".reserve-reason")
    log_outcome(summary)
    if failure is not None:
        failed_dir = out_dir.with_name(f"{out_dir.name}.failed-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        os.replace(tmp, failed_dir)
        cellguard.drop_owner_file(failed_dir)
        claim.finish()
        raise CellFailed(f"cell {spec['hyp']}/{spec['cell']} failed: {failure.splitlines()[0]} (kept in {failed_dir})")
    os.replace(tmp, out_dir)
    cellguard.drop_owner_file(out_dir)
    claim.finish()
    return summary


def _write_reason(spec: dict, tmp: Path, failure: str) -> None:
    reason_error = _write_text(tmp / "reason.txt", failure + "\n")
    if reason_error is not None:  # the log is the last place the reason can go
        log.error("cell %s/%s failed: %s (%s)", spec["hyp"], spec["cell"], failure.splitlines()[0], reason_error)


def _sim_io(tmp: Path) -> dict | None:
    """The simulator's own tier-2 I/O errors and verify failures over the cell (its scraped counters'
    deltas in dynkv.jsonl); None without a readable record."""
    try:
        recs, _ = read_jsonl(tmp / DYNKV_JSONL)
    except RecordError:
        return None
    out = {"tier2_io_errors": 0.0, "tier2_verify_failures": 0.0}
    for rec in recs:
        sim = rec.get("sim") if isinstance(rec.get("sim"), dict) else {}
        for key in out:
            if isinstance(sim.get(key), (int, float)):
                out[key] += sim[key]
    return out


def _write_cell_files(tmp: Path, spec: dict, summary: dict) -> str | None:
    """Scrub the logs and write summary.json, provenance.json and cell.json's stamps; the first write
    error as one line (the cell then counts as failed), never an exception."""
    errors = []
    try:
        scrub_logs(tmp)
    except OSError as exc:
        errors.append(f"cannot scrub the logs: {exc.strerror or exc}")
    errors.append(_write_text(tmp / SUMMARY_JSON, json.dumps(summary, indent=2, default=str)))
    errors.append(_write_text(tmp / PROVENANCE_JSON, json.dumps(
        provenance(REPO_ROOT, {"cell": spec["cell"], "hyp": spec["hyp"], "sim": spec.get("sim"),
                               "code_fingerprint": measurement_fingerprint()}), indent=2)))
    errors.append(_stamp_cell_json(tmp, started_utc=summary["started_utc"], finished_utc=summary["finished_utc"]))
    return next((e for e in errors if e), None)
