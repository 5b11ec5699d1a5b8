"""The scrape HTTP clients: content-length, chunked, read-to-close, stale keep-alive, errors, deadline."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from kvharness.telemetry.collector import RawGet, StdlibGet
from tm_fakeserver import FakeMetrics

BODY = "# TYPE kvbm_matched_tokens counter\nkvbm_matched_tokens 42\n"


class ScriptedServer:
    """A TCP server answering each request on a connection with the next canned reply from ``replies``;
    ``close_after`` closes the connection after that many replies (to test stale keep-alive)."""

    def __init__(self, replies: list[bytes], close_after: int | None = None, delay_s: float = 0.0):
        self.replies, self.close_after, self.delay_s = replies, close_after, delay_s
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/metrics"
        self.connections = 0
        self.n = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn):
        try:
            self._talk(conn)
        except OSError:
            pass  # the client went away (timeouts, stale-connection tests)

    def _talk(self, conn):
        served = 0
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                _, _, buf = buf.partition(b"\r\n\r\n")
                time.sleep(self.delay_s)
                reply = self.replies[min(self.n, len(self.replies) - 1)]
                self.n += 1
                for i in range(0, len(reply), 7):  # dribble the reply in small pieces
                    conn.sendall(reply[i:i + 7])
                served += 1
                if self.close_after is not None and served >= self.close_after:
                    return

    def close(self):
        self.sock.close()


def _cl(body: str, extra: str = "") -> bytes:
    b = body.encode()
    return (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(b)}\r\n{extra}\r\n"
            ).encode() + b


def _chunked(body: str) -> bytes:
    b = body.encode()
    parts = b"".join(f"{len(b[i:i + 10]):x};ext=1\r\n".encode() + b[i:i + 10] + b"\r\n" for i in range(0, len(b), 10))
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + parts + b"0\r\nX-Trailer: y\r\n\r\n"


@pytest.mark.parametrize("cls", [RawGet, StdlibGet])
def test_content_length_keepalive_and_chunked(cls):
    srv = ScriptedServer([_cl(BODY), _chunked(BODY * 3), _cl(BODY)])
    g = cls(srv.url, 2.0)
    assert g.get() == BODY
    assert g.get() == BODY * 3
    assert g.get() == BODY
    assert srv.connections == 1  # one kept-alive connection for all three
    g.close()
    srv.close()


@pytest.mark.parametrize("cls", [RawGet, StdlibGet])
def test_stale_keepalive_is_retried_once(cls):
    srv = ScriptedServer([_cl(BODY)], close_after=1)
    g = cls(srv.url, 2.0)
    assert g.get() == BODY
    time.sleep(0.05)
    assert g.get() == BODY  # server had closed the kept-alive socket: reconnect
    assert srv.connections == 2
    srv.close()


def test_read_to_close_and_http10():
    srv = ScriptedServer([b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + BODY.encode()], close_after=1)
    g = RawGet(srv.url, 2.0)
    assert g.get() == BODY and g.sock is None
    srv.close()
    with FakeMetrics([BODY]) as fm:  # http.server: HTTP/1.0, Content-Length, closes
        g = RawGet(fm.url, 2.0)
        assert g.get() == BODY and g.get() == BODY


def test_errors_and_deadline():
    srv = ScriptedServer([b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"])
    with pytest.raises(RuntimeError, match="HTTP 404"):
        RawGet(srv.url, 2.0).get()
    srv.close()
    with pytest.raises(OSError):
        RawGet("http://127.0.0.1:9/metrics", 0.5).get()
    slow = ScriptedServer([_cl(BODY)], delay_s=1.0)
    t = time.monotonic()
    with pytest.raises((TimeoutError, socket.timeout)):
        RawGet(slow.url, 0.2).get()
    assert time.monotonic() - t < 0.9
    slow.close()
    with pytest.raises(ValueError):
        RawGet("https://127.0.0.1/metrics", 1.0)
