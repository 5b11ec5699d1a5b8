"""The load spec: strict validation of `load.json` into plain dicts with every default filled in.

An unknown key or a wrong type is a ``SpecError`` whose message is ONE line naming the field and
what was expected, e.g. ``load spec: pattern.concurrency: expected an integer >= 1, got 0``.
The resolved spec (defaults filled) is what the run uses and what the summary records.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable

from kvharness.errors import SpecError

# SPEC H8's mix: 60 % 200-500, 30 % 800-1500, 10 % 2500-3200 tokens.
H8_BUCKETS = [
    {"name": "short", "min_tokens": 200, "max_tokens": 500, "weight": 0.6},
    {"name": "medium", "min_tokens": 800, "max_tokens": 1500, "weight": 0.3},
    {"name": "long", "min_tokens": 2500, "max_tokens": 3200, "weight": 0.1},
]


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(path: str, expected: str, value: Any) -> None:
    raise SpecError(f"load spec: {path}: expected {expected}, got {_show(value)}")


# ---- field checkers: (path, value) -> normalized value --------------------------------------


Checker = Callable[[str, Any], Any]


def integer(minimum: int | None = None, nullable: bool = False) -> Checker:
    desc = "an integer" + (f" >= {minimum}" if minimum is not None else "") + (" or null" if nullable else "")

    def check(path: str, v: Any) -> Any:
        if v is None and nullable:
            return None
        if isinstance(v, float) and v.is_integer() and not isinstance(v, bool):
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool) or (minimum is not None and v < minimum):
            _fail(path, desc, v)
        return v

    return check


def number(minimum: float | None = None, exclusive: bool = False, maximum: float | None = None,
           nullable: bool = False) -> Checker:
    parts = ["a number"]
    if minimum is not None:
        parts.append(f"{'>' if exclusive else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    desc = " ".join(parts) + (" or null" if nullable else "")

    def check(path: str, v: Any) -> Any:
        if v is None and nullable:
            return None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
            _fail(path, desc, v)
        if minimum is not None and (v <= minimum if exclusive else v < minimum):
            _fail(path, desc, v)
        if maximum is not None and v > maximum:
            _fail(path, desc, v)
        return float(v)

    return check


def string(choices: tuple[str, ...] | None = None, nullable: bool = False) -> Checker:
    desc = ("one of " + ", ".join(repr(c) for c in choices)) if choices else "a string"
    desc += " or null" if nullable else ""

    def check(path: str, v: Any) -> Any:
        if v is None and nullable:
            return None
        if not isinstance(v, str) or (choices and v not in choices) or (not choices and not v):
            _fail(path, desc if choices else "a non-empty string", v)
        return v

    return check


def boolean() -> Checker:
    def check(path: str, v: Any) -> Any:
        if not isinstance(v, bool):
            _fail(path, "true or false", v)
        return v

    return check


def mapping(values: str = "any") -> Checker:
    def check(path: str, v: Any) -> Any:
        if not isinstance(v, dict):
            _fail(path, "an object", v)
        for k, item in v.items():
            if values == "scalar" and not (item is None or isinstance(item, (str, int, float, bool))):
                _fail(f"{path}.{k}", "a string, number, boolean or null", item)
            if values == "str" and not isinstance(item, str):
                _fail(f"{path}.{k}", "a string", item)
        return dict(v)

    return check


def string_list(nullable: bool = True) -> Checker:
    def check(path: str, v: Any) -> Any:
        if v is None and nullable:
            return None
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            _fail(path, "a non-empty list of strings" + (" or null" if nullable else ""), v)
        return list(v)

    return check


REQUIRED = object()


def _check_object(path: str, value: Any, fields: dict[str, tuple[Checker, Any]]) -> dict:
    where = path or "spec"
    if not isinstance(value, dict):
        _fail(where, "an object", value)
    out: dict = {}
    for key in value:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise SpecError(f"load spec: {_join(path, key)}: unknown key (expected one of: {known})")
    for key, (checker, default) in fields.items():
        if key in value:
            out[key] = checker(_join(path, key), value[key])
        elif default is REQUIRED:
            raise SpecError(f"load spec: {_join(path, key)}: required key is missing")
        else:
            out[key] = copy.deepcopy(default)
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ---- pattern ----------------------------------------------------------------------------------

_DIST = ("fixed", "exponential", "uniform")
#: closed loop: users started per second (100 us apart: a 256-user start takes 25.6 ms)
DEFAULT_SPAWN_RATE = 10_000.0

PATTERN_FIELDS: dict[str, dict[str, tuple[Checker, Any]]] = {
    "closed": {
        "concurrency": (integer(1), REQUIRED),
        "think_time_s": (number(0.0), 0.0),
        "think_dist": (string(_DIST), "fixed"),
        "spawn_rate": (number(0.0, exclusive=True, nullable=True), DEFAULT_SPAWN_RATE),
    },
    "bursty": {
        "concurrency": (integer(1), REQUIRED),
        "burst_size": (integer(1), REQUIRED),
        "pause_s": (number(0.0), REQUIRED),
        "burst_size_dist": (string(("fixed", "poisson", "uniform")), "fixed"),
        "pause_dist": (string(_DIST), "fixed"),
    },
    "constant": {"rate": (number(0.0, exclusive=True), REQUIRED), "max_in_flight": (integer(1, nullable=True), None)},
    "poisson": {"rate": (number(0.0, exclusive=True), REQUIRED), "max_in_flight": (integer(1, nullable=True), None)},
    "gamma": {
        "rate": (number(0.0, exclusive=True), REQUIRED),
        "cov": (number(0.0, exclusive=True), REQUIRED),
        "max_in_flight": (integer(1, nullable=True), None),
    },
    "ramp": {
        "start_rate": (number(0.0, exclusive=True), REQUIRED),
        "end_rate": (number(0.0, exclusive=True), REQUIRED),
        "ramp_s": (number(0.0, exclusive=True, nullable=True), None),
        "mode": (string(("linear", "steps")), "linear"),
        "steps": (integer(2), 5),
        "arrival": (string(("poisson", "constant")), "poisson"),
        "max_in_flight": (integer(1, nullable=True), None),
    },
    "trace": {
        "path": (string(), REQUIRED),
        "time_scale": (number(0.0, exclusive=True), 1.0),
        "start_s": (number(0.0), 0.0),
        "window_s": (number(0.0, exclusive=True, nullable=True), None),
        "max_in_flight": (integer(1, nullable=True), None),
    },
}


def _check_kinded(section: str, value: Any, tables: dict[str, dict]) -> dict:
    """An object whose ``kind`` picks the table of its other fields (a pattern, a workload)."""
    if not isinstance(value, dict):
        _fail(section, "an object", value)
    kind = value.get("kind", REQUIRED)
    if kind is REQUIRED:
        raise SpecError(f"load spec: {section}.kind: required key is missing")
    if kind not in tables:
        _fail(f"{section}.kind", "one of " + ", ".join(repr(k) for k in tables), kind)
    fields = dict(tables[kind])
    fields["kind"] = (string(tuple(tables)), REQUIRED)
    return _check_object(section, value, fields)


def check_pattern(value: Any) -> dict:
    return _check_kinded("pattern", value, PATTERN_FIELDS)


# ---- workload ---------------------------------------------------------------------------------

_NONCE = ("prefix", "per_user", "none")


def _check_buckets(path: str, v: Any) -> list[dict]:
    if not isinstance(v, list) or not v:
        _fail(path, "a non-empty list of buckets", v)
    out = []
    for i, b in enumerate(v):
        fields = {
            "name": (string(), REQUIRED),
            "min_tokens": (integer(1), REQUIRED),
            "max_tokens": (integer(1), REQUIRED),
            "weight": (number(0.0, exclusive=True), REQUIRED),
        }
        item = _check_object(f"{path}[{i}]", b, fields)
        if item["max_tokens"] < item["min_tokens"]:
            _fail(f"{path}[{i}].max_tokens", f"an integer >= min_tokens ({item['min_tokens']})", item["max_tokens"])
        out.append(item)
    return out


def _check_pressure(path: str, v: Any) -> Any:
    if v is None:
        return None
    out = _check_object(path, v, {
        "rate": (number(0.0, exclusive=True, nullable=True), None),
        "count": (integer(1, nullable=True), None),
        "context_tokens": (integer(1), 2048),
        "output_tokens": (integer(1), 1),
    })
    if (out["rate"] is None) == (out["count"] is None):
        raise SpecError(f"load spec: {path}: expected exactly one of 'rate' (Poisson requests/s) or 'count' "
                        "(that many requests spread over the idle gap, all finished before the resume)")
    return out


_COMMON_WORKLOAD = {
    "output_tokens": (integer(1), 32),
    "nonce": (string(_NONCE), "prefix"),
    "shared_prefix_ratio": (number(0.0, maximum=1.0), 0.0),
    "prefix_groups": (integer(1), 1),
    "scan_share": (number(0.0, maximum=1.0), 0.0),
    "scan_tokens": (integer(1, nullable=True), None),
}

WORKLOAD_FIELDS: dict[str, dict[str, tuple[Checker, Any]]] = {
    "fixed_context": {"context_tokens": (integer(1), REQUIRED), **_COMMON_WORKLOAD},
    "mixed_context": {"buckets": (_check_buckets, H8_BUCKETS), **_COMMON_WORKLOAD},
    "sessioned_chat": {
        "sessions": (integer(1), REQUIRED),
        "turns": (integer(1), 3),
        "first_turn_tokens": (integer(1), 1024),
        "first_turn_buckets": (lambda p, v: None if v is None else _check_buckets(p, v), None),
        "turn_tokens": (integer(1), 128),
        "output_tokens": (integer(1), 32),
        "idle_s": (number(0.0), 0.0),
        "resume_turns": (integer(0), 1),
        "pressure": (_check_pressure, None),
        "cold_resume": (boolean(), False),
        "nonce": (string(_NONCE), "prefix"),
    },
    "trace": {
        "block_tokens": (integer(1), 512),
        "trace_block_tokens": (integer(1, nullable=True), None),
        "output_tokens": (integer(1, nullable=True), None),
    },
}


def check_workload(value: Any) -> dict:
    return _check_kinded("workload", value, WORKLOAD_FIELDS)


def check_lora(path: str, v: Any) -> Any:
    if v is None:
        return None
    out = _check_object(path, v, {
        "adapters": (string_list(nullable=True), None),
        "count": (integer(1, nullable=True), None),
        "name_prefix": (string(), "lora-"),
        "policy": (string(("round_robin", "random", "hot_cold")), "round_robin"),
        "hot_ratio": (number(0.0, exclusive=True, maximum=1.0), 0.2),
        "hot_prob": (number(0.0, maximum=1.0), 0.8),
        "send_as": (string(("model", "adapter_id")), "model"),
    })
    if not out["adapters"] and not out["count"]:
        raise SpecError(f"load spec: {path}: expected 'adapters' (a list of names) or 'count' (an integer >= 1)")
    if not out["adapters"]:
        out["adapters"] = [f"{out['name_prefix']}{i}" for i in range(out["count"])]
    out["count"] = len(out["adapters"])
    return out


def _check_slo(path: str, v: Any) -> dict:
    return _check_object(path, v, {
        "ttft_ms": (number(0.0, exclusive=True, nullable=True), None),
        "tpot_ms": (number(0.0, exclusive=True, nullable=True), None),
        "e2e_ms": (number(0.0, exclusive=True, nullable=True), None),
    })


TOP_FIELDS: dict[str, tuple[Checker, Any]] = {
    "base_url": (string(), "http://127.0.0.1:8000"),
    "endpoint": (string(("completions", "chat")), "completions"),
    "model": (string(), REQUIRED),
    "stream": (boolean(), True),
    "ignore_eos": (boolean(), True),
    "pattern": (lambda p, v: check_pattern(v), REQUIRED),
    "workload": (lambda p, v: check_workload(v), REQUIRED),
    "lora": (check_lora, None),
    "duration_s": (number(0.0, exclusive=True, nullable=True), None),
    "max_requests": (integer(1, nullable=True), None),
    "min_ok_requests": (integer(1, nullable=True), None),
    "max_duration_s": (number(0.0, exclusive=True, nullable=True), None),
    "warmup_s": (number(0.0), 0.0),
    "cooldown_s": (number(0.0), 0.0),
    "seed": (integer(), 0),
    "request_timeout_s": (number(0.0, exclusive=True), 60.0),
    "max_errors": (integer(1, nullable=True), None),
    "max_consecutive_errors": (integer(1, nullable=True), None),
    "labels": (mapping("scalar"), {}),
    "slo": (_check_slo, {"ttft_ms": None, "tpot_ms": None, "e2e_ms": None}),
    "headers": (mapping("str"), {}),
    "extra_body": (mapping(), {}),
    "progress": (string(("auto", "on", "off")), "auto"),
    "transport": (string(("raw", "aiohttp")), "raw"),
    "workers": (integer(1), 1),
    "timestamps": (string(("loop", "kernel")), "kernel"),
    "tokenizer": (string(nullable=True), None),
}


#: the pattern of a load that names none (the workflow schema's default too)
DEFAULT_PATTERN = {"kind": "closed"}
#: patterns whose load is a number of users in flight (the others are open loop: a rate)
CLOSED_PATTERNS = ("closed", "bursty")


def default(field: str) -> Any:
    """The load generator's default for a top-level spec field: the one definition the workflow schema, the
    config checks and the cell runner read (``seed``, ``request_timeout_s``, ...)."""
    value = TOP_FIELDS[field][1]
    if value is REQUIRED:
        raise KeyError(f"load spec field {field!r} has no default")
    return value


def validate_spec(raw: Any) -> dict:
    """The resolved spec (defaults filled) or ``SpecError`` with one line naming the field."""
    spec = _check_object("", raw, TOP_FIELDS)
    if spec["duration_s"] is None and spec["max_requests"] is None and spec["pattern"]["kind"] != "trace" \
            and spec["workload"]["kind"] != "sessioned_chat":
        raise SpecError("load spec: duration_s: expected a number > 0 (or set max_requests); both are null")
    if spec["pattern"]["kind"] == "trace" and spec["workload"]["kind"] != "trace":
        _fail("workload.kind", "'trace' with a trace pattern", spec["workload"]["kind"])
    if spec["workload"]["kind"] == "trace" and spec["pattern"]["kind"] != "trace":
        _fail("pattern.kind", "'trace' with a trace workload", spec["pattern"]["kind"])
    if spec["tokenizer"]:
        from kvharness.loadgen.tokenizer import load_tokenizer
        load_tokenizer(spec["tokenizer"])  # a missing file, package or a bad file fails here, naming the key
    if spec["workload"]["kind"] == "sessioned_chat" and spec["pattern"]["kind"] != "closed":
        _fail("pattern.kind", "'closed' with a sessioned_chat workload (concurrency = sessions in flight)",
              spec["pattern"]["kind"])
    if spec["workload"]["kind"] == "sessioned_chat" and spec["endpoint"] != "chat":
        _fail("endpoint", "'chat' with a sessioned_chat workload", spec["endpoint"])
    if spec["workload"].get("nonce") == "per_user" and spec["pattern"]["kind"] not in ("closed", "bursty") \
            and spec["workload"]["kind"] != "sessioned_chat":
        _fail("workload.nonce", "'prefix' or 'none' with an open-loop pattern ('per_user' needs closed-loop users)",
              "per_user")
    if not spec["base_url"].startswith(("http://", "https://")):
        _fail("base_url", "an http:// or https:// URL", spec["base_url"])
    return spec


def load_spec_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        raise SpecError(f"load spec: {path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"load spec: {path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    return validate_spec(raw)
