"""Exact TTFT / TTFB / ITL / TPOT / E2E values on synthetic event timelines."""

import json

import pytest

from kvharness.loadgen.stream import StreamError, StreamTimer
from kvharness.stats import summarize_requests

MS = 1_000_000


def ev(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def text_ev(t):
    return ev({"choices": [{"index": 0, "text": t}]})


def chat_ev(**delta):
    return ev({"choices": [{"index": 0, "delta": delta}]})


USAGE = ev({"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 4,
                                      "prompt_tokens_details": {"cached_tokens": 64}}})


def test_completions_timeline_exact_values():
    t = StreamTimer()
    sched = 1_000 * MS
    t.first_byte_ns = sched + 5 * MS
    t.feed(text_ev("a"), sched + 50 * MS)
    t.feed(text_ev("b"), sched + 60 * MS)
    t.feed(text_ev("c"), sched + 75 * MS)
    t.feed(text_ev("d"), sched + 80 * MS)
    t.feed(USAGE + b"data: [DONE]\n\n", sched + 81 * MS)
    f = t.fields(sched)
    assert f["lat_ttft_ms"] == 50.0
    assert f["lat_ttfb_ms"] == 5.0
    assert f["itl_ms"] == [10.0, 15.0, 5.0]
    assert f["lat_e2e_ms"] == 81.0
    assert f["lat_tpot_ms"] == pytest.approx((81.0 - 50.0) / 3)
    assert (f["prompt_tokens"], f["output_tokens"], f["cached_tokens"]) == (100, 4, 64)
    assert t.done


def test_role_only_and_empty_events_do_not_count_for_ttft():
    t = StreamTimer()
    t.feed(chat_ev(role="assistant"), 10 * MS)  # role-only
    t.feed(chat_ev(content=""), 20 * MS)  # empty
    t.feed(ev({"choices": []}), 25 * MS)  # no choices
    t.feed(b": keep-alive\n\n", 26 * MS)  # comment
    t.feed(chat_ev(content="Hi"), 40 * MS)
    t.feed(chat_ev(content=" there"), 47 * MS)
    t.feed(b"data: [DONE]\n\n", 48 * MS)
    f = t.fields(0)
    assert f["first_byte_ns"] == 10 * MS
    assert f["lat_ttfb_ms"] == 10.0
    assert f["lat_ttft_ms"] == 40.0
    assert f["itl_ms"] == [7.0]
    assert f["output_tokens"] is None and f["lat_tpot_ms"] is None


@pytest.mark.parametrize("delta", [{"reasoning_content": "hmm"}, {"tool_calls": [{"index": 0, "id": "x"}]}])
def test_reasoning_and_tool_calls_carry_text(delta):
    t = StreamTimer()
    t.feed(chat_ev(role="assistant"), 1 * MS)
    t.feed(chat_ev(**delta), 3 * MS)
    assert t.fields(0)["lat_ttft_ms"] == 3.0


def test_events_split_across_chunks_and_crlf():
    t = StreamTimer()
    raw = text_ev("a").replace(b"\n", b"\r\n") + text_ev("b")
    t.feed(raw[:7], 1 * MS)
    t.feed(raw[7:15], 2 * MS)  # the first event completes only in a later chunk
    assert t.token_ns == []
    t.feed(raw[15:], 3 * MS)
    assert t.token_ns == [3 * MS, 3 * MS]
    assert t.fields(0)["itl_ms"] == [0.0]


def test_bad_json_and_error_event():
    with pytest.raises(StreamError) as e:
        StreamTimer().feed(b"data: {nope\n\n", 1)
    assert e.value.error_class == "parse"
    with pytest.raises(StreamError) as e:
        StreamTimer().feed(ev({"error": {"message": "boom"}}), 1)
    assert e.value.error_class == "server_error"


def test_goodput_exact_on_synthetic_records():
    base = {"rc": 0, "error_class": None, "itl_ms": [], "output_tokens": 10, "prompt_tokens": 100}
    recs = [
        {**base, "sched_ns": 0, "end_ns": 2_000 * MS, "lat_ttft_ms": 100.0, "lat_tpot_ms": 10.0, "lat_e2e_ms": 190.0},
        {**base, "sched_ns": 0, "end_ns": 1_000 * MS, "lat_ttft_ms": 300.0, "lat_tpot_ms": 10.0, "lat_e2e_ms": 390.0},
        {**base, "sched_ns": 0, "end_ns": 1_500 * MS, "lat_ttft_ms": 150.0, "lat_tpot_ms": 30.0, "lat_e2e_ms": 420.0},
        {**base, "sched_ns": 0, "end_ns": 1_000 * MS, "lat_ttft_ms": 50.0, "lat_tpot_ms": 5.0, "lat_e2e_ms": 95.0},
        {"rc": 500, "error_class": "http_500", "sched_ns": 0, "end_ns": 500 * MS},
    ]
    s = summarize_requests(recs, slo={"ttft_ms": 200.0, "tpot_ms": 20.0})
    assert s["duration_s"] == 2.0
    assert s["goodput_req_s"] == 1.0  # 2 good requests / 2 s
    assert s["good_fraction"] == 0.4  # errors count against it
    assert s["req_s"] == 2.0


@pytest.mark.parametrize("event, carries", [
    ({"choices": [{"index": 0, "text": "x"}]}, True),
    ({"choices": [{"index": 0, "text": ""}]}, False),
    ({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}, False),
    ({"choices": [{"index": 0, "delta": {"content": "a\"text\":\"b"}}]}, True),
    ({"choices": [{"index": 0, "delta": {"content": ""}}]}, False),
    ({"choices": [{"index": 0, "delta": {"content": None, "role": "assistant"}}]}, False),
    ({"choices": [{"index": 0, "delta": {"reasoning_content": "r"}}]}, True),
    ({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]}, True),
    ({"choices": [{"index": 0, "delta": {"tool_calls": []}}]}, False),
    ({"choices": [{"index": 0, "delta": {}, "logprobs": {"content": [{"token": "x"}]}}]}, False),
    ({"choices": [{"index": 0, "text": "", "logprobs": {"text_offset": [1], "tokens": ["\"text\":\"x"]}}]}, False),
])
@pytest.mark.parametrize("indent", [None, 1])
def test_fast_path_agrees_with_full_decode(event, carries, indent):
    t = StreamTimer()
    t.feed(text_ev("first"), 1)  # the first text event is always decoded in full
    body = json.dumps(event, indent=indent).replace("\n", " ").encode()
    t.feed(b"data: " + body + b"\n\n", 2)
    assert (t.token_ns == [1, 2]) is carries


MIXED = [text_ev("a"), chat_ev(role="assistant"), text_ev(""), b": keep-alive\n\n", text_ev("b\\n\"x\""),
         chat_ev(tool_calls=[{"index": 0, "function": {"name": "f"}}]), chat_ev(content=""),
         b'data: {"choices":[{"index":0,\ndata: "text":"m"}]}\n\n', chat_ev(reasoning_content="r"),
         b"event: ping\n\n", text_ev("c"), USAGE, b"data: [DONE]\n\n"]


def test_events_in_one_read_count_like_events_one_per_read():
    """The inlined per-event test of ``feed`` gives what one event per read gives (``_event``)."""
    one = StreamTimer()
    for i, e in enumerate(MIXED):
        one.feed(e, i * MS)
    together = StreamTimer()
    together.feed(MIXED[0], 0)  # the first text event is decoded in full either way
    for i in range(1, len(MIXED), 3):  # several events per read, some split across reads
        blob = b"".join(MIXED[i:i + 3])
        together.feed(blob[:7], i * MS)
        together.feed(blob[7:], i * MS)
    assert len(one.token_ns) == len(together.token_ns) == 6  # a, b, tool_calls, m, r, c
    assert one.n_events == together.n_events
    assert one.usage == together.usage and one.done and together.done


def test_crlf_events_in_one_read():
    t = StreamTimer()
    blob = (text_ev("a") + text_ev("b") + USAGE).replace(b"\n", b"\r\n")
    t.feed(blob[:20], 1 * MS)
    t.feed(blob[20:], 2 * MS)
    assert t.token_ns == [2 * MS, 2 * MS] and t.usage["completion_tokens"] == 4
