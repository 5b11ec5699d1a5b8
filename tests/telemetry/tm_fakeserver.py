"""A tiny metrics server for tests: serves a sequence of fixture bodies, one per GET, repeating the last."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeMetrics:
    def __init__(self, bodies: list[str], content_type: str = "text/plain; version=0.0.4", status: int = 200):
        self.bodies = list(bodies)
        self.content_type = content_type
        self.status = status
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                i = min(outer.hits, len(outer.bodies) - 1)
                outer.hits += 1
                body = outer.bodies[i].encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", outer.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":  # python fakeserver.py FILE... : serve files until killed, print the URL
    import time

    bodies = [open(p).read() for p in sys.argv[1:]]
    with FakeMetrics(bodies) as fm:
        print(fm.url, flush=True)
        while True:
            time.sleep(3600)
