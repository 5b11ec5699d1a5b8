"""Helpers shared by the simulator benchmarks: start a sim process, drive it closed-loop.

The driver here is deliberately tiny (aiohttp, one session with an unlimited connection pool); the
project's real load generator is ``kvharness loadgen``. TTFT counts from the send to the first event
that carries generated text (a role-only chat event does not count).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, proc: subprocess.Popen, timeout_s: float) -> bool:
    """Poll ``base``/health until it answers 200 (True), or ``proc`` exits or ``timeout_s`` passes (False)."""
    deadline = time.time() + timeout_s
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(base + "/health", timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:  # not up yet
            pass
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def sim_process(args: list[str], log_path: str | None = None, startup_timeout: float = 20.0,
                cpus: set[int] | None = None):
    """Start ``python -m kvharness sim ARGS --port P`` (pinned to ``cpus`` when given) and yield
    (base_url, proc, port)."""
    port = free_port()
    cmd = [sys.executable, "-m", "kvharness", "sim", "--port", str(port), *args]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                            preexec_fn=pin)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(base, proc, startup_timeout):
            if proc.poll() is not None:
                raise RuntimeError(f"sim exited with {proc.returncode}: {' '.join(cmd)}")
            raise RuntimeError("sim did not become healthy")
        yield base, proc, port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if log_path:
            log.close()


def prompt_words(n: int, nonce: str) -> str:
    # nonce first, so prompts of different users never share a prefix
    return " ".join([f"n{nonce}"] + [f"w{i % 997}" for i in range(n - 1)])


async def _one(session, url: str, body: dict, rec: dict) -> None:
    t0 = time.perf_counter()
    rec["t_send"] = t0
    async with session.post(url, json=body) as resp:
        rec["status"] = resp.status
        if resp.status != 200:
            await resp.read()
            return
        first = None
        buf = b""
        async for chunk in resp.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                if not ev.startswith(b"data: "):
                    continue
                data = ev[6:]
                if data == b"[DONE]":
                    continue
                if first is not None and b'"usage":{' not in data:
                    continue  # keep the client light: only the first token and the usage need parsing
                obj = json.loads(data)
                if obj.get("usage"):
                    rec["usage"] = obj["usage"]
                ch = obj.get("choices") or []
                if ch and first is None:
                    txt = ch[0].get("text") if "text" in ch[0] else (ch[0].get("delta") or {}).get("content")
                    if txt:
                        first = time.perf_counter()
        rec["ttft"] = (first - t0) if first else None
        rec["e2e"] = time.perf_counter() - t0


async def closed_loop(base: str, concurrency: int, duration_s: float, context_tokens: int, output_tokens: int,
                      model: str = "llama-3.1-8b", chat: bool = False, nonce_prefix: str = "",
                      reuse: bool = False) -> list[dict]:
    """Closed loop: each user sends its next request when the previous one ends. ``reuse``: every
    request of a user repeats that user's prompt (a per-user nonce), else each prompt is new."""
    import aiohttp

    url = base + ("/v1/chat/completions" if chat else "/v1/completions")
    records: list[dict] = []
    stop_at = time.perf_counter() + duration_s
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        async def user(u: int):
            i = 0
            while time.perf_counter() < stop_at:
                text = prompt_words(context_tokens, f"{nonce_prefix}{u}" if reuse else f"{nonce_prefix}{u}x{i}")
                body = {"model": model, "max_tokens": output_tokens, "stream": True,
                        "stream_options": {"include_usage": True}}
                if chat:
                    body["messages"] = [{"role": "user", "content": text}]
                else:
                    body["prompt"] = text
                rec = {"user": u, "i": i}
                records.append(rec)
                try:
                    await _one(session, url, body, rec)
                except Exception as e:
                    rec["error"] = repr(e)
                i += 1
        await asyncio.gather(*(user(u) for u in range(concurrency)))
    return records


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {series: value} (series = name plus its label string)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, val = line.rpartition(" ")
        try:
            out[name] = float(val)
        except ValueError:
            pass
    return out
