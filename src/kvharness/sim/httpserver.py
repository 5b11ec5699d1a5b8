"""A small HTTP/1.1 server on a raw asyncio protocol.

Why not aiohttp.web: the engine emits one token for every running stream per step (256+ streams on one
core). With a raw protocol the engine writes each SSE event straight into the connection's transport,
synchronously, with no task wake-up per token. Supports keep-alive, pipelined requests (answered in
order), ``Content-Length`` request bodies, chunked streaming responses. A ``HEAD`` request gets the
headers the same ``GET`` would get (``Content-Length`` included) and no body (RFC 9110 §9.3.2): a
client that reuses the connection would otherwise read the stray body as the next status line.
"""

from __future__ import annotations

import asyncio

MAX_HEADER = 64 * 1024
MAX_BODY = 32 * 1024 * 1024

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
           413: "Payload Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


class Request:
    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive")

    def __init__(self, method, path, query, headers, body, keep_alive):
        self.method, self.path, self.query, self.headers, self.body, self.keep_alive = \
            method, path, query, headers, body, keep_alive


class Connection(asyncio.Protocol):
    """One client connection. ``handler(conn, request)`` must eventually call ``conn.respond(...)`` or
    ``conn.start_stream(...)`` + ``conn.write_chunk(...)`` + ``conn.end_stream()``."""

    def __init__(self, handler, on_lost=None):
        self.handler = handler
        self.on_lost = on_lost
        self.transport = None
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.keep_alive = True
        self.lost_callbacks: list = []
        self._continued = False
        self._head_only = False  # the request being answered is a HEAD: headers, never a body

    # -- protocol --------------------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed = True
        cbs, self.lost_callbacks = self.lost_callbacks, []
        for cb in cbs:
            cb()
        if self.on_lost:
            self.on_lost(self)

    def data_received(self, data):
        self.buf += data
        if not self.busy:
            self._next_request()

    def _next_request(self):
        while not self.busy and not self.closed:
            buf = self.buf
            idx = buf.find(b"\r\n\r\n")
            if idx < 0:
                if len(buf) > MAX_HEADER:
                    self._fail_close(431, "request header too large")
                return
            try:
                head = bytes(buf[:idx]).decode("latin-1")
                lines = head.split("\r\n")
                method, target, version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            except ValueError:
                self._fail_close(400, "malformed request line or header")
                return
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._fail_close(411, "chunked request bodies are not supported; send Content-Length")
                return
            try:
                clen = int(headers.get("content-length", "0") or 0)
            except ValueError:
                self._fail_close(400, "bad Content-Length")
                return
            if clen > MAX_BODY:
                self._fail_close(413, "request body too large")
                return
            if len(buf) < idx + 4 + clen:
                if not self._continued and headers.get("expect", "").lower() == "100-continue":
                    self._continued = True  # curl sends this for bodies > 1 KiB and waits for it
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            self._continued = False
            body = bytes(buf[idx + 4: idx + 4 + clen])
            del buf[: idx + 4 + clen]
            conn_hdr = headers.get("connection", "").lower()
            if version == "HTTP/1.0":
                keep = conn_hdr == "keep-alive"
            else:
                keep = conn_hdr != "close"
            self.keep_alive = keep
            path, _, query = target.partition("?")
            self.busy = True
            self._head_only = method == "HEAD"
            try:
                self.handler(self, Request(method, path, query, headers, body, keep))
            except Exception as e:  # pragma: no cover - handler bug: answer rather than hang
                if self.busy:
                    self.respond(500, b'{"error":{"message":"internal error: %s"}}' % repr(e).encode())

    def _fail_close(self, status, msg):
        self.keep_alive = False
        self.busy = True
        self.respond(status, ('{"error":{"message":"%s","type":"invalid_request_error","code":%d}}' % (msg, status)).encode())

    # -- responses -------------------------------------------------------------------------------
    def _head(self, status: int, ctype: str, extra: str) -> bytes:
        conn = "keep-alive" if self.keep_alive else "close"
        return (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nContent-Type: {ctype}\r\n"
                f"Connection: {conn}\r\n{extra}").encode("latin-1")

    def respond(self, status: int, body: bytes, ctype: str = "application/json", headers: dict | None = None) -> None:
        if self.closed:
            self._done()
            return
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = self._head(status, ctype, extra + f"Content-Length: {len(body)}\r\n\r\n")
        self.transport.write(head if self._head_only else head + body)
        self._done()

    def start_stream(self, status: int = 200, ctype: str = "text/event-stream") -> None:
        if not self.closed:
            self.transport.write(self._head(status, ctype, "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"))

    def write_chunk(self, data: bytes) -> None:
        if not self.closed and not self._head_only:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def write_framed(self, chunk: bytes) -> None:
        """A chunk the caller framed itself (``size\r\ndata\r\n``): the simulator's per-token hot path
        formats event and framing in one step."""
        if not self.closed and not self._head_only:
            self.transport.write(chunk)

    def end_stream(self, data: bytes = b"") -> None:
        if not self.closed and not self._head_only:
            if data:
                self.transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data))
            else:
                self.transport.write(b"0\r\n\r\n")
        self._done()

    def _done(self) -> None:
        self.busy = False
        self._head_only = False
        if self.closed:
            return
        if not self.keep_alive:
            self.transport.close()
            return
        if self.buf:
            asyncio.get_event_loop().call_soon(self._next_request)
