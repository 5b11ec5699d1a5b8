"""Server-sent-event parsing and per-request timing, free of any I/O.

``StreamTimer.feed(chunk, t_ns)`` takes body bytes as they arrive with the monotonic time they were
read; ``StreamTimer.fields(sched_ns)`` turns the event timeline into the latency fields of a
``metrics.jsonl`` record. Tests drive it with synthetic timelines and exact expected values.

The first text event is decoded in full; later events without ``usage``/``error`` are classified by a
regular expression on the raw bytes (a non-empty string value of ``text``/``content``/
``reasoning_content`` or a non-empty ``tool_calls`` list) — the same answer at a third of the CPU.

An event *carries generated text* when one of its choices has a non-empty ``text`` (completions) or
a ``delta`` with non-empty ``content``, ``reasoning_content`` or ``tool_calls`` (chat). A role-only
or empty event does not count for TTFT or ITL.
"""

from __future__ import annotations

import json
import json.scanner
import re
from typing import Any

from kvharness.stats import tpot_ms

_scan_once = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner, minus json.loads' wrappers


def _loads(data: bytes):
    text = data.decode("utf-8")
    if text[:1].isspace():
        text = text.lstrip()
    obj, end = _scan_once(text, 0)
    if end != len(text) and text[end:].strip():
        raise ValueError("extra data after the JSON value")
    return obj


_HAS_TEXT = re.compile(rb'"(?:text|content|reasoning_content)"\s*:\s*"(?!")|"tool_calls"\s*:\s*\[\s*\{').search


def choice_has_text(choices: Any) -> bool:
    if not choices:
        return False
    for ch in choices:
        if not isinstance(ch, dict):
            continue
        if ch.get("text"):
            return True
        delta = ch.get("delta")
        if delta and isinstance(delta, dict) and (
            delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls")
        ):
            return True
        msg = ch.get("message")  # non-streaming chat body
        if msg and isinstance(msg, dict) and (msg.get("content") or msg.get("tool_calls")):
            return True
    return False


def choice_text(choices: Any) -> str:
    parts = []
    for ch in choices or ():
        if not isinstance(ch, dict):
            continue
        if ch.get("text"):
            parts.append(ch["text"])
        delta = ch.get("delta") or ch.get("message")
        if isinstance(delta, dict) and delta.get("content"):
            parts.append(delta["content"])
    return "".join(parts)


class StreamError(Exception):
    """The body could not be understood (``parse``) or carried an error object (``server_error``)."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


class StreamTimer:
    """Accumulates SSE events of one streamed response and their arrival times."""

    __slots__ = ("_buf", "first_byte_ns", "token_ns", "last_event_ns", "done", "usage", "keep_text",
                 "text_parts", "n_events")

    def __init__(self, keep_text: bool = False):
        self._buf = b""
        self.first_byte_ns: int | None = None
        self.token_ns: list[int] = []
        self.last_event_ns: int | None = None
        self.done = False
        self.usage: dict | None = None
        self.keep_text = keep_text
        self.text_parts: list[str] = []
        self.n_events = 0

    def feed(self, chunk: bytes, t_ns: int) -> None:
        if not chunk:
            return
        if self.first_byte_ns is None:
            self.first_byte_ns = t_ns
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return
        self._buf = buf[end + 2:]
        token_ns = self.token_ns
        has_text = _HAS_TEXT
        for raw in buf[:end].split(b"\n\n"):
            # the common later event, inlined: one `data:` line holding an object without usage/error
            # (the same test as in _event, without a call per event)
            if (raw[:7] == b"data: {" and raw[-1:] == b"}" and token_ns and not self.keep_text
                    and b"\n" not in raw and b'"usage"' not in raw and b'"error"' not in raw):
                self.n_events += 1
                self.last_event_ns = t_ns
                if has_text(raw, 6) is not None:
                    token_ns.append(t_ns)
                continue
            self._event(raw, t_ns)

    def _event(self, raw: bytes, t_ns: int) -> None:
        if raw[:6] == b"data: " and b"\n" not in raw:  # the usual one-line event
            data = raw[6:]
        else:
            data = None
            for line in raw.split(b"\n"):
                if line.startswith(b"data:"):
                    piece = line[5:]
                    if piece[:1] == b" ":
                        piece = piece[1:]
                    data = piece if data is None else data + b"\n" + piece
            if data is None:  # comment / keep-alive / other field
                return
        self.n_events += 1
        self.last_event_ns = t_ns
        if data == b"[DONE]":
            self.done = True
            return
        if (self.token_ns and not self.keep_text and data[:1] == b"{" and data[-1:] == b"}"
                and b'"usage"' not in data and b'"error"' not in data):
            # Fast path once the stream has shown well-formed text events: no JSON decode. An
            # unescaped `"text":"x` can only be a key/value (quotes inside strings are escaped).
            if _HAS_TEXT(data) is not None:
                self.token_ns.append(t_ns)
            return
        try:
            obj = _loads(data)
        except (ValueError, StopIteration, UnicodeDecodeError):
            raise StreamError("parse", f"invalid JSON in SSE event: {data[:80]!r}") from None
        if not isinstance(obj, dict):
            raise StreamError("parse", f"SSE event is not an object: {data[:80]!r}")
        if "error" in obj and not obj.get("choices"):
            err = obj["error"]
            raise StreamError("server_error", str(err.get("message") if isinstance(err, dict) else err)[:200])
        choices = obj.get("choices")
        if choices and choice_has_text(choices):
            self.token_ns.append(t_ns)
            if self.keep_text:
                self.text_parts.append(choice_text(choices))
        usage = obj.get("usage")
        if usage:
            self.usage = usage

    def feed_body(self, body: bytes, t_first_ns: int, t_end_ns: int) -> None:
        """A non-streaming response: the whole JSON body; TTFT = TTFB = E2E."""
        self.first_byte_ns = t_first_ns
        self.last_event_ns = t_end_ns
        try:
            obj = _loads(body)
        except (ValueError, StopIteration, UnicodeDecodeError):
            raise StreamError("parse", f"invalid JSON body: {body[:80]!r}") from None
        if not isinstance(obj, dict):
            raise StreamError("parse", "response body is not an object")
        if "error" in obj and not obj.get("choices"):
            raise StreamError("server_error", str(obj["error"])[:200])
        if choice_has_text(obj.get("choices")):
            self.token_ns.append(t_end_ns)
            if self.keep_text:
                self.text_parts.append(choice_text(obj.get("choices")))
        self.usage = obj.get("usage") or None
        self.done = True

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def token_counts(self) -> tuple[int | None, int | None, int | None]:
        """(prompt_tokens, output_tokens, cached_tokens) from ``usage``; None where absent."""
        u = self.usage
        if not u:
            return None, None, None
        details = u.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return u.get("prompt_tokens"), u.get("completion_tokens"), cached

    def fields(self, sched_ns: int) -> dict:
        """Latency fields (ms) measured from the scheduled time ``sched_ns``."""
        tok = self.token_ns
        first_token_ns = tok[0] if tok else None
        end_ns = self.last_event_ns
        ttft = (first_token_ns - sched_ns) / 1e6 if first_token_ns is not None else None
        e2e = (end_ns - sched_ns) / 1e6 if end_ns is not None else None
        prompt, output, cached = self.token_counts()
        return {
            "first_byte_ns": self.first_byte_ns,
            "first_token_ns": first_token_ns,
            "end_ns": end_ns,
            "lat_ttft_ms": ttft,
            "lat_ttfb_ms": (self.first_byte_ns - sched_ns) / 1e6 if self.first_byte_ns is not None else None,
            "lat_e2e_ms": e2e,
            "lat_tpot_ms": tpot_ms(e2e, ttft, output),
            "itl_ms": [(tok[i] - tok[i - 1]) / 1e6 for i in range(1, len(tok))],
            "prompt_tokens": prompt,
            "output_tokens": output,
            "cached_tokens": cached,
            "n_token_events": len(tok),
        }
