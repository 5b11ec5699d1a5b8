"""A tiny OpenAI-style SSE server (aiohttp, in its own thread and event loop) with controllable delays.

``server.behaviour`` sets, for the following requests: ``ttft_s`` (delay before the first text
event), ``itl_s`` (between text events), ``role_first`` (chat: a role-only event before any text),
``status`` (reply with this HTTP status instead), ``usage`` (send the usage chunk), ``cached_tokens``,
``drop_after`` (close the connection after this many text events), ``garbage`` (send invalid JSON).
Every request's body is kept in ``server.requests``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from aiohttp import web

from kvharness.tokens import chat_prompt_text, count_tokens


class SSEServer:
    def __init__(self):
        self.behaviour = {"ttft_s": 0.0, "itl_s": 0.0, "role_first": True, "status": 200, "usage": True,
                          "cached_tokens": None, "drop_after": None, "garbage": False}
        self.requests: list[dict] = []
        self.truth: list[dict] = []  # per request: receive ns, event write ns
        self.max_open = 0
        self._open = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        recv_ns = time.monotonic_ns()
        body = await request.json()
        self.requests.append(body)
        b = dict(self.behaviour)
        if b["status"] != 200:
            return web.json_response({"error": {"message": "injected"}}, status=b["status"])
        chat = request.path.endswith("/chat/completions")
        prompt = chat_prompt_text(body["messages"]) if chat else body["prompt"]
        n_prompt = count_tokens(prompt)
        n_out = int(body.get("max_tokens") or 16)
        self._open += 1
        self.max_open = max(self.max_open, self._open)
        writes = []
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            if chat and b["role_first"]:
                await resp.write(_event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
            if b["ttft_s"]:
                await asyncio.sleep(b["ttft_s"])
            for i in range(n_out):
                if i and b["itl_s"]:
                    await asyncio.sleep(b["itl_s"])
                if b["drop_after"] is not None and i >= b["drop_after"]:
                    request.transport.close()
                    return resp
                if b["garbage"]:
                    await resp.write(b"data: {not json\n\n")
                    continue
                word = f"w{i} "
                choice = {"index": 0, "delta": {"content": word}} if chat else {"index": 0, "text": word}
                await resp.write(_event({"choices": [choice]}))
                writes.append(time.monotonic_ns())
            if b["usage"]:
                usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
                if b["cached_tokens"] is not None:
                    usage["prompt_tokens_details"] = {"cached_tokens": b["cached_tokens"]}
                await resp.write(_event({"choices": [], "usage": usage}))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            self.truth.append({"recv_ns": recv_ns, "writes": writes})
            return resp
        finally:
            self._open -= 1

    def start(self) -> None:
        ready = threading.Event()

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            app = web.Application()
            app.router.add_post("/v1/completions", self.handle)
            app.router.add_post("/v1/chat/completions", self.handle)
            self.runner = web.AppRunner(app, access_log=None)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0, backlog=2048)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.runner.cleanup())
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


@pytest.fixture(scope="module")
def sse_server():
    server = SSEServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(sse_server):
    sse_server.behaviour.update({"ttft_s": 0.0, "itl_s": 0.0, "role_first": True, "status": 200, "usage": True,
                                 "cached_tokens": None, "drop_after": None, "garbage": False})
    deadline = time.monotonic() + 5
    while sse_server._open and time.monotonic() < deadline:  # handlers left over from a timed-out test
        time.sleep(0.01)
    sse_server.requests.clear()
    sse_server.truth.clear()
    sse_server.max_open = 0
    return sse_server
