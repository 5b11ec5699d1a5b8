"""A small blocking HTTP/1.1 client for the cell's control requests to its own stack (readiness polls,
cold-start resets and scrapes): the standard library's ``http.client`` with one kept-alive connection per
host, no proxy from the environment (the stack is ours, usually on loopback).

A cell used httpx for these; importing it costs ~0.15 s of CPU in the cell process at the moment the
stack, the load generator and the collector are all starting, which on a 2-core machine lengthens the
health wait of every cell (benchmarks/cell_overhead.py). The methods mirror the part of httpx's API the
callers use: ``get``, ``post(json=...)``, ``request``, and responses with ``status_code``, ``text``, ``json()``.
"""

from __future__ import annotations

import http.client
import json as _json
from urllib.parse import urlsplit

#: what a failed exchange raises (refused, reset, timed out, a malformed answer)
HTTPError = (OSError, http.client.HTTPException)


class Response:
    __slots__ = ("status_code", "content", "headers")

    def __init__(self, status_code: int, content: bytes, headers):
        self.status_code, self.content, self.headers = status_code, content, headers

    @property
    def text(self) -> str:
        return self.content.decode(self.headers.get_content_charset() or "utf-8", "replace")

    def json(self):
        return _json.loads(self.content)


class Client:
    def __init__(self, timeout: float = 5.0):
        self.timeout = timeout
        self._conns: dict[tuple[str, str, int], http.client.HTTPConnection] = {}

    def request(self, method: str, url: str, json=None) -> Response:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise http.client.InvalidURL(f"not an http(s) URL: {url!r}")
        key = (u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80))
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        body, headers = None, {"Accept": "*/*"}
        if json is not None:
            body, headers["Content-Type"] = _json.dumps(json).encode(), "application/json"
        for attempt in (0, 1):
            conn = self._conns.get(key)
            fresh = conn is None
            if fresh:
                cls = http.client.HTTPSConnection if key[0] == "https" else http.client.HTTPConnection
                conn = self._conns[key] = cls(key[1], key[2], timeout=self.timeout)
            try:
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                resp = Response(r.status, r.read(), r.headers)
                if r.will_close:
                    self._drop(key)
                return resp
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest):
                self._drop(key)
                if fresh or attempt:  # a kept-alive connection the server closed meanwhile: retry once, fresh
                    raise
            except BaseException:
                self._drop(key)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, url: str) -> Response:
        return self.request("GET", url)

    def post(self, url: str, json=None) -> Response:
        return self.request("POST", url, json=json)

    def _drop(self, key) -> None:
        conn = self._conns.pop(key, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for key in list(self._conns):
            self._drop(key)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
