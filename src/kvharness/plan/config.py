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

from kvharness import CONFIG_DIR, REPO_ROOT, STACK_DIR  # noqa: F401 (REPO_ROOT re-exported: kvharness.plan.config.REPO_ROOT)
from kvharness.plan.axes import AXES, UWORK_RULES, points_schema, sweep_schema
from kvharness.plan.spec import CellSpec
from kvharness.errors import AxisError, ConfigError, SpecError, utf8_text  # re-exported: kvharness.plan.config.ConfigError
from kvharness.loadgen import spec as loadspec
from kvharness.loadgen.spec import CLOSED_PATTERNS, DEFAULT_PATTERN
from kvharness.netaddr import is_loopback
from kvharness.units import parse_bytes

SCHEMA_PATH = CONFIG_DIR / "config.schema.yaml"

STACK_KINDS = ("sim", "trtllm", "dynamo", "vllm", "sglang", "external")
STACK_KEYS = {
    "description", "kind", "role", "tiered", "port", "metrics_port", "command", "pre_commands", "env",
    "health_path", "metrics", "startup_timeout_s", "engine_yaml",
    # readiness, where the stack runs, cold starts (docs/stacks.md)
    "models_path", "ready_urls", "system_port", "runtime", "cold_start", "fetch_histograms",
    "proxy",  # kvharness proxy in front of the stack (LoRA adapters)
}




# --------------------------------------------------------------------------- strict YAML

REQUIRED_SECTIONS = ("stacks", "profiles", "hypotheses")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""


def _construct_strict_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: let the normal constructor raise its error
            break
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given at line {first.line + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_strict_mapping)


def load_yaml_strict(path: str | Path) -> Any:
    """Parse a YAML file; a duplicate key or a syntax error is a ConfigError naming file and line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    text = utf8_text(path, data, "save the file as UTF-8")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: {exc.problem or 'not valid YAML'}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def check_config_file(path: str | Path, model: str | None = None) -> dict:
    """One workflow config file on its own: strict YAML, a mapping, no required section emptied, and
    every stack it names loadable; errors name the file and the field (``stacks.A``)."""
    path = Path(path)
    raw = load_yaml_strict(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got a {type(raw).__name__}")
    for key in REQUIRED_SECTIONS:
        if key in raw and not raw[key]:
            raise ConfigError(f"{path}: {key}: empty; give at least one entry or leave the key out "
                              "(an empty section would silently keep the defaults it was meant to replace)")
    stacks = raw.get("stacks")
    if isinstance(stacks, dict):
        for role, name in stacks.items():
            if not isinstance(name, str):
                raise ConfigError(f"{path}: stacks.{role}: expected a stack name or a path to a .yaml file, got {name!r}")
            try:
                load_stack(name, where=f"stacks.{role}")
            except ConfigError as exc:
                raise ConfigError(f"{path}: {str(exc).removeprefix('config error: ')}") from None
    if model is not None and isinstance(raw.get("hypotheses"), dict):  # contexts vs the model's window, naming this file
        try:
            _check_context_limits({"model": model, "hypotheses": raw["hypotheses"]})
        except ConfigError as exc:
            raise ConfigError(f"{path}: {str(exc).removeprefix('config error: ')}") from None
        except (TypeError, ValueError):
            pass  # a value of the wrong type: the schema check of the merged config names it
    return raw


def locate(field: str, paths) -> str | None:
    """``file:line`` of the last of ``paths`` that sets the dotted ``field`` (``hypotheses.H0.reps``), else None;
    ``paths`` in the order they override each other (the last wins)."""
    parts = field.split(".")
    for path in reversed(list(paths)):
        try:
            node = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
        except (OSError, ValueError, yaml.YAMLError):
            continue
        line = None
        for part in parts:
            hit = next(((k, v) for k, v in node.value if str(k.value) == part), None) \
                if isinstance(node, yaml.MappingNode) else None
            if hit is None:
                line = None  # only a file that sets the whole field counts
                break
            line, node = hit[0].start_mark.line + 1, hit[1]
        if line is not None:
            return f"{path}:{line}"
    return None


def name_the_file(exc: ConfigError, paths) -> ConfigError:
    """The error with the file and line that set its field in front (``configs/x.yaml:12: hypotheses.H0.reps: ...``)."""
    text = str(exc).removeprefix("config error: ")
    field = text.split(":", 1)[0].strip()
    if text.startswith("unknown key '"):  # the schema's wording names the field inside the sentence
        field = text[len("unknown key '"):].split("'", 1)[0]
    if " " in field or not field:
        return exc
    where = locate(field, paths)
    if where is None:  # a field the files do not set (a required key missing): name the section
        where = next((w for w in (locate(field.rsplit(".", n)[0], paths) for n in (1, 2)) if w), None)
    return ConfigError(f"{where}: {text}") if where else exc


def check_config_files(paths) -> None:
    """Re-read the files Snakemake loaded (``workflow.configfiles``) strictly: Snakemake's own loader
    keeps the last of two equal keys and merges an emptied section over the defaults."""
    paths = list(paths)
    raws = [check_config_file(p) for p in paths]
    model = next((r["model"] for r in reversed(raws) if isinstance(r.get("model"), str)),
                 load_schema()["properties"]["model"].get("default"))
    for path in paths:
        check_config_file(path, model=model)


# --------------------------------------------------------------------------- schema


def load_schema() -> dict:
    """configs/config.schema.yaml, with the parts that have one owner elsewhere filled in: the ``sweep`` and
    ``points`` sections from the axis registry, engine and simulator defaults from :mod:`kvharness.defaults`."""
    from kvharness import defaults

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    hyp = schema["$defs"]["hypothesis"]["properties"]
    hyp["sweep"] = sweep_schema()
    hyp["points"] = points_schema()
    for section, values in (("engine", defaults.ENGINE), ("sim", defaults.SIM)):
        props = schema["properties"][section]["properties"]
        for key, value in values.items():
            props[key]["default"] = value
    schema["$defs"]["pattern"]["default"] = dict(loadspec.DEFAULT_PATTERN)
    load = schema["$defs"]["load"]["properties"]
    for key in ("seed", "request_timeout_s"):  # the load generator's own defaults
        load[key]["default"] = loadspec.default(key)
    from kvharness.stats import min_ok_requests

    load["min_ok_requests"]["default"] = min_ok_requests(99)  # derived, not typed
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
    _keep_only(cfg)
    _check_semantics(cfg)
    from kvharness.stacks import bgio

    for hyp in cfg["hypotheses"]:
        cells = expand_cells(cfg, hyp)  # every cell's load is checked by the load generator's own rules
        bgio.check_available(cells)  # background_io on needs fio: one line now, not a silent quiet cell
    return cfg


def _keep_only(cfg: dict) -> None:
    """``only: [H...]``: keep those hypotheses and what they need upstream (H0 for a U_work load)."""
    only = cfg.get("only")
    if not only:
        return
    unknown = [h for h in only if h not in cfg["hypotheses"]]
    if unknown:
        raise ConfigError(f"config error: only: unknown hypothesis {unknown[0]!r} "
                          f"(defined: {', '.join(cfg['hypotheses'])})")
    keep = set(only)
    if any(needs_uwork(cfg["hypotheses"][h]) for h in only) and "H0" in cfg["hypotheses"]:
        keep.add("H0")
    cfg["hypotheses"] = {h: v for h, v in cfg["hypotheses"].items() if h in keep}


def _check_semantics(cfg: dict) -> None:
    if not is_loopback(cfg["host"]) and not cfg["allow_remote_bind"]:
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
        load_stack(stack_name, where=f"stacks.{role}")  # raises ConfigError naming the file and stacks.<role>
    _check_context_limits(cfg)
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
    kind = (h["load"].get("pattern") or DEFAULT_PATTERN).get("kind", DEFAULT_PATTERN["kind"])
    swept = [v for v in (h.get("sweep") or {}).get("concurrency", [])] + \
        [p["concurrency"] for p in h.get("points") or [] if "concurrency" in p]
    if any(v in UWORK_RULES for v in swept):
        return True
    return kind in CLOSED_PATTERNS and h["load"].get("concurrency") in UWORK_RULES and "concurrency" not in swept_axes(h)


def _check_context_limits(cfg: dict) -> None:
    """Every prompt + output of every sweep and workload fits the model's ``max_context_tokens``
    (configs/models.yaml); a model without the field (or not in the file) is not checked."""
    from kvharness.sim.profiles import default_models_path

    models_path = default_models_path()
    models = (load_yaml_strict(models_path) or {}).get("models") or {}
    limit = (models.get(cfg["model"]) or {}).get("max_context_tokens")
    if limit is None:
        return
    for hyp, h in cfg["hypotheses"].items():
        if not isinstance(h, dict) or not isinstance(h.get("load"), dict) or not isinstance(h["load"].get("workload"), dict):
            continue  # a single file of a merged config may lack them: the merged config is checked too
        wl = h["load"]["workload"]
        out = int(wl.get("output_tokens", 16))
        asked = [(f"hypotheses.{hyp}.sweep.context_tokens", c) for c in (h.get("sweep") or {}).get("context_tokens", [])]
        if "context_tokens" in wl:
            asked.append((f"hypotheses.{hyp}.load.workload.context_tokens", wl["context_tokens"]))
        asked += [(f"hypotheses.{hyp}.load.workload.buckets.{b.get('name')}.max_tokens", b["max_tokens"])
                  for b in wl.get("buckets", []) if isinstance(b, dict) and "max_tokens" in b]
        for where, ctx in asked:
            if int(ctx) + out > int(limit):
                raise ConfigError(
                    f"config error: {where}: {ctx} prompt + {out} output tokens exceed the context window of model "
                    f"{cfg['model']!r} ({limit} tokens, {models_path}: models.{cfg['model']}.max_context_tokens)"
                )


# --------------------------------------------------------------------------- stacks


#: what a stack config that leaves them out gets (load_stack fills them in, once)
STACK_DEFAULTS = {"env": {}, "metrics": {}, "pre_commands": [], "health_path": "/health", "startup_timeout_s": 60,
                  "tiered": False}


def load_stack(name: str, stack_dir: Path | None = None, where: str = "stacks") -> dict:
    """Read and check a stack config; ConfigError names the file and the key.

    ``name`` is a file stem in configs/stacks/ (``sim-A``) or a path to a ``.yaml`` file; either way the
    stack's name (used in cell ids) is the file stem and must be ``[A-Za-z0-9][A-Za-z0-9_-]*``.
    """
    path = _stack_path(name, stack_dir, where)
    stack = load_yaml_strict(path) or {}
    if not isinstance(stack, dict):
        raise ConfigError(f"{path} ({where}): expected a mapping of stack settings, got a {type(stack).__name__}")
    unknown = sorted(set(stack) - STACK_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(STACK_KEYS))})")
    if stack.get("proxy") is not None:
        from kvharness.stacks.proxy import check_stack_proxy

        try:
            stack["proxy"] = check_stack_proxy(path, stack["proxy"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    kind = stack.get("kind")
    if kind not in STACK_KINDS:
        raise ConfigError(f"{path}: kind: expected one of {', '.join(STACK_KINDS)}, got {kind!r}")
    _check_stack_argvs(path, stack, kind)
    _check_stack_extras(path, stack)
    port = stack.get("port", "auto")
    if port != "auto" and not (isinstance(port, int) and 0 < port < 65536):
        raise ConfigError(f"{path}: port: expected 'auto' or an integer 1..65535, got {port!r}")
    if not isinstance(stack.get("env", {}), dict):
        raise ConfigError(f"{path}: env: expected a mapping of NAME: value")
    for key, value in STACK_DEFAULTS.items():
        stack.setdefault(key, copy.deepcopy(value))
    stack["name"] = path.stem
    return stack


def _stack_path(name, stack_dir: Path | None, where: str) -> Path:
    """The file a stack name or path names: a stem in configs/stacks/ or a ``.yaml`` path."""
    if not isinstance(name, str):
        raise ConfigError(f"config error: {where}: expected a stack name or a path to a .yaml file, got {name!r}")
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"config error: {where}: stack config file {name!r} not found")
    elif "/" in name:
        raise ConfigError(f"config error: {where}: {name!r} is neither a stack name in configs/stacks/ nor a path "
                          "to a .yaml stack config")
    else:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            raise ConfigError(f"config error: {where}: invalid stack name {name!r} (letters, digits, _ and -)")
        path = (stack_dir or STACK_DIR) / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (stack_dir or STACK_DIR).glob("*.yaml"))
            raise ConfigError(f"config error: {where}: unknown stack {name!r}: no file {path} (known: {', '.join(known)})")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", path.stem):
        raise ConfigError(f"{path} ({where}): the file name must be a stack name (letters, digits, _ and -)")
    return path


def _check_stack_argvs(path: Path, stack: dict, kind: str) -> None:
    """``command`` and ``pre_commands`` are argv lists (never shell strings)."""
    argv = stack.get("command", [])
    if not isinstance(argv, list) or not all(isinstance(a, (str, int, float)) for a in argv):
        raise ConfigError(f"{path}: command: expected an argv list of strings (never a shell string), got {argv!r}")
    if kind != "external" and not stack.get("command"):
        raise ConfigError(f"{path}: command: a launched stack needs a non-empty argv list")
    for i, argv in enumerate(stack.get("pre_commands", []) or []):
        if isinstance(argv, dict):  # {argv: [...], env: {...}}: env only this process gets
            stray = sorted(set(argv) - {"argv", "env"})
            if stray:
                raise ConfigError(f"{path}: pre_commands[{i}].{stray[0]}: unknown key (allowed: argv, env)")
            if not isinstance(argv.get("env", {}), dict):
                raise ConfigError(f"{path}: pre_commands[{i}].env: expected a mapping of NAME: value")
            argv = argv.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, (str, int, float)) for a in argv):
            raise ConfigError(f"{path}: pre_commands[{i}]: expected a non-empty argv list (never a shell string)")


def _check_stack_extras(path: Path, stack: dict) -> None:
    """The stack keys for readiness, runtime and cold start (their meaning: docs/stacks.md)."""
    mp = stack.get("models_path", "/v1/models")
    if mp is not None and not (isinstance(mp, str) and mp.startswith("/")):
        raise ConfigError(f"{path}: models_path: expected a route such as /v1/models (or null), got {mp!r}")
    ru = stack.get("ready_urls", {}) or {}
    if not isinstance(ru, dict) or not all(isinstance(v, str) and v.startswith("http") for v in ru.values()):
        raise ConfigError(f"{path}: ready_urls: expected a mapping of name: http URL (each must answer 200)")
    sp = stack.get("system_port")
    if sp is not None and sp != "auto" and not (isinstance(sp, int) and 0 < sp <= 32767):
        raise ConfigError(f"{path}: system_port: expected 'auto' or an integer 1..32767 (Dynamo parses "
                          f"DYN_SYSTEM_PORT as a signed 16-bit value), got {sp!r}")
    rt = stack.get("runtime")
    if rt is not None:
        if not isinstance(rt, dict) or rt.get("kind") not in ("host", "venv", "container"):
            raise ConfigError(f"{path}: runtime.kind: expected host, venv or container")
        allowed = {"host": {"kind"}, "venv": {"kind", "python"},
                   "container": {"kind", "image", "mounts", "gpus", "docker", "extra_args", "stop_timeout_s", "python"}}[rt["kind"]]
        stray = sorted(set(rt) - allowed)
        if stray:
            raise ConfigError(f"{path}: runtime.{stray[0]}: not a setting of a {rt['kind']} runtime "
                              f"(allowed: {', '.join(sorted(allowed - {'kind'}))})")
        if rt["kind"] == "venv" and not (isinstance(rt.get("python"), str) and rt["python"]):
            raise ConfigError(f"{path}: runtime.python: a venv runtime needs the interpreter path (e.g. /opt/dynamo/venv/bin/python)")
        if rt["kind"] == "container":
            if not (isinstance(rt.get("image"), str) and rt["image"]):
                raise ConfigError(f"{path}: runtime.image: a container runtime needs an image")
            mounts = rt.get("mounts", []) or []
            if not isinstance(mounts, list) or not all(isinstance(m, str) and ":" in m for m in mounts):
                raise ConfigError(f"{path}: runtime.mounts: expected a list of 'host_path:container_path[:ro]'")
            extra = rt.get("extra_args", []) or []
            if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
                raise ConfigError(f"{path}: runtime.extra_args: expected an argv list of strings")
    if stack.get("kind") == "trtllm":
        for name, url in (stack.get("metrics") or {}).items():
            route = str(url).split("://", 1)[-1].split("/", 1)[-1].rstrip("/")
            if route == "metrics":
                raise ConfigError(
                    f"{path}: metrics.{name}: trtllm-serve's JSON /metrics drains the iteration-stats queue its own "
                    f"Prometheus loop reads; scrape /prometheus/metrics instead"
                )
    fh = stack.get("fetch_histograms", {}) or {}
    if not isinstance(fh, dict) or set(fh) - {"tier0", "tier1", "tier2"} \
            or not all(isinstance(v, str) and v for v in fh.values()):
        raise ConfigError(f"{path}: fetch_histograms: expected tier0|tier1|tier2: histogram family "
                          f"(seconds; 'family{{label=value}}' picks one series)")
    cs = stack.get("cold_start")
    if cs is not None:
        allowed = {"reset", "drop_page_cache", "verify"}
        if not isinstance(cs, dict) or set(cs) - allowed:
            bad = sorted(set(cs) - allowed)[0] if isinstance(cs, dict) else "<value>"
            raise ConfigError(f"{path}: cold_start.{bad}: unknown key (allowed: {', '.join(sorted(allowed))})")
        for i, r in enumerate(cs.get("reset", []) or []):
            if not isinstance(r, dict) or r.get("method", "POST") not in ("GET", "POST") \
                    or not str(r.get("path", "")).startswith("/") or set(r) - {"method", "path"}:
                raise ConfigError(f"{path}: cold_start.reset[{i}]: expected {{method: POST|GET, path: /route}}")


# --------------------------------------------------------------------------- cells


def cell_id(stack_name: str, sweep_values: dict) -> str:
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
    if reps > 1:  # a point that names its own rep keeps it (it is already one repetition)
        combos = [c for r in range(reps) for c in ([{**c, "rep": r} for c in combos if "rep" not in c]
                                                    + ([c for c in combos if "rep" in c and c["rep"] == r]))] \
            + [c for c in combos if "rep" in c and not 0 <= c["rep"] < reps]
    return combos


def _validate_cell_load(cell: dict, where: str) -> None:
    """The cell's load, as the load generator will receive it, checked by the load generator's own rules."""

    load = cell["load"]
    pattern = dict(load.get("pattern") or DEFAULT_PATTERN)
    if pattern.get("kind") in CLOSED_PATTERNS:
        conc = load.get("concurrency")
        pattern["concurrency"] = conc if isinstance(conc, int) else 1
        if pattern.get("kind") == "bursty" and not pattern.get("burst_size"):
            pattern["burst_size"] = pattern["concurrency"]
    probe = {"model": cell["served_model_name"], "pattern": pattern, "workload": load["workload"],
             "endpoint": load.get("endpoint", "completions"), "duration_s": load.get("duration_s"),
             "max_requests": load.get("max_requests"), "min_ok_requests": load.get("min_ok_requests"),
             "max_duration_s": load.get("max_duration_s"), "seed": load.get("seed", loadspec.default("seed")),
             "request_timeout_s": load.get("request_timeout_s", loadspec.default("request_timeout_s"))}
    for key in ("lora", "slo"):
        if load.get(key) is not None:
            probe[key] = load[key]
    try:
        resolved = loadspec.validate_spec(probe)
    except SpecError as exc:
        detail = str(exc).removeprefix("load spec: ")
        raise ConfigError(f"config error: {where}.load.{detail} (cell {cell['cell']})") from None
    # The workload as the load generator resolves it (its defaults, e.g. SPEC's H8 buckets) is the cell's.
    load["workload"] = resolved["workload"]


def hypothesis_engine(cfg: dict, hyp: str) -> dict:
    """The engine settings of a hypothesis's cells: the top-level ``engine`` with its own ``engine`` over it."""
    engine = dict(cfg["engine"])
    for key, value in (cfg["hypotheses"][hyp].get("engine") or {}).items():
        where = f"config error: hypotheses.{hyp}.engine.{key}"
        if key not in engine:
            raise ConfigError(f"{where}: unknown engine setting (known: {', '.join(sorted(engine))})")
        if key != "lora_adapter_bytes" and type(value) is not type(engine[key]):
            raise ConfigError(f"{where}: expected {type(engine[key]).__name__}, got {value!r}")
        engine[key] = value
    if "lora_adapter_bytes" in engine:
        try:
            engine["lora_adapter_bytes"] = parse_bytes(engine["lora_adapter_bytes"], "engine.lora_adapter_bytes")
        except ValueError as exc:
            raise ConfigError(f"config error: hypotheses.{hyp}: {exc}") from None
    return engine


def expand_cells(cfg: dict, hyp: str) -> list[dict]:
    """Every cell of one hypothesis: one per stack role x point (see :func:`sweep_points`)."""
    if hyp not in cfg["hypotheses"]:
        raise ConfigError(f"config error: unknown hypothesis {hyp!r} (defined: {', '.join(cfg['hypotheses'])})")
    h = cfg["hypotheses"][hyp]
    cells = []
    seen = set()
    for role in h["stacks"]:
        stack = load_stack(cfg["stacks"][role])
        for values in sweep_points(h):
            if "tier2" in values and not stack.get("tiered"):
                # a memory-only stack has no disk tier: a tier-2 sweep is one cell for it (H10's A)
                values = {k: v for k, v in values.items() if k != "tier2"}
                if cell_id(stack["name"], values) in seen:
                    continue
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
                "engine": hypothesis_engine(cfg, hyp),
                "sim": dict(cfg["sim"]),
                "telemetry": dict(cfg["telemetry"]),
                "background_io": dict(cfg.get("background_io") or {}),
                "quality": dict(cfg["quality"]),
                "host": cfg["host"],
                "model": cfg["model"],
                "model_path": cfg.get("model_path") or cfg["model"],
                "served_model_name": cfg["served_model_name"],
                "precision": cfg["precision"],
                "hardware": cfg["hardware"],
                "tier2_root": cfg["tier2_root"],
                "keep_tier2_files": cfg["keep_tier2_files"],
                **({"remote_machine": True} if cfg.get("remote_machine") else {}),  # absent by default: no re-measure
            }
            cell["load"].setdefault("pattern", dict(DEFAULT_PATTERN))
            cell["load"]["slo"] = {**cfg.get("slo", {}), **(cell["load"].get("slo") or {})}  # plan SLOs, per-key override
            for key, value in values.items():
                try:
                    AXES[key].apply(cell, value, cfg)
                except AxisError as exc:
                    raise ConfigError(f"config error: hypotheses.{hyp}.sweep.{key}: {exc}") from None
            kind = cell["load"]["pattern"].get("kind")
            if kind not in CLOSED_PATTERNS and not (kind == "trace" and "concurrency" in values):
                cell["load"]["concurrency"] = None  # open loop: the rate sets the load, not users in flight
            # a trace swept over concurrency (H8) keeps it as the cap on requests in flight
            # (pattern.max_in_flight, set by kvharness.measure.cell.resolve_load once a U_work rule is resolved)
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
            CellSpec.from_dict(c)  # every key present, none unknown, each of its type (kvharness.plan.spec)
            index[(hyp, c["cell"])] = c
    return index


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: config file {path} not found")
    raw = check_config_file(path)
    check_config_file(path, model=raw.get("model") or load_schema()["properties"]["model"].get("default"))
    try:
        return validate_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {str(exc).removeprefix('config error: ')}") from None


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
