"""The simulated stack's HTTP front: OpenAI routes, SSE sinks, health, metrics, fault injection."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from kvharness import __version__
from kvharness.sim.engine import VOCAB, Engine, RejectedError
from kvharness.sim.exporters import SimMetrics
from kvharness.sim.httpserver import Connection
from kvharness.sim.kvcache import KVCache
from kvharness.sim.lora import LoraManager, valid_adapter_id
from kvharness.sim.profiles import TimingModel
from kvharness.sim.tier2 import Tier2Store
from kvharness.tokens import chat_prompt_text, split_words


async def _listen(loop, factory, host: str, port: int, fd: int | None, backlog: int):
    """Serve on an inherited listening socket ``fd`` (the harness reserved the port), else bind host:port."""
    if fd is None:
        return await loop.create_server(factory, host, port, backlog=backlog)
    import socket

    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM:
        raise OSError(f"--fd {fd} is not a TCP socket")
    sock.setblocking(False)
    return await loop.create_server(factory, sock=sock, backlog=backlog)


@dataclass
class SimConfig:
    mode: str
    timing: TimingModel
    served_model_name: str
    host: str = "127.0.0.1"
    port: int = 8355
    metrics_port: int = 0
    listen_fd: int | None = None  # an inherited listening socket for the API port (--fd)
    metrics_listen_fd: int | None = None  # the same for the KVBM metrics port (--metrics-fd)
    tier0_bytes: int = 8 << 30
    tier1_bytes: int = 0
    tier2_bytes: int = 0
    tier2_dir: str | None = None
    tokens_per_block: int = 32
    max_batch_size: int = 64
    max_num_tokens: int = 8192
    eviction_policy: str = "lru"
    block_bytes_scale: float = 1 / 32
    speedup: float = 1.0
    seed: int = 0
    jitter: float = 0.0
    startup_time_s: float = 0.0
    register_after_s: float = 0.0     # like Dynamo's frontend: /health 200 at once, model listed only later
    max_loras: int = 0
    lora_dir: str | None = None
    lora_adapter_bytes: int = 64 << 20
    io_threads: int = 4
    fault_crash_after: int = 0
    fault_hang: bool = False
    fault_error_rate: float = 0.0
    fault_error_status: int = 500
    fault_malformed_every: int = 0
    fault_slow_drip_ms: float = 0.0
    keep_tier2_file: bool = False
    disk_offload_filter: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def block_bytes(self) -> int:
        return self.tokens_per_block * self.timing.kv_bytes_per_token


def _usage(seq) -> dict:
    return {"prompt_tokens": seq.n_prompt, "completion_tokens": seq.n_gen,
            "total_tokens": seq.n_prompt + seq.n_gen,
            "prompt_tokens_details": {"cached_tokens": seq.cached_tokens}}


def _usage_json(seq) -> str:
    """``json.dumps(_usage(seq), separators=(",", ":"))`` without the encoder (the hot last-token path)."""
    return (f'{{"prompt_tokens":{seq.n_prompt},"completion_tokens":{seq.n_gen},'
            f'"total_tokens":{seq.n_prompt + seq.n_gen},"prompt_tokens_details":{{"cached_tokens":{seq.cached_tokens}}}}}')


_WORD_BYTES = {w: w.encode() for w in VOCAB}  # the engine's words, encoded once


def _error_body(status: int, message: str, etype: str | None = None, extra: dict | None = None) -> bytes:
    """An OpenAI-shaped error: ``{"error": {"message", "type", "code", ...}}``."""
    etype = etype or {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error",
                      503: "service_unavailable"}.get(status, "server_error")
    return json.dumps({"error": {"message": message, "type": etype, "code": status, **(extra or {})}}).encode()


def _stream_options(so, stream: bool) -> tuple[bool, bool]:
    """(include_usage, continuous_usage_stats) from ``stream_options``; ValueError for what is not honoured.

    ``continuous_usage_stats`` (vLLM's extension) puts the running usage in every chunk; like vLLM it
    applies together with ``include_usage``, and asking for it alone is refused rather than ignored."""
    if so is None:
        return False, False
    if not isinstance(so, dict):
        raise ValueError("'stream_options' must be an object")
    if not stream:
        raise ValueError("'stream_options' is only allowed with \"stream\": true")
    include_usage = bool(so.get("include_usage"))
    continuous = bool(so.get("continuous_usage_stats"))
    if continuous and not include_usage:
        raise ValueError("stream_options.continuous_usage_stats needs include_usage: true")
    return include_usage, continuous


class StreamSink:
    """Writes SSE events straight into the connection (called by the engine, synchronously)."""

    __slots__ = ("conn", "chat", "head", "tail", "tail_last", "role_event", "include_usage", "usage_head",
                 "n", "malformed", "drip", "loop", "_t_next", "server", "endpoint", "rid", "_mid_fmt", "_mid_len",
                 "_fast", "continuous", "tail_usage", "tail_last_usage")

    def __init__(self, server, conn, rid, model, created, chat, include_usage, malformed, drip_s,
                 continuous_usage=False):
        self.server = server
        self.conn = conn
        self.chat = chat
        self.rid = rid
        self.endpoint = "chat_completions" if chat else "completions"
        usage_null = ',"usage":null' if include_usage else ""
        if chat:
            base = '{"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,"choices":[{"index":0,' % (
                rid, created, json.dumps(model))
            self.head = (base + '"delta":{"content":').encode()
            self.tail = ('},"logprobs":null,"finish_reason":null}]' + usage_null + '}\n\n').encode()
            self.tail_last = ('},"logprobs":null,"finish_reason":"length"}]' + usage_null + '}\n\n').encode()
            self.role_event = ('data: ' + base + '"delta":{"role":"assistant","content":""},"logprobs":null,'
                               '"finish_reason":null}]' + usage_null + '}\n\n').encode()
            self.usage_head = '{"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,"choices":[],"usage":' % (
                rid, created, json.dumps(model))
        else:
            base = '{"id":"%s","object":"text_completion","created":%d,"model":%s,"choices":[{"index":0,"text":' % (
                rid, created, json.dumps(model))
            self.head = base.encode()
            self.tail = (',"logprobs":null,"finish_reason":null}]' + usage_null + '}\n\n').encode()
            self.tail_last = (',"logprobs":null,"finish_reason":"length"}]' + usage_null + '}\n\n').encode()
            self.role_event = None
            self.usage_head = '{"id":"%s","object":"text_completion","created":%d,"model":%s,"choices":[],"usage":' % (
                rid, created, json.dumps(model))
        # a middle token as one chunk in one formatting step: b"%x\r\ndata: HEAD\"word \"TAIL\r\n"
        mid = b"data: " + self.head + b'"'
        self._mid_len = len(mid) + 2 + len(self.tail)
        self._mid_fmt = b"%x\r\n" + mid.replace(b"%", b"%%") + b'%b "' + self.tail.replace(b"%", b"%%") + b"\r\n"
        # continuous_usage_stats (only with include_usage): every chunk's "usage" is the running count
        self.continuous = continuous_usage and include_usage
        null_end = b'null}\n\n'
        self.tail_usage = self.tail[:-len(null_end)] if self.continuous else b""
        self.tail_last_usage = self.tail_last[:-len(null_end)] if self.continuous else b""
        self._fast = not malformed and not drip_s and not self.continuous
        self.include_usage = include_usage
        self.n = 0
        self.malformed = malformed
        self.drip = drip_s
        self.loop = server.loop
        self._t_next = 0.0

    def _out(self, data: bytes, end: bool = False) -> None:
        if self.drip:
            now = self.loop.time()
            t = max(now, self._t_next)
            self._t_next = t + self.drip
            if t > now:
                self.loop.call_at(t, self._write, data, end)
                return
        self._write(data, end)

    def _write(self, data: bytes, end: bool) -> None:
        if end:
            self.conn.end_stream(data)
        else:
            self.conn.write_chunk(data)

    def token(self, word: str, last: bool, seq=None) -> None:
        self.n += 1
        if self._fast and not last and self.n > 1:  # the hot path: most tokens of most streams
            wb = _WORD_BYTES.get(word) or word.encode()
            self.conn.write_framed(self._mid_fmt % (self._mid_len + len(wb), wb))
            return
        if self.continuous:
            data = (b"data: " + self.head + b'"' + word.encode() + b' "' + (self.tail_last_usage if last else self.tail_usage)
                    + _usage_json(seq).encode() + b"}\n\n")
            if self.n == 1 and self.role_event is not None:
                data = self.role_event + data
        elif self.n == 1 and self.role_event is not None:
            data = self.role_event + b"data: " + self.head + b'"' + word.encode() + b' "' + (self.tail_last if last else self.tail)
        elif self.malformed and self.n == 2:
            data = b'data: {"id":"' + self.rid.encode() + b'","object":"malformed\n\n'
            self.server.metrics.faults.labels("malformed").inc()
        else:
            data = b"data: " + self.head + b'"' + word.encode() + b' "' + (self.tail_last if last else self.tail)
        if not last:
            self._out(data)
            return
        # the last token, the usage chunk and [DONE] leave in one write
        if self.include_usage:
            data += b"data: " + (self.usage_head + _usage_json(seq) + "}\n\n").encode()
        self.conn.lost_callbacks.clear()
        self._out(data + b"data: [DONE]\n\n", end=True)
        # counted once the engine's step has written every stream (a metric is not worth a client's wait)
        self.loop.call_soon(self.server.request_done, self.endpoint, "stream", "success")


class FullSink:
    """Collects the tokens and answers once, for ``stream: false``."""

    __slots__ = ("server", "conn", "rid", "model", "created", "chat", "words")

    def __init__(self, server, conn, rid, model, created, chat):
        self.server, self.conn, self.rid, self.model, self.created, self.chat = server, conn, rid, model, created, chat
        self.words: list[str] = []

    def token(self, word: str, last: bool, seq=None) -> None:
        self.words.append(word)
        if last:
            self._finish(seq)

    def _finish(self, seq) -> None:
        text = "".join(w + " " for w in self.words)
        if self.chat:
            body = {"id": self.rid, "object": "chat.completion", "created": self.created, "model": self.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": None, "finish_reason": "length"}], "usage": _usage(seq)}
        else:
            body = {"id": self.rid, "object": "text_completion", "created": self.created, "model": self.model,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}],
                    "usage": _usage(seq)}
        self.conn.lost_callbacks.clear()
        self.conn.respond(200, json.dumps(body, separators=(",", ":")).encode())
        self.server.request_done("chat_completions" if self.chat else "completions", "unary", "success")


class SimServer:
    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.ready = False
        self.registered = cfg.register_after_s <= 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started_unix = int(time.time())
        self.n_requests = 0
        self.active = 0
        self.disconnected = 0
        self.fault_rng = random.Random(cfg.seed + 7919)
        self.servers = []
        self.store: Tier2Store | None = None
        self._hanging: list = []
        self._intake: deque = deque()
        self._intake_scheduled = False

    # -- lifecycle --------------------------------------------------------------------------------
    def _blocks(self, nbytes: int) -> int:
        return int(nbytes // self.cfg.block_bytes) if nbytes else 0

    async def start(self) -> None:
        cfg = self.cfg
        self.loop = loop = asyncio.get_running_loop()
        t0_blocks = self._blocks(cfg.tier0_bytes)
        if t0_blocks < 1:
            raise ValueError(f"--tier0-bytes {cfg.tier0_bytes} holds no block of {cfg.block_bytes} bytes")
        t1_blocks = self._blocks(cfg.tier1_bytes) if cfg.mode == "B" else 0
        t2_blocks = self._blocks(cfg.tier2_bytes) if cfg.mode == "B" and cfg.tier2_dir else 0
        self.t_blocks = (t0_blocks, t1_blocks, t2_blocks)
        self.metrics = SimMetrics(cfg.mode, cfg.served_model_name, speedup=cfg.speedup, block_bytes=cfg.block_bytes,
                                  block_bytes_scale=cfg.block_bytes_scale, tokens_per_block=cfg.tokens_per_block,
                                  t0_blocks=t0_blocks, t1_blocks=t1_blocks, t2_blocks=t2_blocks,
                                  max_batch=cfg.max_batch_size, max_num_tokens=cfg.max_num_tokens)
        if t2_blocks:
            self.store = Tier2Store(cfg.tier2_dir, cfg.block_bytes, cfg.block_bytes_scale, t2_blocks, loop,
                                    io_threads=cfg.io_threads, on_io=self._on_io)
            if self.store.removed_orphans:
                print(f"kvharness sim: removed tier-2 files of dead simulators: {', '.join(self.store.removed_orphans)}",
                      file=sys.stderr, flush=True)
        self.kv = KVCache(t0_blocks, t1_blocks, t2_blocks, cfg.eviction_policy, store=self.store,
                          disk_offload_filter=cfg.disk_offload_filter, defer_offload=True)
        self.lora = None
        if cfg.max_loras > 0:
            lora_dir = cfg.lora_dir or (os.path.join(cfg.tier2_dir, "lora") if cfg.tier2_dir and cfg.mode == "B" else None)
            self._lora_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kvsim-lora")
            self.lora = LoraManager(cfg.max_loras, lora_dir, cfg.lora_adapter_bytes * cfg.block_bytes_scale, loop,
                                    self._lora_pool, cfg.speedup, cfg.timing.bw_g2_g3, self.metrics)
            self.lora.modelled_bytes = cfg.lora_adapter_bytes
        self.engine = Engine(cfg.timing, self.kv, tokens_per_block=cfg.tokens_per_block,
                             max_batch_size=cfg.max_batch_size, max_num_tokens=cfg.max_num_tokens,
                             speedup=cfg.speedup, seed=cfg.seed, mode=cfg.mode, metrics=self.metrics,
                             jitter=cfg.jitter, lora=self.lora, loop=loop)
        if cfg.fault_crash_after > 0:
            self.engine.on_complete = self._maybe_crash
        self.engine.start()
        srv = await _listen(loop, lambda: Connection(self.handle), cfg.host, cfg.port, cfg.listen_fd, 2048)
        self.servers.append(srv)
        if cfg.mode == "B" and (cfg.metrics_port or cfg.metrics_listen_fd is not None):
            ksrv = await _listen(loop, lambda: Connection(self.handle_kvbm), cfg.host, cfg.metrics_port,
                                 cfg.metrics_listen_fd, 128)
            self.servers.append(ksrv)
        if cfg.startup_time_s > 0:
            loop.call_later(cfg.startup_time_s, self._set_ready)
        else:
            self._set_ready()
        if not self.registered:
            loop.call_later(cfg.register_after_s, self._set_registered)

    def _set_registered(self) -> None:
        self.registered = True

    def _set_ready(self) -> None:
        self.ready = True
        print(f"kvharness sim: mode {self.cfg.mode} ready on http://{self.cfg.host}:{self.cfg.port} "
              f"(speedup {self.cfg.speedup:g}, T0/T1/T2 blocks {self.t_blocks})", file=sys.stderr, flush=True)

    async def close(self) -> None:
        for s in self.servers:
            s.close()
        await self.engine.stop()
        if self.store is not None:
            self.store.close(remove=not self.cfg.keep_tier2_file)

    def _on_io(self, kind: str, nbytes: int, seconds: float) -> None:
        if kind == "write":
            self.metrics.t2_write_io_seconds.observe(seconds)

    def _maybe_crash(self, seq) -> None:
        if self.engine.completed >= self.cfg.fault_crash_after:
            print(f"kvharness sim: injected crash after {self.engine.completed} requests", file=sys.stderr, flush=True)
            self.loop.call_soon(os._exit, 70)

    # -- routing ----------------------------------------------------------------------------------
    def handle(self, conn: Connection, req) -> None:
        path = req.path
        if path in ("/v1/completions", "/v1/chat/completions"):
            if req.method != "POST":
                conn.respond(405, _error_body(405, f"{path} accepts POST only"), headers={"Allow": "POST"})
                return
            if not self.registered:  # a frontend without a registered worker knows no model yet
                conn.respond(404, _error_body(404, f"model {self.cfg.served_model_name!r} not found"))
                return
            # parsed later, one request per loop iteration, so a burst of arrivals never delays a step
            self._intake.append((conn, req, path.endswith("chat/completions")))
            if not self._intake_scheduled:
                self._intake_scheduled = True
                self.loop.call_soon(self._drain_intake)
        elif path == "/health":
            if self.ready:
                conn.respond(200, json.dumps(self.health()).encode())
            else:
                conn.respond(503, b'{"status":"starting"}')
        elif path in ("/metrics", "/prometheus/metrics"):
            self.kv.flush_offloads()  # report settled tiers (normally already drained)
            self.metrics.refresh(self.engine, self.kv, self.store, self.active, self.disconnected)
            conn.respond(200, self.metrics.main.render(), ctype="text/plain; version=0.0.4; charset=utf-8")
        elif path == "/v1/models":
            models = [{"id": self.cfg.served_model_name, "object": "model", "created": self.started_unix,
                       "owned_by": "kvharness-sim"}] if self.registered else []
            if self.lora is not None and self.registered:
                models += [{"id": n, "object": "model", "created": self.started_unix, "owned_by": "kvharness-sim",
                            "parent": self.cfg.served_model_name} for n in self.lora.resident]
            conn.respond(200, json.dumps({"object": "list", "data": models}).encode())
        elif path in ("/reset_prefix_cache", "/flush_cache"):  # vLLM's and SGLang's cache resets
            if req.method != "POST":
                conn.respond(405, _error_body(405, "use POST"))
                return
            dropped = self.kv.drop_unreferenced(include_host=path == "/flush_cache")
            conn.respond(200, json.dumps({"status": "ok", "dropped_blocks": dropped}).encode())
        elif path == "/live":
            conn.respond(200, b'{"status":"live"}')
        else:
            conn.respond(404, _error_body(404, f"no route {path}"))

    def _drain_intake(self) -> None:
        conn, req, chat = self._intake.popleft()
        if not conn.closed:
            self._generate(conn, req, chat)
        if self._intake:
            self.loop.call_soon(self._drain_intake)
        else:
            self._intake_scheduled = False

    def handle_kvbm(self, conn: Connection, req) -> None:
        if req.path == "/metrics":
            self.kv.flush_offloads()
            self.metrics.refresh(self.engine, self.kv, self.store, self.active, self.disconnected)
            conn.respond(200, self.metrics.kvbm.render(), ctype="text/plain; version=0.0.4; charset=utf-8")
        else:
            conn.respond(404, _error_body(404, f"no route {req.path}"))

    def health(self) -> dict:
        cfg = self.cfg
        t0, t1, t2 = self.t_blocks
        return {
            "status": "ready", "stack": f"sim-{cfg.mode}", "mode": cfg.mode, "version": __version__,
            "model": cfg.served_model_name, "model_profile": cfg.timing.model, "precision": cfg.timing.precision,
            "hardware": cfg.timing.hardware, "speedup": cfg.speedup, "block_bytes_scale": cfg.block_bytes_scale,
            "kv_block_size_bytes": cfg.block_bytes, "kv_bytes_per_token": cfg.timing.kv_bytes_per_token,
            "tier2_slot_bytes": self.store.slot_bytes if self.store else None,
            "tokens_per_block": cfg.tokens_per_block, "max_batch_size": cfg.max_batch_size,
            "max_num_tokens": cfg.max_num_tokens, "eviction_policy": cfg.eviction_policy, "seed": cfg.seed,
            "tiers": {"t0": {"bytes": cfg.tier0_bytes, "blocks": t0},
                      "t1": {"bytes": cfg.tier1_bytes if cfg.mode == "B" else 0, "blocks": t1},
                      "t2": {"bytes": cfg.tier2_bytes if t2 else 0, "blocks": t2, "dir": cfg.tier2_dir if t2 else None,
                             "file": self.store.path if self.store else None,
                             "o_direct": self.store.direct if self.store else None}},
            "disk_offload_filter": cfg.disk_offload_filter, "max_loras": cfg.max_loras, "metrics_port": cfg.metrics_port if cfg.mode == "B" else None,
            "pid": os.getpid(),
        }

    # -- generation -------------------------------------------------------------------------------
    def request_done(self, endpoint: str, rtype: str, status: str) -> None:
        self.active -= 1
        self.metrics.requests_sim.labels(status).inc()
        if self.cfg.mode == "B":
            self.metrics.requests.labels(endpoint, rtype, status).inc()

    def _reject(self, conn, status: int, message: str, endpoint: str, rtype: str, headers=None,
                etype: str | None = None, extra: dict | None = None) -> None:
        conn.respond(status, _error_body(status, message, etype, extra), headers=headers)
        self.metrics.requests_sim.labels(f"http_{status}").inc()
        if self.cfg.mode == "B":
            self.metrics.requests.labels(endpoint, rtype, "error").inc()

    def _unknown_model(self, body: dict) -> tuple[int, str] | None:
        """(status, message) when the request's ``model`` is not served here, None when it is. Served:
        the configured name, any valid adapter name when adapters are enabled (``--max-loras``; an
        adapter is loaded on first use), or no ``model`` at all (the configured one is used)."""
        model = body.get("model")
        if model is None or model == "" or model == self.cfg.served_model_name:
            return None
        if not isinstance(model, str):
            return 400, f"'model' must be a string, got {type(model).__name__}"
        if self.lora is not None and valid_adapter_id(model):
            return None
        hint = ("" if self.lora is not None else
                "; LoRA adapters are not enabled, so an adapter name is not a model here (start with --max-loras N)")
        return 404, f"model {model!r} does not exist: this server serves {self.cfg.served_model_name!r}{hint}"

    def _generate(self, conn: Connection, req, chat: bool) -> None:
        cfg = self.cfg
        endpoint = "chat_completions" if chat else "completions"
        if not self.ready:
            conn.respond(503, _error_body(503, "server is starting"))
            return
        self.n_requests += 1
        if cfg.fault_hang:
            self.metrics.faults.labels("hang").inc()
            self._hanging.append(conn)  # accepted, never answered
            return
        try:
            body = json.loads(req.body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as e:
            self._reject(conn, 400, f"invalid JSON body: {e}", endpoint, "unary")
            return
        stream = bool(body.get("stream", False))
        rtype = "stream" if stream else "unary"
        model_error = self._unknown_model(body)
        if model_error is not None:
            status, message = model_error
            self._reject(conn, status, message, endpoint, rtype, etype="invalid_request_error",
                         extra={"param": "model", "code": "model_not_found"} if status == 404 else {"param": "model"})
            return
        if cfg.fault_error_rate > 0 and self.fault_rng.random() < cfg.fault_error_rate:
            st = cfg.fault_error_status
            self.metrics.faults.labels(f"http_{st}").inc()
            self._reject(conn, st, f"injected fault (HTTP {st})", endpoint, rtype,
                         headers={"Retry-After": "1"} if st == 429 else None)
            return
        try:
            ids, max_tokens, include_usage, continuous_usage = _parse_generation(body, chat, stream)
        except (ValueError, TypeError) as e:
            self._reject(conn, 400, str(e), endpoint, rtype)
            return
        model, adapter, problem = self._adapter_of(body)
        if problem is not None:
            self._reject(conn, 400, problem, endpoint, rtype)
            return
        resp_model = adapter if (adapter is not None and model == adapter) else cfg.served_model_name
        created = int(time.time())
        rid = ("chatcmpl-" if chat else "cmpl-") + f"{cfg.seed:x}{self.n_requests:010x}"
        if stream:
            malformed = cfg.fault_malformed_every > 0 and self.n_requests % cfg.fault_malformed_every == 0
            sink = StreamSink(self, conn, rid, resp_model, created, chat, include_usage, malformed,
                              cfg.fault_slow_drip_ms / 1000.0, continuous_usage)
        else:
            sink = FullSink(self, conn, rid, resp_model, created, chat)
        try:
            seq = self.engine.submit(rid, ids, max_tokens, sink, adapter)
        except RejectedError as e:
            self._reject(conn, e.status, str(e), endpoint, rtype)
            return
        self.active += 1
        conn.lost_callbacks.append(lambda: self._lost(seq, endpoint, rtype))
        if stream:
            conn.start_stream()

    def _adapter_of(self, body: dict) -> tuple[str, str | None, str | None]:
        """(model, LoRA adapter or None, why the request is refused or None): an adapter named by
        ``adapter_id`` or, with LoRA on, by a model name other than the served one."""
        cfg = self.cfg
        model = body.get("model") or cfg.served_model_name
        adapter = body.get("adapter_id")
        if adapter is None and self.lora is not None and model != cfg.served_model_name:
            adapter = model
        if adapter is not None:
            if self.lora is None:
                return model, adapter, "LoRA adapters are not enabled (start with --max-loras N)"
            if not valid_adapter_id(str(adapter)):
                return model, adapter, "invalid adapter id: use 1-128 of [A-Za-z0-9._-] without '..'"
        return model, adapter, None

    def _lost(self, seq, endpoint, rtype) -> None:
        from kvharness.sim.engine import DONE
        if seq.state != DONE:
            self.engine.cancel(seq)
            self.disconnected += 1
            self.request_done(endpoint, rtype, "disconnect")


def _parse_generation(body: dict, chat: bool, stream: bool) -> tuple[list[int], int, bool, bool]:
    """A generation request's prompt token ids, max_tokens and stream usage options; ValueError (or
    TypeError) with the 400 message for anything the simulator cannot serve."""
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list")
        ids = split_words(chat_prompt_text(msgs))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            if prompt and all(isinstance(x, int) for x in prompt):
                ids = [int(x) & 0xFFFFFFFF for x in prompt]
            elif len(prompt) == 1 and isinstance(prompt[0], str):
                ids = split_words(prompt[0])
            else:
                raise ValueError("'prompt' must be a string, a list of one string, or a list of token ids")
        elif isinstance(prompt, str):
            ids = split_words(prompt)
        else:
            raise ValueError("'prompt' is required")
    if not ids:
        raise ValueError("the prompt has no tokens")
    mt = body.get("max_tokens", body.get("max_completion_tokens"))
    max_tokens = 16 if mt is None else int(mt)
    if max_tokens < 1:
        raise ValueError("max_tokens must be >= 1")
    n = body.get("n", 1)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"'n' must be an integer >= 1, got {n!r}")
    if n is not None and n > 1:
        raise ValueError(f"n={n} is not supported by the simulator (one choice per request): "
                         "send n separate requests instead")
    include_usage, continuous_usage = _stream_options(body.get("stream_options"), stream)
    return ids, max_tokens, include_usage, continuous_usage
