"""The hot-path HTTP/1.1 client: a raw asyncio protocol with a keep-alive pool and no hidden cap.

Why not a library: on one core aiohttp spends ~0.26 ms of CPU per streamed request in its own
request/response machinery, which caps a generator at ~1,800 req/s at concurrency 256 once SSE
parsing and recording are added (measured by ``benchmarks/loadgen_throughput.py``); this protocol
spends a fraction of that. It speaks exactly what OpenAI-compatible servers send: a status line,
headers, then a body framed by ``Transfer-Encoding: chunked``, ``Content-Length`` or connection
close. Body bytes go straight to a ``StreamTimer`` stamped with the monotonic time they were read.

Connections: one request at a time per connection; the pool opens a new connection whenever no idle
one exists, so the number of connections equals the in-flight cap the scheduler enforces. A request
that fails before any response byte on a *reused* connection (the server closed it while idle) is
retried once on a fresh connection.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
import struct
import sys
import time
import traceback
from collections import deque
from urllib.parse import urlsplit

from kvharness.loadgen.stream import StreamError, StreamTimer

_ns = time.monotonic_ns

_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _LENGTH, _UNTIL_CLOSE, _DONE = range(8)
_MAX_ERROR_BODY = 1024



_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


def quick_ack(sock: socket.socket | None) -> None:
    """ACK the server's next segment at once (re-armed after every read: the kernel leaves quick-ack mode
    by itself). On a kept-alive connection a server that writes small chunks without TCP_NODELAY (Nagle)
    holds a response's first token until our ACK of its previous segment, which Linux delays up to 40 ms:
    Dynamo 1.6.1's frontend measured 44 ms TTFT p50 on reused connections against 4 ms with this."""
    if _QUICKACK is not None and sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass

class TransportError(Exception):
    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


class _Exchange:
    """One request/response on a connection."""

    __slots__ = ("timer", "future", "status", "error_body", "stream", "got_bytes", "parts", "conn", "handle",
                 "raw", "deadline", "reused", "sent_ns", "on_done", "seen_ns")

    def __init__(self, timer: StreamTimer, future: asyncio.Future, stream: bool):
        self.timer = timer
        self.future = future
        self.status = 0
        self.error_body = b""
        self.stream = stream
        self.got_bytes = False
        self.parts: list[tuple[int, bytes]] = []  # (read time ns, body bytes): SSE parsing is deferred
        self.conn = None
        self.handle = None
        self.raw = b""
        self.deadline = 0.0
        self.reused = False
        self.sent_ns = 0
        self.on_done = None  # called synchronously when the exchange ends (saves a loop turn)
        self.seen_ns = 0  # when the event loop handed over the last read (>= its stamp)

    def feed_timer(self) -> None:
        """Parse the stored body parts into the timer (after the response, off the critical path)."""
        feed = self.timer.feed
        for t_ns, body in self.parts:
            feed(body, t_ns)
        self.parts = []

    @property
    def last_read_ns(self) -> int | None:
        return self.parts[-1][0] if self.parts else None


class HTTPConnection(asyncio.Protocol):
    def __init__(self, pool: "HTTPPool"):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.ex: _Exchange | None = None
        self.buf = b""
        self.state = _DONE
        self.remaining = 0
        self.keep_alive = True
        self.closed = False
        self.used = 0
        self.body_parts: list[bytes] = []
        self._now = 0
        self.ack_sock: socket.socket | None = None  # quick_ack after every read (the transport's socket)

    # ---- asyncio.Protocol ----

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = self.ack_sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc) -> None:
        self.closed = True
        ex = self.ex
        if ex is not None:
            if self.state == _UNTIL_CLOSE:
                self._complete()
            else:
                self._fail(TransportError("disconnect", "connection closed by the server"
                                          + (f" ({exc})" if exc else "")))
        self.pool.discard(self)

    def data_received(self, data: bytes) -> None:
        now = _ns()
        quick_ack(self.ack_sock)
        self.on_data(data, now, now)

    def on_data(self, data: bytes, now: int, seen: int) -> None:
        """Response bytes that arrived at monotonic time ``now`` (the kernel's receive time when
        available) and that the event loop handed over at ``seen``."""
        ex = self.ex
        if ex is None:  # bytes outside an exchange: the server is confused; drop the connection
            self.transport.close()
            return
        self._now = now
        ex.seen_ns = seen
        ex.got_bytes = True
        try:
            body = self._parse(data)
            if body:
                if ex.status == 200:
                    if ex.stream:
                        # only stamp and keep the bytes here: every read is stamped promptly even when
                        # hundreds of streams deliver at once; parsing happens after the response
                        ex.parts.append((now, body))
                    else:
                        self.body_parts.append(body)
                elif len(ex.error_body) < _MAX_ERROR_BODY:
                    ex.error_body += body[: _MAX_ERROR_BODY - len(ex.error_body)]
            if self.state == _DONE and self.ex is ex:
                self._complete()
        except StreamError as exc:
            self.keep_alive = False
            self._fail(TransportError(exc.error_class, str(exc)))
            self.transport.close()
        except (ValueError, IndexError) as exc:
            self.keep_alive = False
            self._fail(TransportError("parse", f"malformed HTTP response: {exc}"))
            self.transport.close()

    # ---- HTTP/1.1 framing ----

    def _parse(self, data: bytes) -> bytes:
        buf = self.buf + data if self.buf else data
        self.buf = b""
        out = []
        pos = 0
        n = len(buf)
        while pos < n:
            st = self.state
            if st == _CHUNK_DATA:
                take = min(self.remaining, n - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = _CHUNK_CRLF
            elif st == _CHUNK_SIZE:
                # tight loop over whole chunks (a fast server sends many per read)
                while True:
                    end = buf.find(b"\r\n", pos)
                    if end < 0:
                        self.buf = buf[pos:]
                        pos = n
                        break
                    size_field = buf[pos:end]
                    try:
                        size = int(size_field, 16)
                    except ValueError:
                        size = int(size_field.split(b";", 1)[0].strip(), 16)
                    if size == 0:
                        pos = end + 2
                        self.state = _TRAILER
                        break
                    data_start = end + 2
                    data_end = data_start + size
                    if data_end + 2 <= n:
                        out.append(buf[data_start:data_end])
                        pos = data_end + 2
                        if pos >= n:
                            break
                        continue
                    out.append(buf[data_start:min(data_end, n)])
                    if data_end <= n:
                        pos = data_end
                        self.state = _CHUNK_CRLF
                    else:
                        self.remaining = data_end - n
                        pos = n
                        self.state = _CHUNK_DATA
                    break
            elif st == _CHUNK_CRLF:
                if n - pos < 2:
                    self.buf = buf[pos:]
                    break
                pos += 2
                self.state = _CHUNK_SIZE
            elif st == _LENGTH:
                take = min(self.remaining, n - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = _DONE
            elif st == _UNTIL_CLOSE:
                out.append(buf[pos:])
                pos = n
            elif st == _TRAILER:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    self.buf = buf[pos:]
                    break
                line = buf[pos:end]
                pos = end + 2
                if not line:
                    self.state = _DONE
            elif st == _HEAD:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    self.buf = buf[pos:]
                    if len(self.buf) > 65536:
                        raise ValueError("response header larger than 64 KiB")
                    break
                self._head(buf[pos:end])
                pos = end + 4
            else:  # _DONE: trailing bytes after a complete response
                if pos < n:
                    self.keep_alive = False
                break
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError(f"bad status line {lines[0][:60]!r}")
        status = int(parts[1])
        if 100 <= status < 200:  # interim response (100 Continue): wait for the real one
            self.state = _HEAD
            return
        self.ex.status = status
        self.ex.timer.first_byte_ns = self.ex.timer.first_byte_ns or self._now
        chunked = False
        length = None
        keep_alive = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-length":
                length = int(value.strip())
            elif name == b"connection":
                v = value.strip().lower()
                if v == b"close":
                    keep_alive = False
                elif v == b"keep-alive":
                    keep_alive = True
        self.keep_alive = keep_alive
        if chunked:
            self.state = _CHUNK_SIZE
        elif length is not None:
            self.remaining = length
            self.state = _LENGTH if length > 0 else _DONE
        else:
            self.keep_alive = False
            self.state = _UNTIL_CLOSE

    # ---- exchange control ----

    def start(self, request: bytes, ex: _Exchange) -> None:
        self.ex = ex
        self.state = _HEAD
        self.buf = b""
        self.body_parts = []
        self.used += 1
        self.transport.write(request)

    def _complete(self) -> None:
        ex = self.ex
        self.ex = None
        if ex is None:
            return
        error = None
        if ex.status == 200 and not ex.stream:
            try:
                ex.timer.feed_body(b"".join(self.body_parts), ex.timer.first_byte_ns or self._now, self._now or _ns())
            except StreamError as exc:
                error = TransportError(exc.error_class, str(exc))
        # the connection is idle again before anyone hears of the completion
        if error is None and self.keep_alive and not self.closed and self.state == _DONE:
            self.pool.release(self)
        elif self.transport is not None:
            self.transport.close()
        if not ex.future.done():
            if error is None:
                ex.future.set_result(None)
            else:
                ex.future.set_exception(error)
        _notify(ex)

    def _fail(self, exc: TransportError) -> None:
        ex = self.ex
        self.ex = None
        if ex is not None and not ex.future.done():
            ex.future.set_exception(exc)
            _notify(ex)

    def abort(self) -> None:
        self.ex = None
        if self.transport is not None:
            self.transport.abort()


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux: SCM_TIMESTAMPNS == SO_TIMESTAMPNS == 35
_TS = struct.Struct("qq")
_SOL_SOCKET = socket.SOL_SOCKET
_ANC_SIZE = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 64
READ_SIZE = 262144


class KernelClock:
    """Converts the kernel's CLOCK_REALTIME receive stamps to the monotonic clock of the records."""

    def __init__(self):
        self.refresh()

    def refresh(self) -> None:
        m0 = _ns()
        r = time.time_ns()
        m1 = _ns()
        self.offset = r - (m0 + m1) // 2
        self.at = m1

    def to_monotonic(self, real_ns: int, now: int) -> int:
        if now - self.at > 500_000_000:  # follow NTP slewing
            self.refresh()
        t = real_ns - self.offset
        # a stamp from the future or from long ago means the wall clock stepped: use the read time
        return t if now - 1_000_000_000 < t <= now else now


class _SocketTransport:
    """The slice of asyncio.Transport that HTTPConnection uses, over a non-blocking socket."""

    def __init__(self, conn: "StampedConnection", sock: socket.socket, loop: asyncio.AbstractEventLoop):
        self.conn = conn
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.wbuf = b""
        self.closing = False

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        if self.wbuf:
            self.wbuf += data
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self.shutdown(exc)
            return
        if n < len(data):
            self.wbuf = data[n:]
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        try:
            n = self.sock.send(self.wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.shutdown(exc)
            return
        self.wbuf = self.wbuf[n:]
        if not self.wbuf:
            self.loop.remove_writer(self.fd)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.shutdown(None)

    def abort(self) -> None:
        self.shutdown(None)

    def get_extra_info(self, name, default=None):
        return self.sock if name == "socket" else default

    def shutdown(self, exc) -> None:
        if self.closing:
            return
        self.closing = True
        self.loop.remove_reader(self.fd)
        if self.wbuf:
            self.loop.remove_writer(self.fd)
        try:
            self.sock.close()
        except OSError:
            pass
        self.loop.call_soon(self.conn.connection_lost, exc)


class StampedConnection(HTTPConnection):
    """The same HTTP client over a raw non-blocking socket read with ``recvmsg``: every read carries
    the kernel's receive time (SO_TIMESTAMPNS), so a busy event loop or a slow process wake-up does
    not delay the stamps of TTFB, TTFT and ITL."""

    def __init__(self, pool: "HTTPPool", sock: socket.socket, loop: asyncio.AbstractEventLoop, clock: KernelClock):
        super().__init__(pool)
        self.sock = sock
        self.clock = clock
        self.read_buf = pool.read_buf
        self.bufs = pool.read_bufs
        self.transport = self.sock_transport = _SocketTransport(self, sock, loop)
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        t = self.sock_transport
        try:
            # into one preallocated buffer: recvmsg(262144) would malloc and free 256 KiB per read
            # (an mmap/munmap pair, ~20 us); the copy of the bytes actually read is ~0.1 us
            n, anc, _flags, _addr = self.sock.recvmsg_into(self.bufs, _ANC_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            t.shutdown(exc)
            return
        now = _ns()
        if not n:
            t.shutdown(None)
            return
        quick_ack(self.sock)
        stamp = now
        if anc:
            level, kind, payload = anc[0]
            if kind == SO_TIMESTAMPNS and level == _SOL_SOCKET and len(payload) >= 16:
                sec, nsec = _TS.unpack_from(payload)
                clock = self.clock
                if now - clock.at > 500_000_000:  # follow NTP slewing
                    clock.refresh()
                stamp = sec * 1_000_000_000 + nsec - clock.offset
                # a stamp from the future or from long ago means the wall clock stepped: use the read time
                if not now - 1_000_000_000 < stamp <= now:
                    stamp = now
        data = self.bufs[0][:n].tobytes()
        ex = self.ex
        # the common streamed read, inlined: exactly one whole chunk ("size\r\npayload\r\n")
        if self.state == _CHUNK_SIZE and not self.buf and ex is not None and ex.stream and ex.status == 200:
            end = data.find(b"\r\n", 0, 18)
            if end > 0 and data[-2:] == b"\r\n":
                try:
                    size = int(data[:end], 16)
                except ValueError:
                    size = -1
                if size > 0 and end + size + 4 == n:
                    self._now = stamp
                    ex.seen_ns = now
                    ex.got_bytes = True
                    ex.parts.append((stamp, data[end + 2:n - 2]))
                    return
        self.on_data(data, stamp, now)


class HTTPPool:
    """Keep-alive connections to one origin; opens one whenever none is idle (no cap of its own)."""

    def __init__(self, base_url: str, headers: dict[str, str], kernel_stamps: bool = False):
        u = urlsplit(base_url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl = ssl_module.create_default_context() if u.scheme == "https" else None
        self.prefix = u.path.rstrip("/")
        if self.prefix.endswith("/v1"):
            self.prefix = self.prefix[:-3]
        host_header = self.host if u.port is None else f"{self.host}:{u.port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() not in ("host", "content-length"))
        if not any(k.lower() == "content-type" for k in headers):
            extra += "Content-Type: application/json\r\n"
        self._head_tail = f"Host: {host_header}\r\nAccept: text/event-stream\r\n{extra}".encode("latin-1")
        # kernel receive stamps need a plain TCP socket we read ourselves (not TLS)
        self.kernel_stamps = kernel_stamps and self.ssl is None and sys.platform.startswith("linux")
        self.clock = KernelClock()
        # one read buffer for every stamped connection: a read is copied out (as bytes) before the next
        self.read_buf = bytearray(READ_SIZE) if self.kernel_stamps else bytearray()
        self.read_bufs = [memoryview(self.read_buf)]
        self._addr = None
        self.idle: deque[HTTPConnection] = deque()
        self.open = 0
        self.max_open = 0
        self._paths: dict[str, bytes] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # get_running_loop() costs a getpid() syscall

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def request_bytes(self, path: str, body: bytes) -> bytes:
        line = self._paths.get(path)
        if line is None:
            line = self._paths[path] = f"POST {self.prefix}{path} HTTP/1.1\r\n".encode("latin-1")
        return b"%s%sContent-Length: %d\r\n\r\n%s" % (line, self._head_tail, len(body), body)

    async def _connect(self) -> HTTPConnection:
        loop = asyncio.get_running_loop()
        if self.kernel_stamps:
            return await self._connect_stamped(loop)
        try:
            _, conn = await loop.create_connection(lambda: HTTPConnection(self), self.host, self.port, ssl=self.ssl,
                                                   server_hostname=self.host if self.ssl else None)
        except (OSError, ssl_module.SSLError) as exc:
            raise TransportError("connect", f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        return conn

    async def _connect_stamped(self, loop) -> HTTPConnection:
        try:
            if self._addr is None:
                infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
                self._addr = infos[0]
            family, type_, proto, _, addr = self._addr
            sock = socket.socket(family, type_, proto)
        except OSError as exc:
            raise TransportError("connect", f"cannot connect to {self.host}:{self.port}: {exc}") from None
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            raise TransportError("connect", f"cannot connect to {self.host}:{self.port}: {exc}") from None
        except BaseException:
            sock.close()
            raise
        conn = StampedConnection(self, sock, loop, self.clock)
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        return conn

    async def preconnect(self, n: int, timeout_s: float) -> int:
        """Open ``n`` keep-alive connections before the run so no measured request pays a TCP connect;
        returns how many opened (a failure is not an error here: requests will report it)."""
        async def one():
            try:
                conn = await asyncio.wait_for(self._connect(), timeout_s)
            except (TransportError, asyncio.TimeoutError):
                return 0
            self.idle.append(conn)
            return 1

        opened = 0
        for start in range(0, n, 256):
            opened += sum(await asyncio.gather(*(one() for _ in range(min(256, n - start)))))
        return opened

    def release(self, conn: HTTPConnection) -> None:
        self.idle.append(conn)

    def discard(self, conn: HTTPConnection) -> None:
        if conn.transport is not None:
            self.open -= 1
            conn.transport = None
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def _idle_connection(self) -> HTTPConnection | None:
        while self.idle:
            c = self.idle.pop()
            if not c.closed and c.transport is not None and not c.transport.is_closing():
                return c
        return None

    def _start(self, conn: HTTPConnection, raw: bytes, timer: StreamTimer, stream: bool, deadline: float,
               timeout_s: float, reused: bool) -> _Exchange:
        loop = self._running_loop()
        ex = _Exchange(timer, loop.create_future(), stream)
        ex.conn, ex.raw, ex.deadline, ex.reused = conn, raw, deadline, reused
        ex.sent_ns = _ns()
        conn.start(raw, ex)
        ex.handle = loop.call_at(deadline, _expire, conn, ex, timeout_s)
        return ex

    def begin(self, path: str, body: bytes, timer: StreamTimer, stream: bool, timeout_s: float) -> _Exchange | None:
        """Send now, synchronously, on an idle keep-alive connection; None when there is none."""
        conn = self._idle_connection()
        if conn is None:
            return None
        loop = self._running_loop()
        return self._start(conn, self.request_bytes(path, body), timer, stream, loop.time() + timeout_s, timeout_s,
                           True)

    async def request(self, path: str, body: bytes, timer: StreamTimer, stream: bool, timeout_s: float,
                      ex: _Exchange | None = None) -> _Exchange:
        """Send one POST (or finish ``ex`` from ``begin``) and wait for the whole response.

        Returns the exchange (``status``, ``error_body``, ``parts``); raises ``TransportError``
        (``connect``, ``timeout``, ``disconnect``, ``parse``, ``server_error``).
        """
        loop = asyncio.get_running_loop()
        raw = ex.raw if ex is not None else self.request_bytes(path, body)
        deadline = ex.deadline if ex is not None else loop.time() + timeout_s
        for attempt in (0, 1):
            if ex is None:
                conn = self._idle_connection()
                reused = conn is not None
                if conn is None:
                    try:
                        conn = await asyncio.wait_for(self._connect(), max(0.001, deadline - loop.time()))
                    except asyncio.TimeoutError:
                        raise TransportError("timeout", f"connect not done within {timeout_s} s") from None
                ex = self._start(conn, raw, timer, stream, deadline, timeout_s, reused)
            try:
                await ex.future
            except TransportError as exc:
                if attempt == 0 and ex.reused and not ex.got_bytes and exc.error_class == "disconnect":
                    ex.handle.cancel()
                    ex = None
                    continue  # the server dropped an idle keep-alive connection: retry once, fresh
                raise
            except asyncio.CancelledError:
                ex.conn.abort()
                raise
            finally:
                if ex is not None:
                    ex.handle.cancel()
            return ex
        raise TransportError("disconnect", "connection closed before a response")  # pragma: no cover

    def close(self) -> None:
        while self.idle:
            c = self.idle.pop()
            if c.transport is not None:
                c.transport.close()


def _expire(conn: HTTPConnection, ex: _Exchange, timeout_s: float) -> None:
    if not ex.future.done():
        ex.future.set_exception(TransportError("timeout", f"no complete response within {timeout_s} s"))
    conn.abort()
    _notify(ex)


def _notify(ex: _Exchange) -> None:
    cb = ex.on_done
    if cb is not None:
        ex.on_done = None
        try:
            cb(ex.future)
        except Exception:  # pragma: no cover - a bug in the caller must not break the protocol
            traceback.print_exc()
