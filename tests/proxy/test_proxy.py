"""`kvharness proxy`: adapter names stay inside the one directory, the stream passes through unbuffered,
backend errors and backend death reach the client cleanly, loopback unless told otherwise."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = "base-model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """A raw asyncio SSE backend in a thread. The prompt picks the behaviour: ``ok``, ``error`` (503 JSON),
    ``die`` (two events, then the connection is cut), ``gate`` (one event, then wait for ``gate`` before
    the rest)."""

    def __init__(self):
        self.port = free_port()
        self.bodies: list[dict] = []
        self.gate = threading.Event()
        self.gate_opened_in_time = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ready = threading.Event()
        self.thread.start()
        self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_forever()

    async def _conn(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                path = lines[0].split()[1]
                if path == "/health":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                    await writer.drain()
                    continue
                obj = json.loads(body)
                self.bodies.append(obj)
                mode = obj.get("prompt", "ok")
                if mode == "error":
                    msg = b'{"error":{"message":"overloaded","code":503}}'
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(msg), msg))
                    await writer.drain()
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                for i in range(4):
                    ev = b'data: {"choices":[{"index":0,"text":"w%d "}]}\n\n' % i
                    writer.write(b"%x\r\n%b\r\n" % (len(ev), ev))
                    await writer.drain()
                    if mode == "gate" and i == 0:
                        self.gate_opened_in_time = await self.loop.run_in_executor(None, self.gate.wait, 10)
                    if mode == "die" and i == 1:
                        writer.transport.abort()
                        return
                done = b"data: [DONE]\n\n"
                writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(done), done))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def backend():
    b = Backend()
    yield b
    b.stop()


def start_proxy(tmp_path: Path, backend_port: int, *extra: str):
    port = free_port()
    adapter_dir = tmp_path / "tier2" / "lora"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvharness", "proxy", "--backend", f"http://127.0.0.1:{backend_port}",
         "--backend-model", MODEL, "--port", str(port), "--adapter-dir", str(adapter_dir), "--adapter-bytes", "64KiB",
         *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, base, adapter_dir
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("proxy did not start: " + proc.stderr.read().decode())


@pytest.fixture(scope="module")
def proxy_root(tmp_path_factory):
    return tmp_path_factory.mktemp("proxy")


@pytest.fixture(scope="module")
def proxy(proxy_root, backend):
    proc, base, adapter_dir = start_proxy(proxy_root, backend.port, "--resident", "2")
    yield base, adapter_dir
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def metrics(base: str) -> dict:
    text = httpx.get(base + "/metrics", timeout=5).text
    return {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}


def complete(base: str, body: dict, timeout: float = 10.0) -> httpx.Response:
    return httpx.post(base + "/v1/completions", json=body, timeout=timeout)


@pytest.mark.parametrize("name", ["../../etc/x", "/etc/passwd", "", "a" * 1000, "..", "a/b", "x\x00y"])
@pytest.mark.parametrize("field", ["adapter_id", "model"])
def test_bad_adapter_names_are_refused_and_write_nothing(proxy, proxy_root, backend, name, field):
    base, adapter_dir = proxy
    root = proxy_root.parent
    before = tree(root)
    n = len(backend.bodies)
    body = {"model": MODEL, "prompt": "ok", "max_tokens": 2, field: name}
    r = complete(base, body)
    assert r.status_code == 400, (name, r.text)
    assert "invalid adapter id" in r.json()["error"]["message"]
    assert tree(root) == before and len(backend.bodies) == n  # nothing written anywhere, nothing forwarded
    assert not (root / "etc").exists() and not (root.parent / "etc").exists()


def test_adapter_is_stripped_and_tier2_io_follows_the_resident_set(proxy, backend):
    base, adapter_dir = proxy
    m0 = metrics(base)
    old = {p.name for p in adapter_dir.iterdir()} if adapter_dir.exists() else set()
    for name in ["a1", "a2", "a1", "a3", "a1"]:  # resident 2, LRU: a1 a2 | a1 hit | a3 evicts a2 | a1 hit
        r = complete(base, {"model": name, "prompt": "ok", "max_tokens": 2, "stream": True})
        assert r.status_code == 200 and "data: [DONE]" in r.text
    assert all(b["model"] == MODEL and "adapter_id" not in b for b in backend.bodies[-5:])
    m = {k: v - m0.get(k, 0) for k, v in metrics(base).items()}
    assert m["kvproxy_lora_loads_total"] == 3 and m["kvproxy_lora_hits_total"] == 2
    assert m["kvproxy_lora_write_bytes_total"] == 3 * 65536 == m["kvproxy_lora_read_bytes_total"]
    assert sorted({p.name for p in adapter_dir.iterdir()} - old) == ["a1.lora", "a2.lora", "a3.lora"]
    assert all(p.stat().st_size == 65536 for p in adapter_dir.iterdir())
    r = complete(base, {"model": MODEL, "adapter_id": "a2", "prompt": "ok", "max_tokens": 2})  # a2 was evicted
    assert r.status_code == 200
    m = {k: v - m0.get(k, 0) for k, v in metrics(base).items()}
    assert m["kvproxy_lora_loads_total"] == 4 and m["kvproxy_lora_write_bytes_total"] == 3 * 65536


def test_the_stream_is_not_buffered(proxy, backend):
    """The backend holds the rest of the stream until the client has seen the first event: a buffering
    proxy would deliver nothing until the backend gave up waiting."""
    base, _ = proxy
    backend.gate.clear()
    with httpx.stream("POST", base + "/v1/completions", timeout=30,
                      json={"model": "s1", "prompt": "gate", "max_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(x for x in lines if x.startswith("data:"))
        backend.gate.set()
        rest = [x for x in lines if x.startswith("data:")]
    assert '"w0 "' in first and backend.gate_opened_in_time is True
    assert rest[-1] == "data: [DONE]"


def test_backend_errors_pass_through_with_status(proxy):
    base, _ = proxy
    n0 = metrics(base)["kvproxy_backend_errors_total"]
    r = complete(base, {"model": "e1", "prompt": "error", "max_tokens": 2})
    assert r.status_code == 503 and r.json()["error"]["message"] == "overloaded"
    assert metrics(base)["kvproxy_backend_errors_total"] == n0 + 1


def test_backend_death_mid_stream_ends_the_stream_with_an_error_event(proxy):
    base, _ = proxy
    with httpx.stream("POST", base + "/v1/completions", timeout=15,
                      json={"model": "d1", "prompt": "die", "max_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200
        events = [x for x in r.iter_lines() if x.startswith("data:")]
    assert len(events) == 3 and "w1" in events[1]
    assert json.loads(events[-1][5:])["error"]["type"] == "backend_error"
    r = complete(base, {"model": "d1", "prompt": "ok", "max_tokens": 2})  # the proxy still serves
    assert r.status_code == 200


def test_unreachable_backend_is_502(tmp_path):
    proc, base, _ = start_proxy(tmp_path, free_port())
    try:
        r = complete(base, {"model": "x1", "prompt": "ok", "max_tokens": 2})
        assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def test_non_loopback_bind_is_refused_unless_allowed():
    r = subprocess.run([sys.executable, "-m", "kvharness", "proxy", "--backend", "http://127.0.0.1:9", "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 2 and "--allow-remote" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_stack_config_puts_the_proxy_in_front_and_tears_it_down(tmp_path):
    from kvharness.plan.config import load_stack
    from kvharness.stacks.launcher import RunningStack, plan_launch

    stack = load_stack("sim-A-lora-proxy")
    names = {"host": "127.0.0.1", "model": "llama-3.1-8b", "precision": "fp8", "hardware": "gb10",
             "served_model_name": MODEL, "tier0_bytes": 1 << 30, "tokens_per_block": 32, "max_batch_size": 8,
             "max_num_tokens": 4096, "speedup": 50, "seed": 0, "tier2_dir": str(tmp_path / "t2")}
    plan = plan_launch(stack, names, tmp_path)
    assert plan.argvs[-1][1:4] == ["-m", "kvharness", "proxy"] and plan.base_url != f"http://127.0.0.1:{plan.port}"
    assert plan.metrics_urls["proxy"] == plan.base_url + "/metrics"
    with RunningStack(plan) as running:
        r = complete(plan.base_url, {"model": MODEL, "adapter_id": "t1", "prompt": "hello there", "max_tokens": 2,
                                     "stream": True})
        assert r.status_code == 200 and "data: [DONE]" in r.text
        assert (tmp_path / "t2" / "lora" / "t1.lora").stat().st_size == 1 << 20
        pids = running.pids
    for pid in pids:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}") and \
                open(f"/proc/{pid}/stat").read().split()[2] != "Z":
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_stack_proxy_section_is_checked(tmp_path):
    from kvharness.plan.config import ConfigError, load_stack

    f = tmp_path / "bad.yaml"
    f.write_text("kind: sim\ncommand: [x]\nproxy: {resident: -1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: proxy.resident: expected an integer >= 0"):
        load_stack(str(f))
    f.write_text("kind: sim\ncommand: [x]\nproxy: {residents: 3}\n")
    with pytest.raises(ConfigError, match=r"proxy: unknown key 'residents'"):
        load_stack(str(f))


def test_head_and_health_are_forwarded(proxy):
    base, _ = proxy
    assert httpx.get(base + "/health", timeout=5).status_code == 200
    r = httpx.head(base + "/health", timeout=5)
    assert r.status_code == 200
    assert httpx.get(base + "/health", timeout=5).status_code == 200  # the connection pool is still sane
