"""Measure one cell: launch the stack with its tier settings, wait for health, start the collector,
run the load, stop everything, and write the cell folder atomically.

The folder is built as ``<cell>.tmp/`` and renamed to ``<cell>/`` only when the cell finished. A cell
that fails (the stack does not start or crashes, the load produced no successful request, an
interrupt) is renamed ``<cell>.failed-<UTC>/`` with ``reason.txt`` and everything measured so far,
and :class:`CellFailed` is raised so the workflow marks the job failed and a rerun repeats only it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvharness import stats
from kvharness.analysis.records import RecordError, read_json, read_jsonl
from kvharness.config import REPO_ROOT, ConfigError
from kvharness.provenance import measurement_fingerprint, provenance, scrub, secret_values, utc_now
from kvharness.units import format_bytes
from kvharness.stacks.launcher import (
    RunningStack,
    StackLaunchError,
    child_env,
    child_popen_kwargs,
    plan_launch,
    terminate_group,
)

log = logging.getLogger("kvharness.cell")
logging.getLogger("httpx").setLevel(logging.WARNING)

ALIGNMENT_GATE = 0.95
ITL_STALL_SHARE = 0.01  # a cell is flagged when more than 1 % of its token gaps are stalls


class CellFailed(RuntimeError):
    """The cell did not produce a trustworthy measurement; its partial folder was kept."""


class CellInterrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP during a cell (SIGINT arrives as a plain KeyboardInterrupt)."""


def _raise_interrupt(signum, _frame):
    raise CellInterrupted(f"signal {signal.Signals(signum).name}")


def read_uwork(path: str | Path, stack_name: str, rule: str = "uwork", stacks: list[str] | None = None) -> int:
    """U_work of ``stack_name`` from an H0 ``uwork.csv``; with ``rule`` ``uwork_min`` / ``uwork_max`` the lower /
    higher U_work of ``stacks`` (default: every stack in the file), so every stack runs at the same load."""
    if rule in ("uwork_min", "uwork_max"):
        values = [read_uwork(path, s) for s in (stacks or _uwork_stacks(path))]
        return min(values) if rule == "uwork_min" else max(values)
    path = Path(path)
    try:
        with path.open() as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing (run H0 first: snakemake results/H0/uwork.csv)") from None
    for row in rows:
        if row.get("stack") == stack_name:
            value = row.get("u_work_used") or row.get("u_work")
            try:
                return int(float(value))
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: stack {stack_name}: u_work {value!r} is not a number") from None
    raise ConfigError(f"{path}: no U_work row for stack {stack_name!r} (stacks: {[r.get('stack') for r in rows]})")


def _uwork_stacks(path: str | Path) -> list[str]:
    try:
        with Path(path).open() as fh:
            return [r["stack"] for r in csv.DictReader(fh) if r.get("stack")]
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing (run H0 first: snakemake results/H0/uwork.csv)") from None


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
    pattern = load.setdefault("pattern", {"kind": "closed"})
    if pattern.get("kind") == "bursty" and not pattern.get("burst_size"):
        pattern["burst_size"] = load["concurrency"]
    return load


def template_names(spec: dict, tier2_dir: Path) -> dict:
    tiers = spec["tiers"]
    gib = 1024**3
    names = {
        "host": spec["host"],
        "model": spec["model"], "model_path": spec["model_path"],
        "served_model_name": spec["served_model_name"], "precision": spec["precision"],
        "hardware": spec["hardware"], "tier2_dir": str(tier2_dir),
        **{k: tiers[k] for k in ("tier0_bytes", "tier1_bytes", "tier2_bytes")},
        **{k.replace("_bytes", "_gb"): f"{tiers[k] / gib:.3f}".rstrip("0").rstrip(".") for k in ("tier0_bytes", "tier1_bytes", "tier2_bytes")},
        **spec["engine"], **spec["sim"],
    }
    kv_per_token = kv_bytes_per_token(spec["model"], spec["precision"], spec["hardware"])
    names["tier0_tokens"] = tiers["tier0_bytes"] // kv_per_token if kv_per_token else None
    return names


def kv_bytes_per_token(model: str, precision: str, hardware: str = "gb10") -> int | None:
    """KV bytes per token of a model profile (configs/models.yaml, owned by the simulator), None if unknown."""
    from kvharness.sim.profiles import build_timing_model

    try:
        return int(build_timing_model(hardware, model, precision).kv_bytes_per_token)
    except (KeyError, ValueError, TypeError, OSError):
        return None


def check_tier2_space(spec: dict, tier2_dir: Path) -> None:
    """Refuse to start a tiered stack whose disk tier cannot fit on the tier-2 filesystem.

    Real KVBM allocates its disk cache up front; the simulator writes ``block_bytes_scale`` of it.
    """
    if not spec["stack"].get("tiered"):
        return
    scale = float(spec["sim"].get("block_bytes_scale", 1.0)) if spec["stack"]["kind"] == "sim" else 1.0
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


def _python_module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "kvharness", module, *args]


def _start(argv: list[str], log_path: Path) -> subprocess.Popen:
    fh = open(log_path, "ab", buffering=0)
    try:
        return subprocess.Popen(argv, env=child_env(), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                **child_popen_kwargs())
    finally:
        fh.close()


def _wait_for_file(path: Path, proc: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


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


def run_cell(spec: dict, out_dir: str | Path, uwork_csv: str | None = None, uwork: dict | int | None = None) -> dict:
    """Measure one cell into ``out_dir``; returns the cell summary. Raises CellFailed (folder kept)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    started = utc_now()
    t_start = time.monotonic()
    tier2_dir = Path(spec["tier2_root"]).resolve() / spec["hyp"] / spec["cell"]
    summary: dict = {"hyp": spec["hyp"], "cell": spec["cell"], "stack": spec["stack"]["name"],
                     "role": spec["role"], "profile": spec["profile"], "status": "running"}
    old_handlers = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    stack = loadgen = collector = None
    failure: str | None = None
    try:
        load = resolve_load(spec, uwork_csv, uwork)
        shutil.rmtree(tier2_dir, ignore_errors=True)
        check_tier2_space(spec, tier2_dir)
        tier2_dir.mkdir(parents=True)
        plan = plan_launch(spec["stack"], template_names(spec, tier2_dir), tmp)
        from kvharness.workingset import working_set

        ws = working_set(load, spec["tiers"], kv_bytes_per_token(spec["model"], spec["precision"], spec["hardware"]))
        resolved = {**spec, "load": load, "launch": plan.describe(), "tier2_dir": str(tier2_dir), "working_set": ws}
        (tmp / "cell.json").write_text(json.dumps(resolved, indent=2, default=str))
        log.info("cell %s/%s: launching %s (%s)", spec["hyp"], spec["cell"], plan.name, " ".join(plan.argvs[-1][:6]) if plan.argvs else "external")
        stack = RunningStack(plan)
        stack.start()
        health_s = stack.wait_healthy()
        summary["health_wait_s"] = round(health_s, 3)
        log.info("cell %s: healthy after %.2f s; starting collector", spec["cell"], health_s)

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
        collector = _start(argv, tmp / "collector.log")
        if not _wait_for_file(tmp / "sysmon.jsonl", collector, 5.0):
            log.warning("cell %s: collector produced no sample within 5 s", spec["cell"])

        load_spec = {
            "base_url": plan.base_url, "endpoint": load.get("endpoint", "completions"),
            "model": spec["served_model_name"], "stream": True,
            "pattern": {**load["pattern"], **({"concurrency": load["concurrency"]} if load.get("concurrency") else {})},
            "workload": load["workload"], "duration_s": load["duration_s"],
            "warmup_s": load.get("warmup_s", 0.0), "seed": load.get("seed", 0),
            "request_timeout_s": load.get("request_timeout_s", 60.0),
            "labels": {"stack": plan.name, "concurrency": load.get("concurrency")},
            "tokenizer": os.path.abspath(load["tokenizer"]) if load.get("tokenizer") else None,
        }
        for key in ("lora", "slo", "max_requests"):
            if load.get(key) is not None:
                load_spec[key] = load[key]
        (tmp / "load.json").write_text(json.dumps(load_spec, indent=2))
        log.info("cell %s: load %s x%s for %s s", spec["cell"], load["pattern"]["kind"], load.get("concurrency"), load.get("duration_s"))
        loadgen = _start(_python_module_argv("loadgen", "--spec", str(tmp / "load.json"), "--out", str(tmp / "metrics.jsonl"),
                                             "--summary-out", str(tmp / "loadgen_summary.json")), tmp / "loadgen.log")
        budget = load.get("cell_timeout_s") or float(load.get("duration_s") or 600.0) + float(load.get("request_timeout_s", 60.0)) + 30.0
        try:
            loadgen_rc = loadgen.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            loadgen_rc = None
            failure = f"cell timeout: the load did not finish within {budget:.0f} s (load.cell_timeout_s)"
        summary["loadgen_rc"] = loadgen_rc
        dead = stack.dead_process()
        if dead is not None:
            failure = failure or f"stack process {dead.args[0]!r} exited with code {dead.returncode} during the load (crash)"
        elif loadgen_rc not in (0, None) and failure is None:
            failure = f"load generator exited with code {loadgen_rc} (see loadgen.log)"
    except StackLaunchError as exc:
        failure = scrub(str(exc))
    except ConfigError as exc:
        failure = str(exc)
    except KeyboardInterrupt as exc:
        failure = f"interrupted ({exc or 'SIGINT'})"
    finally:
        try:
            for proc in (loadgen, collector):
                if proc is not None:
                    terminate_group(proc, grace_s=5.0)
            if stack is not None:
                stack.stop()
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)

    # ---- summarize what was measured (also for failed cells: nothing is lost)
    summary["collector_rc"] = collector.returncode if collector is not None else None
    try:
        records, truncated = read_jsonl(tmp / "metrics.jsonl") if (tmp / "metrics.jsonl").exists() else ([], 0)
    except RecordError as exc:
        records, truncated = [], 0
        failure = failure or str(exc)
    summary["truncated_lines"] = truncated
    summary["requests"] = stats.summarize_requests(records)
    collector_summary = None
    if (tmp / "collector_summary.json").exists():
        try:
            collector_summary = read_json(tmp / "collector_summary.json")
        except RecordError:
            collector_summary = None
    summary["quality"] = _quality(collector_summary, summary["collector_rc"])
    summary["quality"].update(itl_flags(records, float(spec.get("quality", {}).get("itl_stall_ms", 1000.0))))
    if (tmp / "loadgen_summary.json").exists():
        try:
            lg = read_json(tmp / "loadgen_summary.json")
            summary["client_bound"] = bool(lg.get("client_bound", False))
        except RecordError:
            pass
    files, nbytes = _dir_bytes(tier2_dir)
    summary["tier2_files"] = files
    summary["tier2_file_bytes"] = nbytes
    if not spec.get("keep_tier2_files"):
        shutil.rmtree(tier2_dir, ignore_errors=True)
    if failure is None and summary["requests"]["n_ok"] == 0:
        failure = f"no successful request ({summary['requests']['n_requests']} sent, errors: {summary['requests']['error_classes']})"
    if failure is None:
        degraded = [k for k in ("collector_ok", "alignment_ok") if not summary["quality"].get(k)]
        if summary["quality"]["itl_stalled"]:
            degraded.append("itl_stalled")
        summary["status"] = "degraded" if degraded else "ok"
        summary["degraded_because"] = degraded
    else:
        summary["status"] = "failed"
        summary["reason"] = failure
    summary["started_utc"] = started
    summary["finished_utc"] = utc_now()
    summary["wall_s"] = round(time.monotonic() - t_start, 3)
    scrub_logs(tmp)
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (tmp / "provenance.json").write_text(json.dumps(provenance(REPO_ROOT, {
        "cell": spec["cell"], "hyp": spec["hyp"], "sim": spec.get("sim"),
        "code_fingerprint": measurement_fingerprint()}), indent=2))
    if failure is not None:
        failed_dir = out_dir.with_name(f"{out_dir.name}.failed-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        (tmp / "reason.txt").write_text(failure + "\n")
        os.replace(tmp, failed_dir)
        raise CellFailed(f"cell {spec['hyp']}/{spec['cell']} failed: {failure.splitlines()[0]} (kept in {failed_dir})")
    os.replace(tmp, out_dir)
    return summary
