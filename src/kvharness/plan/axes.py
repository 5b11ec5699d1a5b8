"""The sweep axes: every key a hypothesis may sweep, declared once.

An axis knows its abbreviation in cell ids (``sim-B_c16_ctx2048``), the JSON schema of one value (the
workflow schema's ``sweep`` and ``points`` sections are generated from this table), and how a value
changes a cell spec. ``config.expand_cells`` applies the axes of each point in declaration order.

A sweep is the Cartesian product of its axes; ``points`` is an explicit list of paired values
(``points: [{tier0: 1GiB, tier1: 5GiB}, ...]``), crossed with the sweep; ``reps: N`` adds the ``rep``
axis (each repetition its own launch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from kvharness.defaults import SIM
from kvharness.errors import AxisError
from kvharness.loadgen.spec import DEFAULT_PATTERN, default as load_default
from kvharness.plan.pressure import apply_pressure_bytes
from kvharness.units import parse_bytes


@dataclass(frozen=True)
class Axis:
    key: str
    abbrev: str
    description: str
    schema: dict
    apply: Callable[[dict, Any, dict], None]  # (cell spec, value, workflow config) -> None, edits the spec

    def label(self, value: Any) -> str:
        text = str(value).replace(".", "p").replace("/", "-")
        return f"{self.abbrev}{text}"


def _set_load(key: str) -> Callable[[dict, Any, dict], None]:
    def apply(spec: dict, value: Any, cfg: dict) -> None:
        spec["load"][key] = value
    return apply


def _set_pattern(key: str, kinds: tuple[str, ...]) -> Callable[[dict, Any, dict], None]:
    def apply(spec: dict, value: Any, cfg: dict) -> None:
        kind = spec["load"]["pattern"].get("kind", DEFAULT_PATTERN["kind"])
        if kind not in kinds:
            raise AxisError(f"needs an open-loop pattern ({', '.join(kinds)}), the load's pattern is {kind!r}")
        spec["load"]["pattern"][key] = value
    return apply


def _set_workload(key: str, kinds: tuple[str, ...] | None = None) -> Callable[[dict, Any, dict], None]:
    def apply(spec: dict, value: Any, cfg: dict) -> None:
        kind = spec["load"]["workload"]["kind"]
        if kinds and kind not in kinds:
            raise AxisError(f"applies to a {' or '.join(kinds)} workload, the load's workload is {kind!r}")
        spec["load"]["workload"][key] = value
    return apply


def _set_profile(spec: dict, value: Any, cfg: dict) -> None:
    if value not in cfg["profiles"]:
        raise AxisError(f"unknown profile {value!r} (defined: {', '.join(cfg['profiles'])})")
    spec["profile"] = value
    spec["_tier_overrides"] = {}


def _set_tier(name: str) -> Callable[[dict, Any, dict], None]:
    def apply(spec: dict, value: Any, cfg: dict) -> None:
        try:
            spec.setdefault("_tier_overrides", {})[name] = parse_bytes(value)
        except ValueError as exc:
            raise AxisError(str(exc)) from None
    return apply


def _set_tier_total(spec: dict, value: Any, cfg: dict) -> None:
    """T0 + T1 = value, split at the profile's T0:T1 ratio; T2 unchanged."""
    try:
        total = parse_bytes(value)
    except ValueError as exc:
        raise AxisError(str(exc)) from None
    prof = cfg["profiles"][spec["profile"]]
    t0, t1 = parse_bytes(prof["tier0"]), parse_bytes(prof["tier1"])
    share = t0 / (t0 + t1)
    over = spec.setdefault("_tier_overrides", {})
    over["tier0"] = int(total * share)
    over["tier1"] = total - over["tier0"]


def _set_engine(key: str) -> Callable[[dict, Any, dict], None]:
    def apply(spec: dict, value: Any, cfg: dict) -> None:
        spec["engine"][key] = value
    return apply


def _set_lora(key: str) -> Callable[[dict, Any, dict], None]:
    def apply(spec: dict, value: Any, cfg: dict) -> None:
        lora = spec["load"].get("lora") or {}
        lora = dict(lora)
        lora[key] = value
        if key == "count":
            lora.pop("adapters", None)
        spec["load"]["lora"] = lora
    return apply


def _set_background_io(spec: dict, value: Any, cfg: dict) -> None:
    spec["background_io"] = {**(spec.get("background_io") or {}), "enabled": value == "on"}


def _set_telemetry(spec: dict, value: Any, cfg: dict) -> None:
    spec["telemetry"]["interval_ms"] = value


def _set_rep(spec: dict, value: Any, cfg: dict) -> None:
    """Repetition r: its own launch; the load and simulator seeds move by r so the runs are independent."""
    spec["rep"] = value
    spec["load"]["seed"] = int(spec["load"].get("seed", load_default("seed"))) + value
    spec["sim"]["seed"] = int(spec["sim"].get("seed", SIM["seed"])) + value


def _set_variant(spec: dict, value: Any, cfg: dict) -> None:
    """A named variant of the load (``load.variants.<name>``: pattern, workload, endpoint, slo, ...)
    replaces those keys of the hypothesis's load; the variants themselves never reach a cell."""
    variants = spec["load"].pop("variants", None) or {}
    if value not in variants:
        raise AxisError(f"unknown load variant {value!r} (load.variants defines: {', '.join(variants) or 'none'})")
    spec["load"].update(json.loads(json.dumps(variants[value])))


def _set_context(spec: dict, value: Any, cfg: dict) -> None:
    key = "first_turn_tokens" if spec["load"]["workload"]["kind"] == "sessioned_chat" else "context_tokens"
    _set_workload(key, ("fixed_context", "sessioned_chat"))(spec, value, cfg)


def _set_pressure_bytes(spec: dict, value: Any, cfg: dict) -> None:
    apply_pressure_bytes(spec, value, cfg)


def _set_resume(spec: dict, value: Any, cfg: dict) -> None:
    _set_workload("cold_resume", ("sessioned_chat",))(spec, value == "cold", cfg)


def _set_sim_speedup(spec: dict, value: Any, cfg: dict) -> None:
    spec["sim"]["speedup"] = value


_INT = {"type": "integer", "minimum": 1}
#: concurrency values read from H0's U_work: the cell's own stack, or the lower / higher of the hypothesis's stacks
UWORK_RULES = ("uwork", "uwork_min", "uwork_max")
_BYTES = {"type": ["string", "integer"], "description": "a byte size such as 8GiB or an integer"}
_OPEN = ("constant", "poisson", "gamma")

AXES: dict[str, Axis] = {a.key: a for a in [
    Axis("variant", "wl", "a named load variant of the hypothesis (load.variants: workload, pattern, ...)",
         {"type": "string"}, _set_variant),
    Axis("concurrency", "c", "users in flight (closed and bursty loads); uwork, uwork_min, uwork_max read H0's U_work",
         {"oneOf": [_INT, {"type": "string", "enum": list(UWORK_RULES)}]}, _set_load("concurrency")),
    Axis("rate", "r", "open-loop arrival rate in requests/s (constant, poisson, gamma patterns)",
         {"type": "number", "exclusiveMinimum": 0}, _set_pattern("rate", _OPEN)),
    Axis("context_tokens", "ctx", "prompt length of a fixed_context workload (first turn of a sessioned_chat)", _INT,
         _set_context),
    Axis("prefix_groups", "pg", "distinct reusable prompts of a fixed/mixed workload (the working set)", _INT,
         _set_workload("prefix_groups", ("fixed_context", "mixed_context"))),
    Axis("profile", "prof", "tier profile (comfy, spill, stress, ...)", {"type": "string"}, _set_profile),
    Axis("tier0", "t0", "device KV pool, overriding the profile", _BYTES, _set_tier("tier0")),
    Axis("tier1", "t1", "host KV tier, overriding the profile", _BYTES, _set_tier("tier1")),
    Axis("tier2", "t2", "disk KV tier, overriding the profile", _BYTES, _set_tier("tier2")),
    Axis("tier_total", "tt", "T0 + T1 at the profile's T0:T1 ratio", _BYTES, _set_tier_total),
    Axis("eviction_policy", "ev", "tier eviction policy", {"type": "string", "enum": ["lru", "lfu", "fifo"]},
         _set_engine("eviction_policy")),
    Axis("scan_share", "scan", "share of one-off scan requests mixed into a fixed/mixed workload's hot set",
         {"type": "number", "minimum": 0, "maximum": 1}, _set_workload("scan_share", ("fixed_context", "mixed_context"))),
    Axis("lora_adapters", "lora", "number of distinct LoRA adapters the load uses", _INT, _set_lora("count")),
    Axis("lora_churn", "churn", "adapter choice per request",
         {"type": "string", "enum": ["random", "round_robin", "hot_cold"]}, _set_lora("policy")),
    Axis("background_io", "bio", "background fio noise on the tier-2 device during the load",
         {"type": "string", "enum": ["off", "on"]}, _set_background_io),
    Axis("sessions", "sess", "sessions of a sessioned_chat workload", _INT,
         _set_workload("sessions", ("sessioned_chat",))),
    Axis("idle_gap_s", "idle", "idle gap before sessions resume (sessioned_chat)",
         {"type": "number", "minimum": 0}, _set_workload("idle_s", ("sessioned_chat",))),
    Axis("pressure_bytes", "press", "eviction pressure between build and resume, in KV bytes (sessioned_chat)",
         _BYTES, _set_pressure_bytes),
    Axis("telemetry_interval_ms", "tel", "collector cadence", {"type": "integer", "minimum": 10}, _set_telemetry),
    Axis("resume", "res", "how sessions resume (sessioned_chat): shared history, or cold (same lengths, new words)",
         {"type": "string", "enum": ["shared", "cold"]}, _set_resume),
    Axis("sim_speedup", "sp", "simulator speedup of a sim stack (modelled time / S; 1 = real time)",
         {"type": "number", "exclusiveMinimum": 0}, _set_sim_speedup),
    Axis("rep", "rep", "repetition index (each its own launch); usually set with `reps: N`",
         {"type": "integer", "minimum": 0}, _set_rep),
]}


def axis(key: str) -> Axis:
    return AXES[key]


def sweep_schema() -> dict:
    """JSON schema of a hypothesis's `sweep` section: one list-valued property per axis."""
    return {
        "description": "swept values; the Cartesian product of all axes is one cell per stack and point",
        "type": "object", "additionalProperties": False, "default": {},
        "properties": {a.key: {"description": a.description, "type": "array", "minItems": 1, "items": a.schema}
                       for a in AXES.values()},
    }


def points_schema() -> dict:
    """JSON schema of `points`: explicit paired values, each point an object of axis values."""
    return {
        "description": "explicit points of paired axis values (crossed with `sweep`), e.g. [{tier0: 1GiB, tier1: 5GiB}]",
        "type": "array", "minItems": 1,
        "items": {"type": "object", "minProperties": 1, "additionalProperties": False,
                  "properties": {a.key: {**a.schema, "description": a.description} for a in AXES.values()}},
    }
