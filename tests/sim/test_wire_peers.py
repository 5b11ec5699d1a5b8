"""What the peers' clients (vLLM bench, AIPerf, GuideLLM, aiohttp) rely on: HEAD without a body, 404 for an
unknown model, and ``n`` / ``stream_options.continuous_usage_stats`` honoured or refused, never ignored."""

from __future__ import annotations

import http.client
import json

import pytest

from kvharness.sim.exporters import TTFT_BUCKETS, log_buckets

from .conftest import FAST


def _post(sim, body: dict, path: str = "/v1/completions"):
    st, raw = sim.post(path, json.dumps(body).encode())
    return st, raw


def test_head_then_get_on_one_keep_alive_connection_both_ports(start_sim):
    sim = start_sim("--mode", "B", *FAST, "--served-model-name", "m")
    for port, paths in ((sim.port, ("/metrics", "/health", "/v1/models")), (sim.metrics_port, ("/metrics",))):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            for path in paths:
                conn.request("HEAD", path)
                head = conn.getresponse()
                assert head.status == 200, (port, path)
                assert head.read() == b""
                assert int(head.getheader("Content-Length")) > 0
                assert head.getheader("Connection") == "keep-alive"
                # a stray body after the HEAD answer would be read here as the status line: BadStatusLine
                conn.request("GET", path)
                got = conn.getresponse()
                body = got.read()
                assert got.status == 200 and len(body) > 0, (port, path)
                if path == "/v1/models":
                    assert int(head.getheader("Content-Length")) == len(body)
                    assert json.loads(body)["data"][0]["id"] == "m"
                elif path == "/health":
                    assert json.loads(body)["status"] == "ready"
                else:
                    assert b"# TYPE" in body
            conn.request("HEAD", "/nope")  # an error answer to HEAD has no body either
            miss = conn.getresponse()
            assert miss.status == 404 and miss.read() == b""
            conn.request("GET", "/health" if port == sim.port else "/metrics")
            assert conn.getresponse().status == 200
        finally:
            conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    conn.request("HEAD", "/v1/completions")  # POST-only route: 405, Allow, no body
    r = conn.getresponse()
    assert r.status == 405 and r.getheader("Allow") == "POST" and r.read() == b""
    conn.close()


def test_unknown_model_n_and_stream_options(start_sim):
    sim = start_sim("--mode", "B", *FAST, "--served-model-name", "m")
    st, raw = _post(sim, {"model": "not-m", "prompt": "a b c", "max_tokens": 2})
    err = json.loads(raw)["error"]
    assert st == 404 and err["type"] == "invalid_request_error" and "not-m" in err["message"]
    assert err["code"] == "model_not_found" and err["param"] == "model"
    st, raw = _post(sim, {"model": "not-m", "messages": [{"role": "user", "content": "hi"}]}, "/v1/chat/completions")
    assert st == 404 and "LoRA adapters are not enabled" in json.loads(raw)["error"]["message"]
    assert _post(sim, {"model": "m", "prompt": "a b c", "max_tokens": 2})[0] == 200
    assert _post(sim, {"prompt": "a b c", "max_tokens": 2})[0] == 200  # no model: the served one
    assert _post(sim, {"model": "m", "prompt": "a b", "max_tokens": 2, "n": 1})[0] == 200
    st, raw = _post(sim, {"model": "m", "prompt": "a b", "max_tokens": 2, "n": 3})
    assert st == 400 and "n=3 is not supported" in json.loads(raw)["error"]["message"]
    st, raw = _post(sim, {"model": "m", "prompt": "a b", "stream": True,
                          "stream_options": {"continuous_usage_stats": True}})
    assert st == 400 and "include_usage" in json.loads(raw)["error"]["message"]
    st, raw = _post(sim, {"model": "m", "prompt": "a b", "stream_options": {"include_usage": True}})
    assert st == 400 and "stream" in json.loads(raw)["error"]["message"]
    m = sim.metrics()
    assert m['dynamo_frontend_requests_total{model="m",endpoint="completions",request_type="unary",status="error"}'] >= 3


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_continuous_usage_stats_in_every_chunk(start_sim, path):
    sim = start_sim("--mode", "A", *FAST, "--served-model-name", "m")
    body = {"model": "m", "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    body.update({"messages": [{"role": "user", "content": "a b c"}]} if "chat" in path else {"prompt": "a b c"})
    st, raw = _post(sim, body, path)
    assert st == 200
    events = [json.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]
    token_events = [e for e in events if e["choices"] and (e["choices"][0].get("text")
                                                           or e["choices"][0].get("delta", {}).get("content"))]
    assert [e["usage"]["completion_tokens"] for e in token_events] == [1, 2, 3, 4]
    assert all(e["usage"]["prompt_tokens"] == token_events[0]["usage"]["prompt_tokens"] > 0 for e in token_events)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 4  # the final usage chunk


def test_adapter_name_is_a_model_only_with_adapters(start_sim):
    sim = start_sim("--mode", "B", *FAST, "--served-model-name", "m", "--max-loras", "2", "--lora-adapter-bytes", "1MiB")
    st, raw = _post(sim, {"model": "ad-1", "prompt": "a b", "max_tokens": 1})
    assert st == 200 and json.loads(raw)["model"] == "ad-1"
    st, raw = _post(sim, {"model": "../x", "prompt": "a b", "max_tokens": 1})  # not a valid adapter name
    assert st == 404 and json.loads(raw)["error"]["type"] == "invalid_request_error"


def test_ttft_buckets_hold_every_bound_of_the_real_frontend():
    real = log_buckets(0.001, 480.0, 18)  # Dynamo's DYN_METRICS_TTFT_{MIN,MAX,COUNT} defaults
    assert real[:8] == (0.0, 0.0022, 0.0047, 0.01, 0.022, 0.047, 0.1, 0.22) and real[-1] == 480.0
    assert set(real) <= set(TTFT_BUCKETS)
    inner = [b for b in TTFT_BUCKETS if 0.01 <= b <= 10.0]
    assert max(hi / lo for lo, hi in zip(inner, inner[1:])) <= 1.21  # about 15 % steps (2 significant figures: 0.010 -> 0.012)
