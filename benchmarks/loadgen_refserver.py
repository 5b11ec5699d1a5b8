"""Reference SSE server and minimal client for the load-generator benchmarks (raw asyncio, no framework).

Server: ``python benchmarks/loadgen_refserver.py serve --port P [--tokens 16] [--ttft-ms 0] [--itl-ms 0]
[--truth truth.jsonl]`` answers every POST with an OpenAI-style completion stream (chunked SSE: text
events, a usage event, ``[DONE]``) over HTTP/1.1 keep-alive. With ``--truth`` it records, per request,
the monotonic ns when the request was complete and when each text event was written (the truth the
accuracy benchmark compares against), written on SIGTERM/SIGINT.

Client: ``python benchmarks/loadgen_refserver.py client --port P --concurrency N --duration-s T`` is the
smallest closed-loop client we can write (raw protocol, no SSE parsing beyond finding the end) — the
ceiling the real generator is compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

_ns = time.monotonic_ns


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")


class Script:
    """The bytes of one response, precomputed."""

    def __init__(self, tokens: int):
        self.events = [_chunk(b'data: {"id":"c","object":"text_completion","choices":[{"index":0,"text":" w%d",'
                              b'"finish_reason":null}]}\n\n' % i) for i in range(tokens)]
        usage = {"id": "c", "object": "text_completion", "choices": [],
                 "usage": {"prompt_tokens": 32, "completion_tokens": tokens, "total_tokens": 32 + tokens}}
        self.tail = _chunk(b"data: " + json.dumps(usage).encode() + b"\n\n") + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.whole = HEAD + b"".join(self.events) + self.tail


class ServerProtocol(asyncio.Protocol):
    def __init__(self, server: "RefServer"):
        self.server = server
        self.buf = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end]
            i = head.lower().find(b"content-length:")
            length = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            self.buf = self.buf[end:]
            self.server.respond(self.transport)

    def connection_lost(self, exc):
        self.transport = None


class RefServer:
    def __init__(self, tokens: int, ttft_ms: float, itl_ms: float, truth_path: str | None):
        self.script = Script(tokens)
        self.ttft_s = ttft_ms / 1e3
        self.itl_s = itl_ms / 1e3
        self.truth_path = truth_path
        self.truth: list[list[int]] = []
        self.loop = asyncio.get_event_loop()

    def respond(self, transport) -> None:
        if self.ttft_s == 0 and self.itl_s == 0:
            if self.truth_path is not None:
                t = _ns()
                self.truth.append([t] + [t] * len(self.script.events))
            transport.write(self.script.whole)
            return
        record = [_ns()]
        if self.truth_path is not None:
            self.truth.append(record)
        transport.write(HEAD)
        self.loop.call_at(self.loop.time() + self.ttft_s, self._event, transport, 0, record, _ns() + int(self.ttft_s * 1e9))

    def _event(self, transport, i: int, record: list, due_ns: int) -> None:
        if transport.is_closing():
            return
        transport.write(self.script.events[i])
        record.append(_ns())
        if i + 1 < len(self.script.events):
            nxt = due_ns + int(self.itl_s * 1e9)
            # schedule from the ideal due time, not from now: ITL stays exact even if a write ran late
            self.loop.call_at(self.loop.time() + max(0.0, (nxt - _ns()) / 1e9), self._event, transport, i + 1,
                              record, nxt)
        else:
            transport.write(self.script.tail)

    def dump(self) -> None:
        if self.truth_path:
            with open(self.truth_path, "w") as fh:
                for rec in self.truth:
                    fh.write(json.dumps({"recv_ns": rec[0], "writes": rec[1:]}) + "\n")


def serve(args) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = RefServer(args.tokens, args.ttft_ms, args.itl_ms, args.truth)
    server.loop = loop
    srv = loop.run_until_complete(loop.create_server(lambda: ServerProtocol(server), "127.0.0.1", args.port,
                                                     backlog=4096, reuse_address=True))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {srv.sockets[0].getsockname()[1]}", flush=True)
    loop.run_until_complete(stop.wait())
    server.dump()
    srv.close()
    return 0


# ---- minimal client ----------------------------------------------------------------------------------


class ClientProtocol(asyncio.Protocol):
    def __init__(self, request: bytes, stats: dict, deadline: float):
        self.request = request
        self.stats = stats
        self.deadline = deadline
        self.buf = b""
        self.done = asyncio.get_event_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.buf.endswith(b"0\r\n\r\n") and b"[DONE]" in self.buf:
            self.buf = b""
            self.stats["n"] += 1
            if time.monotonic() < self.deadline:
                self.transport.write(self.request)
            elif not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


async def _client(port: int, concurrency: int, duration_s: float) -> dict:
    body = json.dumps({"model": "m", "prompt": "hello " * 31, "max_tokens": 16, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    stats = {"n": 0}
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    cpu0 = time.process_time()
    deadline = t0 + duration_s
    protos = []
    for _ in range(concurrency):
        _, proto = await loop.create_connection(lambda: ClientProtocol(request, stats, deadline), "127.0.0.1", port)
        protos.append(proto)
    await asyncio.gather(*(p.done for p in protos))
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    return {"requests": stats["n"], "req_s": stats["n"] / wall, "cpu_ms_per_req": 1e3 * cpu / max(1, stats["n"])}


def client(args) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_client(args.port, args.concurrency, args.duration_s))))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--tokens", type=int, default=16)
    s.add_argument("--ttft-ms", type=float, default=0.0)
    s.add_argument("--itl-ms", type=float, default=0.0)
    s.add_argument("--truth", default=None)
    c = sub.add_parser("client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--concurrency", type=int, default=256)
    c.add_argument("--duration-s", type=float, default=5.0)
    args = p.parse_args(argv)
    return serve(args) if args.cmd == "serve" else client(args)


if __name__ == "__main__":
    sys.exit(main())
