"""Before the load, one request: does the endpoint answer this model at all?

A dead port, a wrong model name or a missing API key would otherwise turn into thousands of failed
requests and a table of dashes. :func:`first_request` sends one short request shaped like the
workload's (same path, model or adapter, headers and extra body; one output token) and returns
``None`` when the server answered 200, else one line naming the URL and the server's own words.

The exit judgement after the load is :func:`exit_verdict`: nothing succeeded, or more failed than
the allowed share.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Mapping
from urllib.parse import urlsplit

from kvharness.loadgen.spec import default

MESSAGE_CHARS = 200


def probe_body(spec: Mapping) -> tuple[str, dict]:
    """(path, body) of the check request: the workload's own endpoint, model and extras, 1 token out."""
    chat = spec["endpoint"] == "chat"
    body: dict = {"model": spec["model"]}
    lora = spec.get("lora")
    if lora:
        adapter = lora["adapters"][0]
        if lora.get("send_as", "model") == "model":
            body["model"] = adapter
        else:
            body["adapter_id"] = adapter
    if chat:
        body["messages"] = [{"role": "user", "content": "ping"}]
    else:
        body["prompt"] = "ping"
    body["max_tokens"] = 1
    body["stream"] = bool(spec["stream"])
    body.update(spec.get("extra_body") or {})
    return ("/v1/chat/completions" if chat else "/v1/completions"), body


def server_message(raw: bytes | str) -> str:
    """The server's error text: ``error.message`` / ``detail`` / ``message`` of a JSON body, else the
    body itself, on one line and cut to MESSAGE_CHARS."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        err = obj.get("error")
        for cand in ((err.get("message") if isinstance(err, dict) else err), obj.get("detail"), obj.get("message")):
            if isinstance(cand, str) and cand.strip():
                text = cand
                break
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS - 3] + "..."


def first_request(spec: Mapping, timeout_s: float | None = None) -> str | None:
    """None when the server answers the check request with 200; otherwise the reason, one line."""
    path, body = probe_body(spec)
    base = spec["base_url"].rstrip("/")
    url = base + path
    parts = urlsplit(base)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    timeout = float(timeout_s if timeout_s is not None else spec.get("request_timeout_s", default("request_timeout_s")))
    conn = conn_cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    prefix = (parts.path or "").rstrip("/")
    headers = {"Content-Type": "application/json", **(spec.get("headers") or {})}
    try:
        conn.request("POST", prefix + path, body=json.dumps(body).encode(), headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except ConnectionRefusedError:
        return f"first request to {url} failed: connection refused (is the server running on that port?)"
    except (socket.timeout, TimeoutError):
        return f"first request to {url} failed: no answer within {timeout:g} s (request_timeout_s)"
    except (OSError, http.client.HTTPException) as exc:
        return f"first request to {url} failed: {type(exc).__name__}: {exc}"
    finally:
        conn.close()
    if resp.status != 200:
        return f"first request to {url} failed: HTTP {resp.status}: {server_message(data) or resp.reason}"
    return None


def exit_verdict(summary: Mapping, max_error_pct: float | None) -> str | None:
    """None when the run may exit 0; else why not: no request succeeded, or the failed share of the
    measured requests exceeds ``max_error_pct`` (None: never judged)."""
    if max_error_pct is None:
        return None
    n_ok, n_err = int(summary.get("n_ok") or 0), int(summary.get("n_errors") or 0)
    if n_ok + n_err == 0:
        return None  # nothing was sent (a zero-length run): there is nothing to judge
    if n_ok == 0:
        return f"no request succeeded ({n_err} errors)"
    share = 100.0 * n_err / (n_ok + n_err)
    if share > max_error_pct:
        return f"{share:.1f} % of requests failed ({n_err} of {n_ok + n_err}; allowed {max_error_pct:g} %, --max-error-pct)"
    return None
