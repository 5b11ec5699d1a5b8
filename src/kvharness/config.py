"""Workflow configuration: schema validation, stack configs, and expansion into cells.

Everything here is plain data (dicts of builtins) so Snakemake can fingerprint it as rule params.
Every error is a one-line :class:`ConfigError` naming the key and what was expected.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path
from typing import Any

import yaml

from kvharness.units import parse_bytes

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"
SCHEMA_PATH = CONFIG_DIR / "config.schema.yaml"
STACK_DIR = CONFIG_DIR / "stacks"

STACK_KINDS = ("sim", "trtllm", "dynamo", "vllm", "sglang", "external")
STACK_KEYS = {
    "description", "kind", "role", "tiered", "port", "metrics_port", "command", "pre_commands", "env",
    "health_path", "metrics", "startup_timeout_s", "engine_yaml",
}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: patterns whose load is a number of users in flight (the others are open loop: a rate)
CLOSED_PATTERNS = ("closed", "bursty")


class ConfigError(ValueError):
    """A configuration problem, phrased as one line: where, and what was expected."""


# --------------------------------------------------------------------------- schema


def load_schema() -> dict:
    """configs/config.schema.yaml, with the parts that have one owner elsewhere filled in: the ``sweep`` and
    ``points`` sections from the axis registry, engine and simulator defaults from :mod:`kvharness.defaults`."""
    from kvharness import defaults
    from kvharness.analysis.axes import points_schema, sweep_schema

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    hyp = schema["$defs"]["hypothesis"]["properties"]
    hyp["sweep"] = sweep_schema()
    hyp["points"] = points_schema()
    for section, values in (("engine", defaults.ENGINE), ("sim", defaults.SIM)):
        props = schema["properties"][section]["properties"]
        for key, value in values.items():
            props[key]["default"] = value
    return schema


def _path_str(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _describe_error(err) -> str:
    where = _path_str(err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = ", ".join(sorted(err.schema.get("properties", {}))) or "none"
        key = f"{where}.{extra[0]}" if err.absolute_path else (extra[0] if extra else where)
        return f"unknown key '{key}' (allowed here: {allowed})"
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return f"{where}: missing required key '{missing}'"
    if err.validator == "propertyNames" or "propertyNames" in err.schema_path:
        return f"{where}: invalid name {err.instance!r} (expected a name matching {err.schema.get('pattern', '?')})"
    expected = err.schema.get("description") or err.message
    detail = err.message
    return f"{where}: {detail} (expected {expected})" if expected != detail else f"{where}: {detail}"


def _fill_defaults(instance: Any, schema: dict, root: dict) -> None:
    if "$ref" in schema:
        ref = schema["$ref"]
        node = root
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        resolved = sub
        if "$ref" in sub:
            node = root
            for part in sub["$ref"].lstrip("#/").split("/"):
                node = node[part]
            resolved = {**node, **sub}
        if key not in instance and "default" in resolved:
            instance[key] = copy.deepcopy(resolved["default"])
        if key in instance:
            _fill_defaults(instance[key], resolved, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(value, extra, root)


def validate_config(config: dict) -> dict:
    """Validate against configs/config.schema.yaml, fill defaults, and run semantic checks.

    Returns a new, normalized dict; raises ConfigError with one line on the first problem.
    """
    import jsonschema

    if not isinstance(config, dict) or not config:
        raise ConfigError("config: expected a mapping with stacks, profiles and hypotheses (is the config file empty?)")
    schema = load_schema()
    cfg = copy.deepcopy(config)
    validator = jsonschema.Draft202012Validator(schema)
    err = jsonschema.exceptions.best_match(validator.iter_errors(cfg))
    if err is not None:
        raise ConfigError(f"config error: {_describe_error(err)}")
    _fill_defaults(cfg, schema, schema)
    _check_semantics(cfg)
    for hyp in cfg["hypotheses"]:
        expand_cells(cfg, hyp)  # every cell's load is checked by the load generator's own rules
    return cfg


def _check_semantics(cfg: dict) -> None:
    if cfg["host"] not in LOOPBACK and not cfg["allow_remote_bind"]:
        raise ConfigError(
            f"config error: host: {cfg['host']!r} is not a loopback address; set allow_remote_bind: true to expose servers"
        )
    for name, prof in cfg["profiles"].items():
        for tier in ("tier0", "tier1", "tier2"):
            try:
                parse_bytes(prof[tier], f"profiles.{name}.{tier}")
            except ValueError as exc:
                raise ConfigError(f"config error: {exc}") from None
        if parse_bytes(prof["tier0"]) == 0:
            raise ConfigError(f"config error: profiles.{name}.tier0: expected a device KV pool > 0 bytes")
    for role, stack_name in cfg["stacks"].items():
        load_stack(stack_name)  # raises ConfigError naming the file
    for hyp, h in cfg["hypotheses"].items():
        where = f"hypotheses.{hyp}"
        for role in h["stacks"]:
            if role not in cfg["stacks"]:
                raise ConfigError(
                    f"config error: {where}.stacks: unknown stack role {role!r} (defined: {', '.join(cfg['stacks'])})"
                )
        if h["profile"] not in cfg["profiles"]:
            raise ConfigError(
                f"config error: {where}.profile: unknown profile {h['profile']!r} (defined: {', '.join(cfg['profiles'])})"
            )
        prof = cfg["profiles"][h["profile"]]
        tiered = any(load_stack(cfg["stacks"][role]).get("tiered") for role in h["stacks"])
        if tiered and parse_bytes(prof["tier2"]) < parse_bytes(prof["tier1"]):
            raise ConfigError(
                f"config error: profiles.{h['profile']}: impossible tier split for a tiered stack in {hyp}: tier2 "
                f"({prof['tier2']}) < tier1 ({prof['tier1']}); KVBM is write-through, so the disk tier must hold the host tier"
            )
        for key, swept in (h.get("sweep") or {}).items():
            if len(set(map(json.dumps, swept))) != len(swept):
                dup = sorted({json.dumps(c) for c in swept if swept.count(c) > 1})
                raise ConfigError(f"config error: {where}.sweep.{key}: duplicate cell for {key} {dup[0]}")
        wl = h["load"]["workload"]
        if wl.get("kind") == "mixed_context" and "context_tokens" in wl:
            raise ConfigError(f"config error: {where}.load.workload.context_tokens: not used by mixed_context (give buckets instead)")
        if wl.get("kind") == "fixed_context" and "buckets" in wl:
            raise ConfigError(f"config error: {where}.load.workload.buckets: only mixed_context uses buckets")
        if needs_uwork(h) and hyp != "H0" and "H0" not in cfg["hypotheses"]:
            raise ConfigError(
                f"config error: {where}.load.concurrency: 'uwork' needs hypothesis H0 in the config (or give an integer)"
            )
        if hyp == "H0" and "concurrency" not in swept_axes(h):
            raise ConfigError(f"config error: {where}: H0 measures U_work, so it needs sweep.concurrency")


def swept_axes(h: dict) -> set[str]:
    """Axes a hypothesis varies, from its sweep and its explicit points."""
    keys = set(h.get("sweep") or {})
    for point in h.get("points") or []:
        keys |= set(point)
    return keys


def needs_uwork(h: dict) -> bool:
    """Does this hypothesis run (some of) its cells at a U_work (an upstream result of H0)?"""
    from kvharness.analysis.axes import UWORK_RULES

    kind = (h["load"].get("pattern") or {}).get("kind", "closed")
    swept = [v for v in (h.get("sweep") or {}).get("concurrency", [])] + \
        [p["concurrency"] for p in h.get("points") or [] if "concurrency" in p]
    if any(v in UWORK_RULES for v in swept):
        return True
    return kind in CLOSED_PATTERNS and h["load"].get("concurrency") in UWORK_RULES and "concurrency" not in swept_axes(h)


# --------------------------------------------------------------------------- stacks


def load_stack(name: str, stack_dir: Path | None = None) -> dict:
    """Read and check a stack config; ConfigError names the file and the key.

    ``name`` is a file stem in configs/stacks/ (``sim-A``) or a path to a ``.yaml`` file; either way the
    stack's name (used in cell ids) is the file stem and must be ``[A-Za-z0-9][A-Za-z0-9_-]*``.
    """
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"config error: stacks: stack config file {name!r} not found")
    else:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            raise ConfigError(f"config error: stacks: invalid stack name {name!r} (letters, digits, _ and -)")
        path = (stack_dir or STACK_DIR) / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (stack_dir or STACK_DIR).glob("*.yaml"))
            raise ConfigError(f"config error: stacks: unknown stack {name!r}: no file {path} (known: {', '.join(known)})")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", path.stem):
        raise ConfigError(f"{path}: the file name must be a stack name (letters, digits, _ and -)")
    try:
        stack = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(stack, dict):
        raise ConfigError(f"{path}: expected a mapping of stack settings")
    unknown = sorted(set(stack) - STACK_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(STACK_KEYS))})")
    kind = stack.get("kind")
    if kind not in STACK_KINDS:
        raise ConfigError(f"{path}: kind: expected one of {', '.join(STACK_KINDS)}, got {kind!r}")
    for key in ("command",):
        argv = stack.get(key, [])
        if not isinstance(argv, list) or not all(isinstance(a, (str, int, float)) for a in argv):
            raise ConfigError(f"{path}: {key}: expected an argv list of strings (never a shell string), got {argv!r}")
    if kind != "external" and not stack.get("command"):
        raise ConfigError(f"{path}: command: a launched stack needs a non-empty argv list")
    for i, argv in enumerate(stack.get("pre_commands", []) or []):
        if not isinstance(argv, list) or not argv:
            raise ConfigError(f"{path}: pre_commands[{i}]: expected a non-empty argv list")
    port = stack.get("port", "auto")
    if port != "auto" and not (isinstance(port, int) and 0 < port < 65536):
        raise ConfigError(f"{path}: port: expected 'auto' or an integer 1..65535, got {port!r}")
    if not isinstance(stack.get("env", {}), dict):
        raise ConfigError(f"{path}: env: expected a mapping of NAME: value")
    stack.setdefault("env", {})
    stack.setdefault("metrics", {})
    stack.setdefault("pre_commands", [])
    stack.setdefault("health_path", "/health")
    stack.setdefault("startup_timeout_s", 60)
    stack.setdefault("tiered", False)
    stack["name"] = path.stem
    return stack


# --------------------------------------------------------------------------- cells


def cell_id(stack_name: str, sweep_values: dict) -> str:
    from kvharness.analysis.axes import AXES

    return "_".join([stack_name] + [AXES[k].label(v) for k, v in sweep_values.items()])


def tier_bytes(cfg: dict, profile: str, tiered: bool, overrides: dict | None = None) -> dict:
    """Tier budgets in bytes. A memory-only stack gets tier0 + tier1 as its device pool (equal memory).

    ``overrides`` (bytes per tier, from the tier axes) replace the profile's values before the split.
    """
    prof = cfg["profiles"][profile]
    t0, t1, t2 = (parse_bytes(prof[k]) for k in ("tier0", "tier1", "tier2"))
    over = overrides or {}
    t0, t1, t2 = over.get("tier0", t0), over.get("tier1", t1), over.get("tier2", t2)
    if tiered:
        return {"tier0_bytes": t0, "tier1_bytes": t1, "tier2_bytes": t2, "memory_budget_bytes": t0 + t1}
    return {"tier0_bytes": t0 + t1, "tier1_bytes": 0, "tier2_bytes": 0, "memory_budget_bytes": t0 + t1}


def sweep_points(h: dict) -> list[dict]:
    """Every point of a hypothesis: the product of its sweep, crossed with its explicit points, then reps.

    Repetitions are the outermost loop (all points of rep 0, then of rep 1, ...), so a serial run never
    measures the reps of one point back to back.
    """
    sweep = h.get("sweep") or {}
    keys = list(sweep)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))] or [{}]
    if h.get("points"):
        combos = [{**c, **p} for p in h["points"] for c in combos]
    reps = int(h.get("reps") or 1)
    if reps > 1:
        combos = [{**c, "rep": r} for r in range(reps) for c in combos]
    return combos


def _validate_cell_load(cell: dict, where: str) -> None:  # noqa: C901
    """The cell's load, as the load generator will receive it, checked by the load generator's own rules."""
    from kvharness.loadgen.spec import SpecError, validate_spec

    load = cell["load"]
    pattern = dict(load.get("pattern") or {"kind": "closed"})
    if pattern.get("kind") in CLOSED_PATTERNS:
        conc = load.get("concurrency")
        pattern["concurrency"] = conc if isinstance(conc, int) else 1
        if pattern.get("kind") == "bursty" and not pattern.get("burst_size"):
            pattern["burst_size"] = pattern["concurrency"]
    probe = {"model": cell["served_model_name"], "pattern": pattern, "workload": load["workload"],
             "endpoint": load.get("endpoint", "completions"), "duration_s": load.get("duration_s"),
             "max_requests": load.get("max_requests"), "seed": load.get("seed", 0),
             "request_timeout_s": load.get("request_timeout_s", 60.0)}
    for key in ("lora", "slo"):
        if load.get(key) is not None:
            probe[key] = load[key]
    try:
        resolved = validate_spec(probe)
    except SpecError as exc:
        detail = str(exc).removeprefix("load spec: ")
        raise ConfigError(f"config error: {where}.load.{detail} (cell {cell['cell']})") from None
    # The workload as the load generator resolves it (its defaults, e.g. SPEC's H8 buckets) is the cell's.
    load["workload"] = resolved["workload"]


def expand_cells(cfg: dict, hyp: str) -> list[dict]:
    """Every cell of one hypothesis: one per stack role x point (see :func:`sweep_points`)."""
    from kvharness.analysis.axes import AXES, AxisError

    if hyp not in cfg["hypotheses"]:
        raise ConfigError(f"config error: unknown hypothesis {hyp!r} (defined: {', '.join(cfg['hypotheses'])})")
    h = cfg["hypotheses"][hyp]
    cells = []
    seen = set()
    for role in h["stacks"]:
        stack = load_stack(cfg["stacks"][role])
        for values in sweep_points(h):
            cid = cell_id(stack["name"], values)
            if cid in seen:
                raise ConfigError(f"config error: hypotheses.{hyp}: duplicate cell {cid!r} (two roles use the same stack?)")
            seen.add(cid)
            cell = {
                "hyp": hyp,
                "cell": cid,
                "role": role,
                "stack": stack,
                "profile": h["profile"],
                "sweep": values,
                "rep": 0,
                "load": copy.deepcopy(h["load"]),
                "engine": dict(cfg["engine"]),
                "sim": dict(cfg["sim"]),
                "telemetry": dict(cfg["telemetry"]),
                "quality": dict(cfg["quality"]),
                "host": cfg["host"],
                "model": cfg["model"],
                "model_path": cfg.get("model_path") or cfg["model"],
                "served_model_name": cfg["served_model_name"],
                "precision": cfg["precision"],
                "hardware": cfg["hardware"],
                "tier2_root": cfg["tier2_root"],
                "keep_tier2_files": cfg["keep_tier2_files"],
            }
            cell["load"].setdefault("pattern", {"kind": "closed"})
            for key, value in values.items():
                try:
                    AXES[key].apply(cell, value, cfg)
                except AxisError as exc:
                    raise ConfigError(f"config error: hypotheses.{hyp}.sweep.{key}: {exc}") from None
            if cell["load"]["pattern"].get("kind") not in CLOSED_PATTERNS:
                cell["load"]["concurrency"] = None  # open loop: the rate sets the load, not users in flight
            overrides = cell.pop("_tier_overrides", None)
            cell["tiers"] = tier_bytes(cfg, cell["profile"], bool(stack.get("tiered")), overrides)
            _validate_cell_load(cell, f"hypotheses.{hyp}")
            cells.append(cell)
    return cells


def cell_index(cfg: dict) -> dict[tuple[str, str], dict]:
    """(hyp, cell id) -> cell spec for every hypothesis; raises on an empty sweep."""
    index = {}
    for hyp in cfg["hypotheses"]:
        cells = expand_cells(cfg, hyp)
        if not cells:
            raise ConfigError(f"config error: hypotheses.{hyp}: the sweep is empty (no cell to measure)")
        for c in cells:
            index[(hyp, c["cell"])] = c
    return index


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return validate_config(raw)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
