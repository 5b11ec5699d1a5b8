"""`kvharness proxy`: a LoRA adapter proxy in front of a backend that serves one model.

For a backend that does not load adapters itself, the proxy makes adapter churn cost what it costs on
a stack that does: each adapter is a file of ``--adapter-bytes`` (default 1 MiB) inside one fixed
directory, written on its first use and read on every miss of a resident set of ``--resident`` adapters
(LRU). A request names its adapter by ``adapter_id`` or by a ``model`` other than the backend's; the name
must match ``^[A-Za-z0-9._-]{1,128}$`` without ``..`` (anything else is a 400 and touches no file). The
request goes on to the backend with the adapter stripped (``model`` = the backend's model) or, with
``--forward model``, with the adapter as ``model``.

The response streams through as it arrives: the backend's chunked body is decoded and every chunk is
written to the client at once (no buffering, so TTFT through the proxy ≈ TTFT direct; see
benchmarks/proxy_overhead.py). Backend errors pass through with their status and body. A backend that
dies (or stalls past ``--stream-idle-timeout-s``) mid-stream gives the client one
``data: {"error": ...}`` event and the end of the stream, then the connection closes; one that cannot be
reached gives a 502. ``/metrics`` exports the proxy's counters (``kvproxy_*``); ``/health`` and every
other path are forwarded. Binds 127.0.0.1 unless ``--allow-remote``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from kvharness.netaddr import is_loopback
from kvharness.sim.httpserver import Connection, Request
from kvharness.sim.lora import valid_adapter_id
from kvharness.units import parse_bytes

GEN_PATHS = ("/v1/completions", "/v1/chat/completions")
HOP_BY_HOP = {"connection", "keep-alive", "content-length", "transfer-encoding", "host", "proxy-connection",
              "proxy-authorization", "te", "trailer", "upgrade", "expect"}
MAX_IDLE_BACKEND = 512


def error_body(message: str, kind: str = "invalid_request_error", code: int = 400) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


# ----------------------------------------------------------------------------------------- adapters

class AdapterStore:
    """Adapter files inside one directory and the resident set (LRU) in front of them."""

    def __init__(self, directory: str, adapter_bytes: int, resident: int, executor: ThreadPoolExecutor):
        self.directory = os.path.realpath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.adapter_bytes = adapter_bytes
        self.resident_slots = resident
        self.resident: OrderedDict[str, None] = OrderedDict()
        self.loading: dict[str, asyncio.Future] = {}
        self.executor = executor
        self.c = {"loads": 0, "hits": 0, "read_bytes": 0, "write_bytes": 0, "rejected": 0, "load_seconds": 0.0}

    def path(self, name: str) -> str:
        if not valid_adapter_id(name):
            raise ValueError(name)
        p = os.path.join(self.directory, f"{name}.lora")
        if os.path.dirname(os.path.realpath(p)) != self.directory:  # defence in depth
            raise ValueError(name)
        return p

    def lookup(self, name: str) -> asyncio.Future | None:
        """None when ``name`` is resident (a hit); else the future of its load (shared by concurrent misses)."""
        if name in self.resident:
            self.resident.move_to_end(name)
            self.c["hits"] += 1
            return None
        fut = self.loading.get(name)
        if fut is not None:
            return fut
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.loading[name] = fut
        t0 = time.perf_counter()
        done = loop.run_in_executor(self.executor, self._load_sync, self.path(name))

        def finished(f: asyncio.Future) -> None:
            self.loading.pop(name, None)
            exc = f.exception()
            if exc is None:
                written, read = f.result()
                self.c["loads"] += 1
                self.c["write_bytes"] += written
                self.c["read_bytes"] += read
                self.c["load_seconds"] += time.perf_counter() - t0
                if self.resident_slots > 0:
                    self.resident[name] = None
                    while len(self.resident) > self.resident_slots:
                        self.resident.popitem(last=False)
                fut.set_result(None)
            else:
                fut.set_exception(exc)

        done.add_done_callback(finished)
        return fut

    def _load_sync(self, path: str) -> tuple[int, int]:
        written = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            fd = -1
        if fd >= 0:
            try:
                block = os.urandom(min(self.adapter_bytes, 1 << 20)) if self.adapter_bytes else b""
                left = self.adapter_bytes
                while left > 0:
                    n = os.write(fd, block[:left])
                    left -= n
                    written += n
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        read = 0
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the read goes to the device, not the page cache
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                read += len(b)
        finally:
            os.close(fd)
        return written, read


# ----------------------------------------------------------------------------------------- backend side

class BackendConn(asyncio.Protocol):
    """One connection to the backend; parses the response head and de-frames a chunked body.

    ``sink`` gets ``head(status, headers)``, ``data(bytes)`` and ``end(clean)``; a connection whose last
    response ended cleanly with keep-alive goes back to the pool."""

    def __init__(self, pool: "BackendPool"):
        self.pool = pool
        self.transport = None
        self.sink = None
        self.buf = bytearray()
        self.state = "idle"
        self.chunked = False
        self.remaining = None  # content-length bytes left, or None = until close
        self.keep = False
        self.closed = False
        self.last_data = 0.0
        self.t_sent = 0.0
        self.no_body = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed = True
        self.pool.forget(self)
        if self.sink is not None:
            if self.state == "body" and not self.chunked and self.remaining is None:
                self._finish(True)  # a close-delimited body ends here
            else:
                self._finish(False)

    def send(self, sink, data: bytes, no_body: bool = False) -> None:
        self.no_body = no_body  # a HEAD request: the answer's Content-Length describes a body that never comes
        self.sink = sink
        self.state = "head"
        self.buf.clear()
        self.t_sent = self.last_data = time.monotonic()
        self.transport.write(data)

    def data_received(self, data):
        self.last_data = time.monotonic()
        if self.sink is None:
            return
        self.buf += data
        if self.state == "head":
            idx = self.buf.find(b"\r\n\r\n")
            if idx < 0:
                return
            lines = bytes(self.buf[:idx]).decode("latin-1").split("\r\n")
            del self.buf[: idx + 4]
            try:
                status = int(lines[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                self.transport.close()
                return
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            clen = headers.get("content-length")
            self.remaining = int(clen) if (clen and not self.chunked) else None
            if self.no_body or status in (204, 304) or 100 <= status < 200:
                self.chunked, self.remaining = False, 0
            self.keep = headers.get("connection", "").lower() != "close" and (self.chunked or self.remaining is not None)
            self.state = "body"
            self.sink.head(status, headers)
            if self.sink is None:
                return
        if self.state == "body":
            self._body()

    def _body(self):
        buf = self.buf
        if not self.chunked:
            if not buf:
                if self.remaining == 0:
                    self._finish(True)
                return
            data = bytes(buf)
            buf.clear()
            if self.remaining is not None:
                data = data[: self.remaining]
                self.remaining -= len(data)
            self.sink.data(data)
            if self.remaining == 0:
                self._finish(True)
            return
        out = []
        while True:
            idx = buf.find(b"\r\n")
            if idx < 0:
                break
            try:
                size = int(bytes(buf[:idx]).split(b";", 1)[0], 16)
            except ValueError:
                self.transport.close()
                return
            if size == 0:
                if buf.find(b"\r\n\r\n", idx) < 0:  # trailers (usually none) end with an empty line
                    break
                if out:
                    self.sink.data(b"".join(out))
                del buf[:]
                self._finish(True)
                return
            if len(buf) < idx + 2 + size + 2:
                break
            out.append(bytes(buf[idx + 2: idx + 2 + size]))
            del buf[: idx + 2 + size + 2]
        if out:
            self.sink.data(b"".join(out))

    def _finish(self, clean: bool) -> None:
        sink, self.sink = self.sink, None
        self.state = "idle"
        if sink is not None:
            sink.end(clean)
        if clean and self.keep and not self.closed:
            self.pool.release(self)
        elif not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self.sink = None
        if not self.closed:
            self.transport.close()


class BackendPool:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.idle: list[BackendConn] = []
        self.active: set[BackendConn] = set()

    async def get(self) -> BackendConn:
        while self.idle:
            c = self.idle.pop()
            if not c.closed:
                self.active.add(c)
                return c
        loop = asyncio.get_running_loop()
        _, c = await loop.create_connection(lambda: BackendConn(self), self.host, self.port)
        self.active.add(c)
        return c

    def get_nowait(self) -> BackendConn | None:
        while self.idle:
            c = self.idle.pop()
            if not c.closed:
                self.active.add(c)
                return c
        return None

    def release(self, c: BackendConn) -> None:
        self.active.discard(c)
        if len(self.idle) < MAX_IDLE_BACKEND:
            self.idle.append(c)
        else:
            c.transport.close()

    def forget(self, c: BackendConn) -> None:
        self.active.discard(c)
        if c in self.idle:
            self.idle.remove(c)


class Relay:
    """The client side of one proxied exchange: writes what the backend sends as it arrives."""

    __slots__ = ("conn", "backend", "streaming", "status", "ctype", "body", "proxy")

    def __init__(self, proxy: "Proxy", conn: Connection):
        self.proxy, self.conn = proxy, conn
        self.backend = None
        self.streaming = False
        self.status = 502
        self.ctype = "application/json"
        self.body: list[bytes] = []

    def head(self, status: int, headers: dict) -> None:
        self.status = status
        self.ctype = headers.get("content-type", "application/octet-stream")
        if status >= 400:
            self.proxy.c["backend_errors"] += 1
        if "content-length" not in headers and not (self.backend and self.backend.no_body):
            # chunked or close-delimited: pass each piece on as it comes
            self.streaming = True
            self.conn.start_stream(status, self.ctype)

    def data(self, data: bytes) -> None:
        if self.streaming:
            self.conn.write_chunk(data)
        else:
            self.body.append(data)

    def end(self, clean: bool) -> None:
        self.proxy.relays.discard(self)
        try:
            self.conn.lost_callbacks.remove(self.client_gone)
        except ValueError:
            pass
        if self.conn.closed:
            self.conn._done()
            return
        if clean:
            if self.streaming:
                self.conn.end_stream()
            else:
                self.conn.respond(self.status, b"".join(self.body), self.ctype)
            return
        self.proxy.c["backend_failures"] += 1
        self.conn.keep_alive = False
        if self.streaming:  # mid-stream: one error event, the end of the stream, then close
            event = b"data: " + error_body("the backend closed the stream before it ended", "backend_error", 502) + b"\n\n"
            self.conn.end_stream(event)
        else:
            self.conn.respond(502, error_body("the backend closed the connection before answering", "backend_error", 502))

    def client_gone(self) -> None:
        self.proxy.relays.discard(self)
        if self.backend is not None and self.backend.sink is self:
            self.backend.abort()


# ----------------------------------------------------------------------------------------- proxy

class Proxy:
    def __init__(self, backend_url: str, backend_model: str | None, store: AdapterStore, forward: str = "strip",
                 stream_idle_timeout_s: float = 120.0, backend_timeout_s: float = 600.0):
        u = urlsplit(backend_url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"--backend: expected http://host:port, got {backend_url!r}")
        self.backend_host = u.hostname
        self.backend_hostport = f"{u.hostname}:{u.port or 80}"
        self.pool = BackendPool(u.hostname, u.port or 80)
        self.backend_model = backend_model
        self.store = store
        self.forward = forward
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self.backend_timeout_s = backend_timeout_s
        self.relays: set[Relay] = set()
        self.c = {"requests": 0, "backend_errors": 0, "backend_failures": 0}

    # -- client requests -----------------------------------------------------------------------
    def handle(self, conn: Connection, req: Request) -> None:
        self.c["requests"] += 1
        if req.method == "GET" and req.path == "/metrics":
            conn.respond(200, self.metrics_text().encode(), "text/plain; version=0.0.4")
            return
        body = req.body
        adapter = None
        if req.method == "POST" and req.path in GEN_PATHS:
            try:
                obj = json.loads(body)
                if not isinstance(obj, dict):
                    raise ValueError
            except ValueError:
                conn.respond(400, error_body("request body is not a JSON object"))
                return
            adapter = obj.pop("adapter_id", None)
            model = obj.get("model")
            if adapter is None and model is not None and model != self.backend_model:
                adapter = model
            if adapter is not None:
                if not isinstance(adapter, str) or not valid_adapter_id(adapter):
                    self.store.c["rejected"] += 1
                    conn.respond(400, error_body("invalid adapter id: use 1-128 of [A-Za-z0-9._-] without '..'"))
                    return
                if self.forward == "strip":
                    if self.backend_model is None:
                        conn.respond(400, error_body("the proxy has no --backend-model to send instead of the adapter"))
                        return
                    obj["model"] = self.backend_model
                else:
                    obj["model"] = adapter
                body = json.dumps(obj).encode()
        fut = self.store.lookup(adapter) if adapter is not None else None
        if fut is None:
            backend = self.pool.get_nowait()
            if backend is not None:  # the common path: no await between the client's bytes and the backend's
                self._send(conn, req, body, backend)
                return
        asyncio.get_running_loop().create_task(self._forward_later(conn, req, body, fut))

    async def _forward_later(self, conn: Connection, req: Request, body: bytes, fut) -> None:
        try:
            if fut is not None:
                await fut
        except OSError as exc:
            conn.respond(500, error_body(f"adapter file I/O failed: {exc.strerror or exc}", "server_error", 500))
            return
        if conn.closed:
            conn._done()
            return
        try:
            backend = await self.pool.get()
        except OSError as exc:
            self.c["backend_failures"] += 1
            conn.respond(502, error_body(f"backend {self.backend_hostport} unreachable: {exc.strerror or exc}",
                                         "backend_error", 502))
            return
        self._send(conn, req, body, backend)

    def _send(self, conn: Connection, req: Request, body: bytes, backend: BackendConn) -> None:
        relay = Relay(self, conn)
        relay.backend = backend
        self.relays.add(relay)
        conn.lost_callbacks.append(relay.client_gone)
        target = req.path + (f"?{req.query}" if req.query else "")
        head = [f"{req.method} {target} HTTP/1.1", f"Host: {self.backend_hostport}"]
        head += [f"{k}: {v}" for k, v in req.headers.items() if k not in HOP_BY_HOP]
        head.append(f"Content-Length: {len(body)}")
        backend.send(relay, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body, req.method == "HEAD")

    # -- housekeeping ---------------------------------------------------------------------------
    async def sweep(self) -> None:
        """Ends exchanges whose backend went silent: past the head timeout, or mid-stream past the idle timeout."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for relay in list(self.relays):
                b = relay.backend
                if b is None or b.sink is not relay:
                    continue
                limit = self.stream_idle_timeout_s if b.state == "body" else self.backend_timeout_s
                if now - b.last_data > limit:
                    b.sink = None
                    b.transport.close()
                    relay.end(False)

    def metrics_text(self) -> str:
        s = self.store.c
        lines = []
        for name, value, help_text in (
            ("kvproxy_requests_total", self.c["requests"], "requests received"),
            ("kvproxy_backend_errors_total", self.c["backend_errors"], "backend answers with status >= 400 (passed through)"),
            ("kvproxy_backend_failures_total", self.c["backend_failures"], "backend unreachable or closed mid-answer"),
            ("kvproxy_lora_loads_total", s["loads"], "adapter loads (misses of the resident set)"),
            ("kvproxy_lora_hits_total", s["hits"], "requests served by a resident adapter"),
            ("kvproxy_lora_rejected_total", s["rejected"], "requests refused for an invalid adapter name"),
            ("kvproxy_lora_read_bytes_total", s["read_bytes"], "adapter file bytes read"),
            ("kvproxy_lora_write_bytes_total", s["write_bytes"], "adapter file bytes written (first use)"),
            ("kvproxy_lora_load_seconds_total", round(s["load_seconds"], 6), "seconds spent loading adapters"),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
        lines += ["# HELP kvproxy_lora_resident adapters in the resident set", "# TYPE kvproxy_lora_resident gauge",
                  f"kvproxy_lora_resident {len(self.store.resident)}"]
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- in a stack config

#: ``proxy:`` in a stack config (configs/stacks/*.yaml): the proxy is launched after the stack, in front of
#: it (requests, health and the collector's ``proxy`` scrape go through it) and stopped before it.
STACK_PROXY_KEYS = {
    "port": "auto",                       # auto = a free port per cell
    "resident": 8,                        # adapters kept resident
    "adapter_bytes": "1MiB",
    "dir": "{tier2_dir}/lora",            # the one adapter directory (a template like the stack's argv)
    "forward": "strip",
}


def check_stack_proxy(path, value) -> dict:
    """The stack config's ``proxy`` section with its defaults; ValueError names the key."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: proxy: expected a mapping of {', '.join(STACK_PROXY_KEYS)}")
    unknown = sorted(set(value) - set(STACK_PROXY_KEYS))
    if unknown:
        raise ValueError(f"{path}: proxy: unknown key '{unknown[0]}' (allowed: {', '.join(STACK_PROXY_KEYS)})")
    out = {**STACK_PROXY_KEYS, **value}
    if not isinstance(out["resident"], int) or out["resident"] < 0:
        raise ValueError(f"{path}: proxy.resident: expected an integer >= 0, got {out['resident']!r}")
    try:
        parse_bytes(out["adapter_bytes"], "adapter_bytes")
    except ValueError as exc:
        raise ValueError(f"{path}: proxy.{exc}") from None
    if out["forward"] not in ("strip", "model"):
        raise ValueError(f"{path}: proxy.forward: expected strip or model, got {out['forward']!r}")
    return out


def stack_proxy_argv(cfg: dict, names: dict, backend_url: str, port: int, render) -> list[str]:
    """argv of the proxy in front of a launched stack (``render`` fills ``{name}`` templates)."""
    argv = [sys.executable, "-m", "kvharness", "proxy", "--backend", backend_url,
            "--backend-model", str(names["served_model_name"]), "--host", str(names["host"]), "--port", str(port),
            "--adapter-dir", render(cfg["dir"]), "--adapter-bytes", str(cfg["adapter_bytes"]),
            "--resident", str(cfg["resident"]), "--forward", cfg["forward"]]
    if str(names["host"]) not in ("127.0.0.1", "localhost", "::1"):
        argv.append("--allow-remote")  # the workflow config allowed a remote bind for this cell's servers
    return argv


# ----------------------------------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", required=True, help="backend root URL, e.g. http://127.0.0.1:9000")
    p.add_argument("--backend-model", default=None,
                   help="the backend's model name: sent instead of the adapter, and a request's model equal to it "
                        "names no adapter")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback unless --allow-remote)")
    p.add_argument("--allow-remote", action="store_true", help="permit a non-loopback --host")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--adapter-dir", default=None,
                   help="the one directory holding adapter files <name>.lora (default $TMPDIR/kvharness-proxy-lora)")
    p.add_argument("--adapter-bytes", default="1MiB", help="bytes written per adapter on first use and read per miss")
    p.add_argument("--resident", type=int, default=8, help="adapters kept resident (LRU); a miss reads the file (0 = every request)")
    p.add_argument("--forward", choices=("strip", "model"), default="strip",
                   help="strip: send the backend's model; model: send the adapter name as model")
    p.add_argument("--io-threads", type=int, default=4, help="threads doing adapter file I/O")
    p.add_argument("--stream-idle-timeout-s", type=float, default=120.0,
                   help="end a stream with an error event after this long without backend bytes")
    p.add_argument("--backend-timeout-s", type=float, default=600.0, help="answer 502 when the backend sends no head for this long")


async def serve(args) -> int:
    adapter_bytes = parse_bytes(args.adapter_bytes, "--adapter-bytes")
    directory = args.adapter_dir or os.path.join(tempfile.gettempdir(), "kvharness-proxy-lora")
    executor = ThreadPoolExecutor(max_workers=max(1, args.io_threads), thread_name_prefix="kvproxy-io")
    store = AdapterStore(directory, adapter_bytes, max(0, args.resident), executor)
    proxy = Proxy(args.backend, args.backend_model, store, args.forward, args.stream_idle_timeout_s, args.backend_timeout_s)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(proxy.handle), args.host, args.port, backlog=4096,
                                      reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sweeper = loop.create_task(proxy.sweep())
    port = server.sockets[0].getsockname()[1]
    print(f"kvharness proxy: listening on http://{args.host}:{port} -> {args.backend} "
          f"(adapters in {store.directory}, {format(adapter_bytes, ',')} B each, {store.resident_slots} resident)",
          file=sys.stderr, flush=True)
    await stop.wait()
    sweeper.cancel()
    server.close()
    executor.shutdown(wait=False, cancel_futures=True)
    return 0


def main(args) -> int:

    if not is_loopback(args.host) and not args.allow_remote:
        print(f"kvharness proxy: --host {args.host} is not a loopback address; pass --allow-remote to expose it",
              file=sys.stderr)
        return 2
    try:
        parse_bytes(args.adapter_bytes, "--adapter-bytes")
        u = urlsplit(args.backend)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"--backend: expected http://host:port, got {args.backend!r}")
    except ValueError as exc:
        print(f"kvharness proxy: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        return runner.run(serve(args))
