"""Shared plumbing of the load-generator benchmarks: pinned processes, the reference server, a run."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import StealMeter, cores, cpu_fields, proc_cpu_s

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
REFSERVER = str(Path(__file__).with_name("loadgen_refserver.py"))


NICE = int(os.environ.get("LOADGEN_BENCH_NICE", "-10"))


def pinned(core: set[int] | None):
    """preexec_fn: pin to ``core`` and raise the priority (nice -10 when allowed) so that other
    processes on a shared machine disturb the measurement less."""

    def setup():
        if core is not None:
            os.sched_setaffinity(0, core)
        if NICE:
            try:
                os.nice(NICE)
            except OSError:
                pass

    return setup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RefServer:
    """The raw-asyncio reference SSE server in its own process, pinned to the server core."""

    def __init__(self, tokens: int = 16, ttft_ms: float = 0.0, itl_ms: float = 0.0, truth: str | None = None):
        self.port = free_port()
        argv = [PY, REFSERVER, "serve", "--port", str(self.port), "--tokens", str(tokens), "--ttft-ms", str(ttft_ms),
                "--itl-ms", str(itl_ms)]
        if truth:
            argv += ["--truth", truth]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, preexec_fn=pinned(cores()[1]))
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"reference server did not start: {line!r}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        """CPU seconds the server process has used so far (Linux /proc; 0 elsewhere)."""
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def run_loadgen(spec: dict, workdir: str | None = None, server: "RefServer | None" = None) -> tuple[dict, list[dict]]:
    """Our generator as the CLI runs it (own process, pinned to the client core): (summary, records)."""
    workdir = workdir or tempfile.mkdtemp(prefix="loadgen-bench-")
    spec_path = os.path.join(workdir, "load.json")
    out = os.path.join(workdir, "metrics.jsonl")
    summ = os.path.join(workdir, "summary.json")
    with open(spec_path, "w") as fh:
        json.dump({"progress": "off", **spec}, fh)
    src = os.environ.get("LOADGEN_BENCH_SRC", str(ROOT / "src"))  # to compare another checkout of the generator
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    srv_cpu0 = server.cpu_s() if server is not None else 0.0
    with Interference(cores()[1]) as srv_interference, Interference() as interference, StealMeter() as steal:
        r = subprocess.run([PY, "-m", "kvharness", "loadgen", "--spec", spec_path, "--out", out, "--summary-out", summ],
                           capture_output=True, text=True, preexec_fn=pinned(cores()[0]), env=env, timeout=600)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if r.returncode != 0:
        raise RuntimeError(f"loadgen exited {r.returncode}: {r.stderr[-2000:]}")
    with open(summ) as fh:
        summary = json.load(fh)
    summary["bench_other_load_pct"] = interference.other_pct(proc_cpu)
    summary["bench_steal_pct"] = steal.percent
    if server is not None:  # the same for the server's core: a disturbed server writes in bursts
        summary["bench_server_other_load_pct"] = srv_interference.other_pct(server.cpu_s() - srv_cpu0)
    with open(out) as fh:
        records = [json.loads(line) for line in fh]
    return summary, records


def run_minimal_client(port: int, concurrency: int, duration_s: float) -> dict:
    r = subprocess.run([PY, REFSERVER, "client", "--port", str(port), "--concurrency", str(concurrency),
                        "--duration-s", str(duration_s)], capture_output=True, text=True,
                       preexec_fn=pinned(cores()[0]), timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"minimal client failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def read_truth(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def fmt(v, nd=2) -> str:
    return "-" if v is None else (f"{v:,.{nd}f}" if isinstance(v, float) else str(v))


def wait(seconds: float) -> None:
    time.sleep(seconds)


def core_busy_s(core: set[int] | None) -> float:
    """Busy CPU seconds (everything but idle and iowait) of one core since boot, from /proc/stat."""
    f = cpu_fields(next(iter(core))) if core else None
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK") if f else 0.0
    name = f"cpu{next(iter(core))} "
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith(name):
                f = [int(x) for x in line.split()[1:]]
                busy = sum(f) - f[3] - f[4]
                return busy / os.sysconf("SC_CLK_TCK")
    return 0.0


class Interference:
    """How busy the client core was with OTHER processes during a run (other sessions, daemons):
    busy(core) - our client's CPU, as a fraction of the wall time. Timing on a shared machine is only
    as good as this number is small."""

    def __init__(self, core: set[int] | None = None):
        self.core = core if core is not None else cores()[0]

    def __enter__(self):
        self.t0 = time.monotonic()
        self.b0 = core_busy_s(self.core)
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t0
        self.busy = core_busy_s(self.core) - self.b0

    def other_pct(self, own_cpu_s: float) -> float:
        return max(0.0, 100.0 * (self.busy - own_cpu_s) / self.wall) if self.wall > 0 else 0.0
