"""The simulated stacks speak the OpenAI wire format: checked raw and with the official openai client."""

from __future__ import annotations

import json
import socket

import pytest

from kvharness.tokens import chat_prompt_text, count_tokens

from .conftest import FAST

openai = pytest.importorskip("openai")


def _events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"data: [DONE]\n\n")
    parts = raw.split(b"\n\n")
    assert parts[-1] == b""
    evs = parts[:-1]
    for e in evs:
        assert e.startswith(b"data: ")
        assert b"\n" not in e
    return [e[6:] for e in evs]


@pytest.mark.parametrize("mode", ["A", "B"])
def test_raw_stream_completions_and_usage(start_sim, mode):
    sim = start_sim("--mode", mode, *FAST, "--served-model-name", "m-test")
    prompt = "one two three four five six"
    body = json.dumps({"model": "m-test", "prompt": prompt, "max_tokens": 5, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    st, raw = sim.post("/v1/completions", body)
    assert st == 200
    evs = _events(raw)
    assert evs[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in evs[:-1]]
    content = [c for c in chunks if c["choices"]]
    assert len(content) == 5
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "text_completion" and c["model"] == "m-test" for c in chunks)
    assert all(c["usage"] is None for c in content)
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert usage["prompt_tokens"] == count_tokens(prompt) == 6
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == 11
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0


def test_chat_stream_role_chunk_then_tokens(start_sim):
    sim = start_sim("--mode", "A", *FAST)
    body = json.dumps({"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3,
                       "stream": True}).encode()
    st, raw = sim.post("/v1/chat/completions", body)
    assert st == 200
    chunks = [json.loads(e) for e in _events(raw)[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    toks = [c["choices"][0]["delta"]["content"] for c in chunks[1:]]
    assert len(toks) == 3 and all(t.strip() for t in toks)
    assert "usage" not in chunks[0]  # only present when include_usage was asked for


def test_non_streaming_both_endpoints(start_sim):
    sim = start_sim("--mode", "B", *FAST)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b c"}]
    st, raw = sim.post("/v1/chat/completions", json.dumps({"messages": msgs, "max_tokens": 4}).encode())
    assert st == 200
    obj = json.loads(raw)
    assert obj["object"] == "chat.completion"
    assert obj["choices"][0]["message"]["role"] == "assistant"
    assert len(obj["choices"][0]["message"]["content"].split()) == 4
    assert obj["usage"]["prompt_tokens"] == count_tokens(chat_prompt_text(msgs))
    st, raw = sim.post("/v1/completions", json.dumps({"prompt": "x y", "max_tokens": 2}).encode())
    obj = json.loads(raw)
    assert st == 200 and obj["object"] == "text_completion" and obj["usage"]["completion_tokens"] == 2


def test_openai_client_streams_completions_and_chat(start_sim):
    sim = start_sim("--mode", "B", *FAST, "--served-model-name", "llama-test")
    client = openai.OpenAI(base_url=sim.base + "/v1", api_key="none", max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == ["llama-test"]
    stream = client.completions.create(model="llama-test", prompt="alpha beta gamma", max_tokens=4, stream=True,
                                       stream_options={"include_usage": True})
    texts, usage = [], None
    for chunk in stream:
        if chunk.choices:
            texts.append(chunk.choices[0].text)
        if chunk.usage:
            usage = chunk.usage
    assert len(texts) == 4
    assert usage.prompt_tokens == 3 and usage.completion_tokens == 4
    stream = client.chat.completions.create(model="llama-test", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=3, stream=True, stream_options={"include_usage": True})
    deltas, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            deltas.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(deltas) == 3 and usage.completion_tokens == 3
    resp = client.chat.completions.create(model="llama-test", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert resp.usage.completion_tokens == 2 and resp.model == "llama-test"


def test_health_models_errors(start_sim):
    sim = start_sim("--mode", "A", *FAST, "--startup-time-s", "1.0", wait_ready=False)
    import time
    deadline = time.time() + 10
    seen_503 = False
    while time.time() < deadline:
        try:
            st, body = sim.get("/health", timeout=1)
        except OSError:
            time.sleep(0.05)
            continue
        if st == 503:
            seen_503 = True
        if st == 200:
            break
        time.sleep(0.05)
    assert seen_503 and st == 200
    h = json.loads(body)
    assert h["mode"] == "A" and h["speedup"] == 50 and "block_bytes_scale" in h
    st, _ = sim.post("/v1/completions", b"{not json")
    assert st == 400
    st, _ = sim.post("/v1/completions", json.dumps({"max_tokens": 2}).encode())
    assert st == 400
    st, _ = sim.get("/nope")
    assert st == 404
    # keep-alive: two requests on one connection
    s = socket.create_connection(("127.0.0.1", sim.port))
    req = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    s.sendall(req + req)
    data = b""
    while data.count(b"HTTP/1.1 200") < 2:
        chunk = s.recv(65536)
        assert chunk
        data += chunk
    s.close()


def test_refuses_non_loopback_host(start_sim):
    sim = start_sim("--mode", "A", "--host", "0.0.0.0", wait_ready=False)
    assert sim.proc.wait(20) == 2
    assert "--allow-remote" in sim.log()


def test_client_disconnect_mid_stream_frees_the_sequence(start_sim):
    sim = start_sim("--mode", "B", "--speedup", "2")
    body = json.dumps({"prompt": "a b c", "max_tokens": 200, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", sim.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    data = b""
    while b"data: {" not in data:
        chunk = s.recv(65536)
        assert chunk
        data += chunk
    s.close()
    import time
    deadline = time.time() + 5
    while time.time() < deadline:
        m = sim.metrics()
        if m["kvsim_running_requests"] == 0 and m['dynamo_frontend_disconnected_clients{model="llama-3.1-8b"}'] == 1:
            break
        time.sleep(0.05)
    assert m["kvsim_running_requests"] == 0
    assert m['kvsim_tier_blocks{tier="0"}'] == 0
    st, _ = sim.post("/v1/completions", json.dumps({"prompt": "x", "max_tokens": 1}).encode())
    assert st == 200
