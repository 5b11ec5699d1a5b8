"""The one collector process of a cell: every source sampled inside each tick of an absolute schedule.

Tick k is due at ``t0 + k * interval`` on the monotonic clock (k = 1, 2, ...; t0 is the priming read, so
every tick carries a full-interval delta). Sleeping targets the due time, never "interval after the last
tick", so there is no drift. A tick that cannot start within a quarter interval of its due time is
**missed**: counted, never written late and never bunched with the next one.

Outputs in ``--out-dir`` (each line flushed as written):
``sysmon.jsonl`` (host, NVMe, GPU, processes), ``dynkv.jsonl`` + ``dynkv_kv.csv`` (KV tiers, when
``--scrape`` is given), ``scrapes.jsonl.gz`` (raw scrape bodies), ``collector_summary.json`` at the end.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import threading
import time
from dataclasses import dataclass, field

from kvharness.cellfiles import COLLECTOR_SUMMARY_JSON, DYNKV_JSONL, SYSMON_JSONL
from kvharness.stats import percentile
from kvharness.telemetry import host
from kvharness.telemetry.gpu import GpuSampler
from kvharness.telemetry.prom import (TIER_FIELDS, DeltaState, SeriesCache, absolute_hits, fetch_family, map_deltas,
                                      parse_body)

CSV_COLUMNS = (["ts", "mono_ns", "tick", "kv_block_size_bytes"]
               + [f"tier{i}_{f}" for i in range(3) for f in TIER_FIELDS]
               + ["evictions", "prefetches", "sources_ok"])


@dataclass
class CollectorConfig:
    out_dir: str
    interval_ms: float = 200.0
    tier2_path: str | None = None
    device: str | None = None
    watch_tree: int | None = None
    scrapes: dict[str, str] = field(default_factory=dict)
    kv_block_bytes: int | None = None
    fetch_hists: dict[str, str] = field(default_factory=dict)  # tier -> histogram family (stack config)
    duration_s: float | None = None
    scrape_timeout_s: float | None = None
    scrape_client: str = "raw"  # raw socket HTTP/1.1 (https falls back to stdlib), "stdlib", "httpx"
    proc_refresh_s: float = 1.0
    late_fraction: float = 0.25  # a tick starting later than this share of an interval is missed
    gpu: object = None  # injected GpuSampler (tests); None = real NVML


class _ProcFile:
    """A /proc file kept open and re-read from offset 0 each tick (no open/close per tick)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def read(self) -> str:
        chunks = []
        off = 0
        while True:
            b = os.pread(self.fd, 65536, off)
            if not b:
                break
            chunks.append(b)
            off += len(b)
            if len(b) < 65536:
                break
        return b"".join(chunks).decode("ascii", "replace")

    def close(self) -> None:
        os.close(self.fd)


class RawGet:
    """A minimal keep-alive HTTP/1.1 GET on a plain socket, for ``http://`` metrics endpoints.

    Per scrape of a 23 kB exposition: ~0.05 ms of CPU against ~0.3 ms for ``http.client`` and ~1.8 ms
    for ``httpx`` (measured on the 2-core development VM), which is what keeps several sources at 200 ms
    under 1 % of a core. Handles Content-Length, chunked and read-to-close bodies, an overall deadline,
    and one retry when a kept-alive connection turns out to be closed by the server.
    """

    MAX_HEADER = 1 << 16

    def __init__(self, url: str, timeout_s: float):
        from urllib.parse import urlsplit

        u = urlsplit(url)
        if u.scheme != "http":
            raise ValueError(f"RawGet speaks plain http only, not {u.scheme!r}")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nAccept: text/plain, */*\r\n"
                        f"User-Agent: kvharness-sysmon\r\n\r\n").encode("latin-1")
        self.timeout = timeout_s
        self.sock = None
        self._deadline = 0.0

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def _recv(self) -> bytes:
        if time.monotonic() > self._deadline:
            raise TimeoutError(f"scrape exceeded {self.timeout:.3f} s")
        return self.sock.recv(1 << 18)

    def get(self) -> str:
        import socket

        for attempt in (0, 1):
            fresh = self.sock is None
            if fresh:
                self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._deadline = time.monotonic() + self.timeout
            try:
                self.sock.sendall(self.request)
                return self._response()
            except (_PeerClosed, BrokenPipeError, ConnectionResetError) as exc:
                self.close()  # a kept-alive connection the server had closed: one retry on a fresh one
                if fresh or attempt:
                    raise ConnectionError(f"connection closed by the server ({type(exc).__name__})") from None
            except BaseException:
                self.close()
                raise
        raise RuntimeError("unreachable")  # pragma: no cover

    def _response(self) -> str:
        buf = b""
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > self.MAX_HEADER:
                raise ValueError("response header too large")
            chunk = self._recv()
            if not chunk:
                if not buf:
                    raise _PeerClosed()
                raise ConnectionError("connection closed inside the response header")
            buf += chunk
        head = buf[:end].decode("latin-1").split("\r\n")
        body = buf[end + 4:]
        parts = head[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ValueError(f"bad status line {head[0][:80]!r}")
        version, status = parts[0], int(parts[1])
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        conn = headers.get("connection", "").lower()
        close = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._chunked(body)
        elif "content-length" in headers:
            n = int(headers["content-length"])
            while len(body) < n:
                chunk = self._recv()
                if not chunk:
                    raise ConnectionError("connection closed inside the response body")
                body += chunk
            body = body[:n]
        else:
            while True:
                chunk = self._recv()
                if not chunk:
                    break
                body += chunk
            close = True
        if close:
            self.close()
        if status >= 400:
            raise RuntimeError(f"HTTP {status}")
        charset = "utf-8"
        ctype = headers.get("content-type", "")
        if "charset=" in ctype:
            charset = ctype.split("charset=", 1)[1].split(";")[0].strip().strip('"') or "utf-8"
        return body.decode(charset, "replace")

    def _chunked(self, buf: bytes) -> bytes:
        out = []
        while True:
            while b"\r\n" not in buf:
                buf += self._more()
            line, buf = buf.split(b"\r\n", 1)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while not (buf.startswith(b"\r\n") or b"\r\n\r\n" in buf):
                    buf += self._more()
                return b"".join(out)
            while len(buf) < size + 2:
                buf += self._more()
            out.append(buf[:size])
            buf = buf[size + 2:]

    def _more(self) -> bytes:
        chunk = self._recv()
        if not chunk:
            raise ConnectionError("connection closed inside a chunked body")
        return chunk


class _PeerClosed(Exception):
    pass


class StdlibGet:
    """A keep-alive HTTP GET on ``http.client`` (``--scrape-client stdlib``, and https under ``raw``).
    One retry, only when a kept-alive connection turns out to be stale."""

    def __init__(self, url: str, timeout_s: float):
        import http.client
        from urllib.parse import urlsplit

        u = urlsplit(url)
        self._http = http.client
        self.https = u.scheme == "https"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if self.https else 80)
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.timeout = timeout_s
        self.conn = None

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def get(self) -> str:
        hc = self._http
        for attempt in (0, 1):
            fresh = self.conn is None
            if fresh:
                cls = hc.HTTPSConnection if self.https else hc.HTTPConnection
                self.conn = cls(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("GET", self.path, headers={"Accept": "text/plain, */*"})
                r = self.conn.getresponse()
                body = r.read()
                if r.will_close:
                    self._close()
                if r.status >= 400:
                    raise RuntimeError(f"HTTP {r.status}")
                charset = r.headers.get_content_charset() or "utf-8"
                return body.decode(charset, "replace")
            except (hc.RemoteDisconnected, ConnectionResetError, BrokenPipeError, hc.CannotSendRequest):
                self._close()
                if fresh or attempt:
                    raise
            except BaseException:
                self._close()
                raise
        raise RuntimeError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._close()


class HttpxGet:
    """The same GET through one shared ``httpx.Client`` (``--scrape-client httpx``)."""

    def __init__(self, client, url: str):
        self.client, self.url = client, url

    def get(self) -> str:
        r = self.client.get(self.url)
        r.raise_for_status()
        return r.text

    def close(self) -> None:
        pass


class Scraper:
    """Scrapes every configured source once per tick (one kept-alive connection per source)."""

    def __init__(self, sources: dict[str, str], timeout_s: float, raw_path: str, client: str = "raw",
                 extra_hists: frozenset = frozenset()):
        self.sources = dict(sources)
        self.httpx_client = None
        if client == "httpx":
            import httpx

            self.httpx_client = httpx.Client(timeout=httpx.Timeout(timeout_s),
                                             headers={"Accept": "text/plain, */*"})
            self.getters = {n: HttpxGet(self.httpx_client, u) for n, u in sources.items()}
        elif client == "stdlib":
            self.getters = {n: StdlibGet(u, timeout_s) for n, u in sources.items()}
        elif client == "raw":
            self.getters = {n: (RawGet(u, timeout_s) if u.startswith("http://") else StdlibGet(u, timeout_s))
                            for n, u in sources.items()}
        else:
            raise ValueError(f"unknown scrape client {client!r}")
        self.state = {name: DeltaState() for name in sources}
        self.cache = {name: SeriesCache(mapped_only=True, extra_hists=extra_hists) for name in sources}
        self.last_body: dict[str, str | None] = {name: None for name in sources}
        self.last_snap: dict[str, object] = {}
        self.errors: dict[str, int] = {name: 0 for name in sources}
        self.last_error: dict[str, str | None] = {name: None for name in sources}
        self.raw = gzip.open(raw_path, "wt", compresslevel=6, encoding="utf-8")
        self._last_raw_flush = time.monotonic()

    def scrape(self, tick: int, ts: float, mono_ns: int) -> tuple[dict[str, dict | None], dict[str, dict]]:
        deltas: dict[str, dict | None] = {}
        status: dict[str, dict] = {}
        for name, url in self.sources.items():
            t = time.monotonic_ns()
            try:
                body = self.getters[name].get()
            except Exception as exc:  # timeout, refused, HTTP error: a missing sample, not a crash
                self.errors[name] += 1
                err = f"{type(exc).__name__}: {exc}"[:200]
                self.last_error[name] = err
                status[name] = {"ok": False, "error": err}
                self.raw.write(json.dumps({"tick": tick, "ts": ts, "mono_ns": mono_ns, "source": name,
                                           "error": err}) + "\n")
                continue
            ms = (time.monotonic_ns() - t) / 1e6
            same = body == self.last_body[name] and not body.lstrip().startswith("[")
            try:
                snap = self.last_snap[name] if same else parse_body(body, self.cache[name])
            except Exception as exc:
                self.errors[name] += 1
                err = f"parse: {type(exc).__name__}: {exc}"[:200]
                self.last_error[name] = err
                status[name] = {"ok": False, "error": err}
                continue
            self.last_body[name] = body
            self.last_snap[name] = snap
            deltas[name] = self.state[name].update(snap)
            status[name] = {"ok": True, "ms": round(ms, 2)}
            rec = {"tick": tick, "ts": ts, "mono_ns": mono_ns, "source": name}
            if same:
                rec["same_as_previous"] = True
            else:
                rec["body"] = body
            self.raw.write(json.dumps(rec) + "\n")
        now = time.monotonic()
        if now - self._last_raw_flush >= 5.0:
            self.raw.flush()  # Z_SYNC_FLUSH: a killed collector still leaves a readable prefix
            self._last_raw_flush = now
        return deltas, status

    def close(self) -> None:
        try:
            for g in self.getters.values():
                g.close()
            if self.httpx_client is not None:
                self.httpx_client.close()
        finally:
            self.raw.close()


class Collector:
    def __init__(self, cfg: CollectorConfig, stop: threading.Event | None = None):
        self.cfg = cfg
        self.stop = stop or threading.Event()
        os.makedirs(cfg.out_dir, exist_ok=True)
        self.interval_ns = int(round(cfg.interval_ms * 1e6))
        if self.interval_ns <= 0:
            raise ValueError("--interval-ms must be positive")
        self.dev = host.resolve_block_device(cfg.tier2_path, cfg.device)
        self.gpu = cfg.gpu if cfg.gpu is not None else GpuSampler()
        self.procs = host.ProcWatcher(cfg.watch_tree, cfg.proc_refresh_s) if cfg.watch_tree else None
        self.sources = ["host"] + (["nvme"] if self.dev.device else []) + (["gpu"] if self.gpu.available else [])
        self.sources += list(cfg.scrapes)
        timeout = cfg.scrape_timeout_s
        if timeout is None:
            timeout = min(1.0, max(0.05, 0.4 * cfg.interval_ms / 1000.0))
        self.scraper = (Scraper(cfg.scrapes, timeout, os.path.join(cfg.out_dir, "scrapes.jsonl.gz"),
                                cfg.scrape_client,
                                extra_hists=frozenset(fetch_family(n) for n in cfg.fetch_hists.values()))
                        if cfg.scrapes else None)
        self.counts = {s: 0 for s in self.sources}
        self.block_bytes = cfg.kv_block_bytes
        self.block_bytes_source = "--kv-block-bytes" if cfg.kv_block_bytes else None
        if self.procs:
            self.counts["procs"] = 0

    def _discover_block_bytes(self) -> None:
        """Without --kv-block-bytes, take the simulator's own ``kvsim_kv_block_size_bytes`` gauge."""
        for snap in self.scraper.last_snap.values():
            v = snap.gauge_sum("kvsim_kv_block_size_bytes") if hasattr(snap, "gauge_sum") else None
            if v:
                self.block_bytes = int(v)
                self.block_bytes_source = "kvsim_kv_block_size_bytes"
                return

    # ------------------------------------------------------------------------------------ sampling
    def _sample(self, tick: int, due_ns: int, files: dict, prev: dict) -> tuple[dict, dict | None, set]:
        mono_ns = time.monotonic_ns()
        ts = time.time()
        got: set[str] = set()
        rec: dict = {"ts": round(ts, 6), "mono_ns": mono_ns, "tick": tick,
                     "lag_ms": round((mono_ns - due_ns) / 1e6, 3)}
        rec["cpu"] = rec["mem"] = None
        try:
            cpu = host.parse_proc_stat_cpu(files["stat"].read())
            rec["cpu"] = host.cpu_percent(prev["cpu"], cpu) if prev.get("cpu") else None
            prev["cpu"] = cpu
            rec["mem"] = host.parse_meminfo(files["meminfo"].read())
            got.add("host")
        except (OSError, ValueError) as exc:
            rec["host_error"] = str(exc)[:200]
        if self.dev.device:
            try:
                line = host.diskstats_line(files["diskstats"].read(), self.dev.device)
                if line is None:
                    raise ValueError(f"{self.dev.device} vanished from /proc/diskstats")
                p = prev.get("disk")
                if p is not None and mono_ns > p[1]:
                    nv = host.iostat_fields(p[0], line, (mono_ns - p[1]) / 1e9)
                    nv = {k: round(v, 4) for k, v in nv.items()}
                    rec["nvme"] = {"device": self.dev.device, **nv}
                    got.add("nvme")
                else:
                    rec["nvme"] = None
                prev["disk"] = (line, mono_ns)
            except (OSError, ValueError) as exc:
                rec["nvme"] = None
                rec["nvme_error"] = str(exc)
        else:
            rec["nvme"] = None
        if self.gpu.available:
            g = self.gpu.sample()
            rec["gpu"] = g
            if g is not None:
                got.add("gpu")
        else:
            rec["gpu"] = None
        if self.procs is not None:
            rec["procs"] = self.procs.sample(mono_ns)
            self.counts["procs"] += 1
        dyn = None
        if self.scraper is not None:
            dyn = self._scrape(tick, rec["ts"], mono_ns)
            got.update(name for name, st in dyn["sources"].items() if st.get("ok"))
        return rec, dyn, got

    def _scrape(self, tick: int, ts: float, mono_ns: int) -> dict:
        """One scrape of every source as a dynkv record: mapped deltas since the previous scrape, and which
        sources were at their baseline (their first good scrape: no deltas yet)."""
        deltas, status = self.scraper.scrape(tick, ts, mono_ns)
        if self.block_bytes is None:
            self._discover_block_bytes()
        return {"ts": round(ts, 6), "mono_ns": mono_ns, "tick": tick, "kv_block_size_bytes": self.block_bytes,
                **map_deltas(deltas, self.block_bytes, self.cfg.fetch_hists), "sources": status,
                "baseline": [n for n in status if status[n].get("ok") and deltas.get(n) is None]}

    # --------------------------------------------------------------------------------------- loop
    def run(self) -> dict:
        """Sample until stopped (or ``duration_s``), then write collector_summary.json. Phases: open the
        output files, prime the host counters, the baseline scrape (tick 0), the tick loop, the closing
        scrape, close, summarise."""
        out = _Outputs(self.cfg.out_dir, with_dynkv=self.scraper is not None)
        files = {"stat": host_file("/proc/stat"), "meminfo": host_file("/proc/meminfo"),
                 "diskstats": host_file("/proc/diskstats")}
        cpu0 = time.process_time()
        wall_start = time.time()
        prev: dict = {}
        t0 = time.monotonic_ns()
        self._prime(files, prev, t0)
        if self.scraper is not None:
            out.write_dyn(self._baseline_scrape(t0))
        loop = self._tick_loop(out, files, prev, t0)
        if self.scraper is not None and self.stop.is_set():
            # the closing scrape: the counters moved since the last tick (the load's last requests) would
            # otherwise be lost when the cell stops the collector. Its interval is shorter than the cadence,
            # it is marked ``final`` and counts in no tick statistic.
            dyn = self._scrape(loop.tick, time.time(), time.monotonic_ns())
            dyn["final"] = True
            out.write_dyn(dyn)
        stop_ns = time.monotonic_ns()
        cpu_s = time.process_time() - cpu0
        out.close()
        if self.scraper is not None:
            self.scraper.close()
        for f in files.values():
            f.close()
        self.gpu.close()
        return self._write_summary(loop, t0, stop_ns, cpu_s, wall_start)

    def _prime(self, files: dict, prev: dict, t0: int) -> None:
        """The priming read: tick 1 then carries a full-interval delta for CPU and disk."""
        try:
            prev["cpu"] = host.parse_proc_stat_cpu(files["stat"].read())
            if self.dev.device:
                line = host.diskstats_line(files["diskstats"].read(), self.dev.device)
                if line is not None:
                    prev["disk"] = (line, t0)
            if self.procs is not None:
                self.procs.sample(t0)
        except (OSError, ValueError):
            pass

    def _baseline_scrape(self, t0: int) -> dict:
        """Tick 0: the first scrape of each source, its baseline, at once. Its record (baseline only, no
        deltas) tells a waiting caller that every later counter delta starts here, so the load can start now
        instead of one interval later; tick 1 then carries the first deltas."""
        base = self._scrape(0, time.time(), t0)
        # the stack's hit counters since its start (the cold-start check of the cell: 0 on a fresh stack)
        answered = {n: self.scraper.last_snap.get(n) for n, st in base["sources"].items() if st.get("ok")}
        base["baseline_hits"] = absolute_hits(answered) if answered else None
        return base

    def _tick_loop(self, out: "_Outputs", files: dict, prev: dict, t0: int) -> "_LoopStats":
        """The cadence loop (a scheduler: each tick is due at t0 + tick x interval; a tick whose start window
        has passed is skipped and counted missed)."""
        cfg = self.cfg
        end_ns = t0 + int(cfg.duration_s * 1e9) if cfg.duration_s else None
        late_ns = int(self.interval_ns * cfg.late_fraction)
        loop = _LoopStats(last_due=t0, end_ns=end_ns)
        first_line = True
        while not self.stop.is_set():
            due = t0 + loop.tick * self.interval_ns
            if end_ns is not None and due > end_ns:
                break
            now = time.monotonic_ns()
            if now > due + late_ns:
                # late: skip every tick whose start window has passed; count them as missed
                behind = (now - due - late_ns) // self.interval_ns + 1
                loop.missed += behind
                loop.tick += behind
                continue
            if now < due:
                if self.stop.wait((due - now) / 1e9):
                    break
                now = time.monotonic_ns()
                if now > due + late_ns:  # overslept (machine stalled)
                    loop.missed += 1
                    loop.tick += 1
                    continue
            loop.last_due = due
            rec, dyn, got = self._sample(loop.tick, due, files, prev)
            if first_line:
                if not self.gpu.available:
                    rec["gpu_reason"] = self.gpu.reason
                if self.dev.device is None:
                    rec["nvme_reason"] = self.dev.detail
                first_line = False
            out.write_sysmon(rec)
            if dyn is not None:
                out.write_dyn(dyn)
            for s in got:
                self.counts[s] = self.counts.get(s, 0) + 1
            if all(s in got for s in self.sources):
                loop.aligned += 1
            loop.present += 1
            loop.sample_ns.append(rec["mono_ns"])
            loop.lags_ms.append(rec["lag_ms"])
            loop.tick += 1
        return loop

    def _write_summary(self, loop: "_LoopStats", t0: int, stop_ns: int, cpu_s: float, wall_start: float) -> dict:
        cfg = self.cfg
        # expected = every tick that came due during the run: ticks 1..tick-1 were each sampled or missed
        expected, missed = loop.tick - 1, loop.missed
        if loop.end_ns is not None:
            expected = min(expected, int((loop.end_ns - t0) // self.interval_ns))
            missed = expected - loop.present
        summary = build_summary(
            interval_ms=cfg.interval_ms, expected=expected, present=loop.present, missed_counted=missed,
            sample_ns=loop.sample_ns, lags_ms=loop.lags_ms, counts=self.counts, sources=self.sources,
            aligned=loop.aligned, cpu_s=cpu_s, wall_s=(stop_ns - t0) / 1e9,
        )
        summary.update({
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_start)),
            "t0_mono_ns": t0, "stop_mono_ns": stop_ns, "last_due_mono_ns": loop.last_due,
            "collector_cpu_s_process": round(time.process_time(), 4),
            "collector_pid": os.getpid(),
            "nvme_device": self.dev.device, "nvme_device_source": self.dev.source,
            "nvme_device_detail": self.dev.detail, "nvme_slaves": self.dev.slaves,
            "gpu_reason": self.gpu.reason, "gpu_unsupported": getattr(self.gpu, "unsupported", {}),
            "scrape_sources": dict(cfg.scrapes), "scrape_client": cfg.scrape_client,
            "scrape_errors": dict(self.scraper.errors) if self.scraper else {},
            "scrape_last_error": dict(self.scraper.last_error) if self.scraper else {},
            "counter_resets": ({n: st.resets for n, st in self.scraper.state.items()} if self.scraper else {}),
            "kv_block_size_bytes": self.block_bytes, "kv_block_size_source": self.block_bytes_source,
            "watch_tree": cfg.watch_tree,
        })
        tmp = os.path.join(cfg.out_dir, "collector_summary.json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, os.path.join(cfg.out_dir, COLLECTOR_SUMMARY_JSON))
        return summary


@dataclass
class _LoopStats:
    """What the tick loop counted (the summary's inputs)."""
    last_due: int
    end_ns: int | None
    tick: int = 1
    missed: int = 0
    aligned: int = 0
    present: int = 0
    sample_ns: list[int] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)


class _Outputs:
    """The collector's record files, each line flushed as written: sysmon.jsonl; with a scraper also
    dynkv.jsonl and its CSV view dynkv_kv.csv."""

    def __init__(self, out_dir: str, with_dynkv: bool):
        self.sysmon = open(os.path.join(out_dir, SYSMON_JSONL), "w", encoding="utf-8")
        self.dynkv = self.csvf = self.writer = None
        if with_dynkv:
            self.dynkv = open(os.path.join(out_dir, DYNKV_JSONL), "w", encoding="utf-8")
            self.csvf = open(os.path.join(out_dir, "dynkv_kv.csv"), "w", newline="", encoding="utf-8")
            self.writer = csv.writer(self.csvf)
            self.writer.writerow(CSV_COLUMNS)
            self.csvf.flush()

    def write_sysmon(self, rec: dict) -> None:
        self.sysmon.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.sysmon.flush()

    def write_dyn(self, dyn: dict) -> None:  # one scrape record: dynkv.jsonl and its CSV view, flushed
        self.dynkv.write(json.dumps(dyn, separators=(",", ":")) + "\n")
        self.dynkv.flush()
        self.writer.writerow(csv_row(dyn))
        self.csvf.flush()

    def close(self) -> None:
        self.sysmon.close()
        if self.dynkv is not None:
            self.dynkv.close()
            self.csvf.close()

def host_file(path: str) -> _ProcFile:
    return _ProcFile(path)


def csv_row(dyn: dict) -> list:
    row = [dyn["ts"], dyn["mono_ns"], dyn["tick"], dyn.get("kv_block_size_bytes")]
    for i in range(3):
        t = dyn.get(f"tier{i}") or {}
        row += [t.get(f) for f in TIER_FIELDS]
    row += [dyn.get("evictions"), dyn.get("prefetches"),
            sum(1 for s in (dyn.get("sources") or {}).values() if s.get("ok"))]
    return ["" if v is None else v for v in row]


def alignment_fraction(aligned_ticks: int, expected_ticks: int) -> float | None:
    """Share of expected cadence windows in which every configured source produced a sample.
    Missed ticks count as unaligned windows."""
    if expected_ticks <= 0:
        return None
    return min(aligned_ticks, expected_ticks) / expected_ticks


def build_summary(*, interval_ms: float, expected: int, present: int, missed_counted: int, sample_ns: list[int],
                  lags_ms: list[float], counts: dict, sources: list[str], aligned: int, cpu_s: float,
                  wall_s: float) -> dict:
    intervals = [(b - a) / 1e6 for a, b in zip(sample_ns, sample_ns[1:])]
    med = percentile(intervals, 50)
    p99 = percentile(intervals, 99)
    return {
        "interval_ms": interval_ms,
        "ticks_expected": expected,
        "ticks_present": present,
        "ticks_missed": max(expected - present, 0),
        "ticks_missed_late": missed_counted,
        "ticks_present_fraction": (present / expected) if expected else None,
        "interval_achieved_median_ms": round(med, 4) if med is not None else None,
        "interval_achieved_p99_ms": round(p99, 4) if p99 is not None else None,
        "interval_achieved_max_ms": round(max(intervals), 4) if intervals else None,
        "tick_lag_p50_ms": percentile(lags_ms, 50),
        "tick_lag_p99_ms": percentile(lags_ms, 99),
        "sources": list(sources),
        "source_samples": dict(counts),
        "aligned_ticks": aligned,
        "alignment_fraction": alignment_fraction(aligned, expected),
        "collector_cpu_s": round(cpu_s, 4),
        "wall_s": round(wall_s, 4),
        "collector_cpu_pct_of_core": round(100.0 * cpu_s / wall_s, 4) if wall_s > 0 else None,
    }
