"""Start `python -m kvharness sim` on a free 127.0.0.1 port in a subprocess; always stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimHandle:
    def __init__(self, proc, port, metrics_port, log_path, tier2_dir):
        self.proc, self.port, self.metrics_port, self.log_path, self.tier2_dir = proc, port, metrics_port, log_path, tier2_dir
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, port: int | None = None, timeout: float = 5.0):
        url = f"http://127.0.0.1:{port or self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post(self, path: str, body: bytes, timeout: float = 30.0):
        req = urllib.request.Request(self.base + path, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metrics(self, kvbm: bool = False) -> dict[str, float]:
        _, text = self.get("/metrics", port=self.metrics_port if kvbm else None)
        out = {}
        for line in text.decode().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text()
        except OSError:
            return ""


def _start(args, tmp_path) -> SimHandle:
    port = free_port()
    mport = free_port()
    tier2 = tmp_path / "tier2"
    log_path = tmp_path / f"sim-{port}.log"
    full = [sys.executable, "-m", "kvharness", "sim", "--port", str(port), *args]
    if "--mode" in args and args[args.index("--mode") + 1] == "B":
        if "--metrics-port" not in args:
            full += ["--metrics-port", str(mport)]
        if "--tier2-dir" not in args:
            full += ["--tier2-dir", str(tier2)]
    log = open(log_path, "w")
    proc = subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    log.close()
    return SimHandle(proc, port, mport, log_path, tier2)


def _wait_ready(h: SimHandle) -> SimHandle:
    deadline = time.time() + 20
    while time.time() < deadline:
        if h.proc.poll() is not None:
            raise RuntimeError(f"sim exited {h.proc.returncode}: {h.log()}")
        try:
            st, _ = h.get("/health", timeout=1)
            if st == 200:
                return h
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"sim not healthy: {h.log()}")


def _stop(h: SimHandle) -> None:
    if h.proc.poll() is None:
        try:
            os.killpg(h.proc.pid, signal.SIGTERM)
            h.proc.wait(10)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(h.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            h.proc.wait()


@pytest.fixture
def start_sim(tmp_path):
    started: list[SimHandle] = []

    def factory(*args: str, wait_ready: bool = True) -> SimHandle:
        h = _start(list(args), tmp_path)
        started.append(h)
        return _wait_ready(h) if wait_ready else h

    yield factory
    for h in started:
        _stop(h)


FAST = ("--speedup", "50")
