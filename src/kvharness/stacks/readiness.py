"""When a launched stack is ready to be measured.

An HTTP 200 on the health route is not enough: Dynamo's frontend answers ``/health`` with 200 as soon as its
own discovery has run, before any worker has registered a model, so a load started then meets
"model not found" while the worker is still loading. Ready therefore means, in this order:

1. the health route answers 200;
2. ``/v1/models`` (the stack's ``models_path``) lists the served model name;
3. every extra URL in the stack's ``ready_urls`` answers 200 (e.g. the Dynamo worker's own ``/health`` on
   its system port, which answers 503 until the engine is up when
   ``DYN_SYSTEM_STARTING_HEALTH_STATUS=notready``).

Each step is polled until the stack's ``startup_timeout_s`` runs out; what was seen last is reported.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class ReadyState:
    """What the readiness wait saw: one entry per step, in the order they became true."""

    steps: list[dict] = field(default_factory=list)
    last: str = "no answer yet"
    step: str = "health"

    def done(self, what: str, url: str, t: float) -> None:
        self.steps.append({"step": what, "url": url, "after_s": round(t, 3)})


def listed_models(body: str) -> list[str]:
    """Model ids of an OpenAI ``/v1/models`` answer (``{"data": [{"id": ...}, ...]}``); [] when malformed."""
    try:
        doc = json.loads(body)
    except (ValueError, TypeError):
        return []
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        return []
    return [str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id") is not None]


def wait_ready(client, health_url: str | None, models_url: str | None, model: str | None,
               ready_urls: dict[str, str], deadline: float, poll_s: float,
               check_alive: Callable[[], None], t0: float,
               on_first_answer: Callable[[], None] | None = None) -> ReadyState:
    """Poll until every readiness step holds; raises TimeoutError (message = what was missing) at ``deadline``.

    ``check_alive`` raises when a stack process died (the caller's error names it and its log);
    ``on_first_answer`` runs once the first step holds (the launcher proves there that whoever answered
    is the stack it started, before waiting any longer on someone else's server)."""
    from kvharness.stacks.http import HTTPError

    state = ReadyState()
    steps: list[tuple[str, str, str]] = []
    if health_url:
        steps.append(("health", health_url, "status"))
    if models_url and model:
        steps.append(("model listed", models_url, "model"))
    for name, url in ready_urls.items():
        steps.append((f"{name} ready", url, "status"))
    for what, url, kind in steps:
        state.step = what
        state.last = "no answer yet"
        while True:
            check_alive()
            try:
                resp = client.get(url)
                if resp.status_code == 200 and kind == "status":
                    break
                if resp.status_code == 200 and kind == "model":
                    ids = listed_models(resp.text)
                    if model in ids:
                        break
                    state.last = f"{model!r} not listed yet (listed: {ids or 'none'})"
                else:
                    state.last = f"HTTP {resp.status_code}"
            except HTTPError as exc:
                state.last = type(exc).__name__
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {url} (last: {state.last})")
            time.sleep(poll_s)
        state.done(what, url, time.monotonic() - t0)
        if on_first_answer is not None:
            on_first_answer()
            on_first_answer = None
    return state
