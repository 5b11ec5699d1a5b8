"""Check every Dynamo flag, env var and metric name the stack configs and telemetry tables use against the
Dynamo release installed in this interpreter (``EXTRAS=...,dynamo ./setup.sh``).

* Flags of ``python -m dynamo.frontend`` / ``dynamo.mocker``: parsed from their ``--help`` (run in a
  subprocess: the real argument parsers). ``dynamo.trtllm`` / ``dynamo.vllm`` / ``dynamo.sglang`` import GPU
  engines to build their parsers, so their flags are read from the argument-definition source in the
  installed package (every ``"--flag"`` literal of ``<backend>/*args.py`` and the shared
  ``common/configuration/groups/*.py``; a negatable boolean also has its ``--no-`` form).
* Env names (``DYN_*``): a name the installed Python sources spell out, or a name in the runtime's compiled
  core (``_core.abi3.so`` of ``dynamo`` and, when installed, ``kvbm``) that ends where the string ends; or a
  config prefix the core reads (e.g. ``DYN_SYSTEM_``) followed by a settings field it names
  (``starting_health_status``), the way the runtime maps env to its config structs.
* Metric names: ``dynamo_frontend_*`` against ``dynamo.prometheus_names`` (prefix + frontend names),
  ``kvbm_*`` against the metric names compiled into the ``kvbm`` wheel.

``python -m kvharness.stacks.upstream_names`` prints every problem and exits 1 when there is one.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import yaml

from kvharness import STACK_DIR

DYNAMO_MODULE = re.compile(r"^dynamo\.(frontend|mocker|trtllm|vllm|sglang)$")
FLAG = re.compile(r"^--[a-z0-9][a-z0-9-]*$")
HELP_FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")
ENV = re.compile(rb"DYN_[A-Z0-9_]+")
HELP_MODULES = ("frontend", "mocker")   # parsers that build without a GPU engine
FIELD_PREFIXES = ("DYN_SYSTEM_", "DYN_RUNTIME_", "DYN_")


class DynamoMissing(RuntimeError):
    """ai-dynamo is not installed in this interpreter."""


def package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def dynamo_dir() -> Path:
    d = package_dir("dynamo")
    if d is None or not (d / "mocker").is_dir():
        raise DynamoMissing("ai-dynamo is not installed here: EXTRAS=test,dynamo ./setup.sh")
    return d


def dynamo_version() -> str:
    return importlib.metadata.version("ai-dynamo")


@functools.lru_cache(maxsize=None)
def help_flags(module: str) -> frozenset[str]:
    out = subprocess.run([sys.executable, "-m", f"dynamo.{module}", "--help"], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"python -m dynamo.{module} --help failed: {out.stderr.strip()[-300:]}")
    return frozenset(HELP_FLAG.findall(out.stdout))


def _source_flags(paths: list[Path]) -> set[str]:
    flags: set[str] = set()
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and FLAG.match(node.value):
                flags.add(node.value)
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) \
                    == "add_negatable_bool_argument":
                for kw in node.keywords:
                    if kw.arg == "flag_name" and isinstance(kw.value, ast.Constant):
                        flags.add("--no-" + kw.value.value[2:])
    return flags


@functools.lru_cache(maxsize=None)
def module_flags(module: str) -> frozenset[str]:
    """Every flag ``python -m dynamo.<module>`` accepts in the installed release."""
    if module in HELP_MODULES:
        return help_flags(module)
    d = dynamo_dir()
    files = sorted((d / module).glob("*args.py")) + sorted((d / "common" / "configuration" / "groups").glob("*.py"))
    files += [d / "common" / "configuration" / "utils.py"]
    return frozenset(_source_flags([f for f in files if f.is_file()]))


@functools.lru_cache(maxsize=None)
def _binaries() -> tuple[bytes, ...]:
    blobs = []
    for pkg in ("dynamo", "kvbm"):
        d = package_dir(pkg)
        if d is not None:
            blobs += [p.read_bytes() for p in sorted(d.glob("_core*.so"))]
    return tuple(blobs)


@functools.lru_cache(maxsize=None)
def _python_env_names() -> frozenset[str]:
    names: set[str] = set()
    for pkg in ("dynamo", "kvbm"):
        d = package_dir(pkg)
        if d is None:
            continue
        for path in d.rglob("*.py"):
            if "tests" in path.parts:
                continue
            names.update(m.decode() for m in ENV.findall(path.read_bytes()))
    return frozenset(names)


def _in_binary(name: str) -> bool:
    """The name as a whole string in a compiled core: the next byte is not part of an env name (the
    linker packs strings back to back, so one starting with ``DYN_`` may follow directly)."""
    raw = name.encode()
    for blob in _binaries():
        start = blob.find(raw)
        while start >= 0:
            after = blob[start + len(raw):start + len(raw) + 4]
            if not after or not re.match(rb"[A-Z0-9_]", after[:1]) or after == b"DYN_":
                return True
            start = blob.find(raw, start + 1)
    return False


def _config_field(name: str) -> bool:
    """``PREFIX`` + a settings field the core names (lowercase, with an underscore: not a fragment)."""
    for prefix in FIELD_PREFIXES:
        if name.startswith(prefix) and _in_binary(prefix):
            field = name[len(prefix):].lower()
            if "_" in field and any(field.encode() in blob for blob in _binaries()):
                return True
    return False


def env_known(name: str) -> bool:
    return name in _python_env_names() or _in_binary(name) or _config_field(name)


@functools.lru_cache(maxsize=None)
def frontend_metric_names() -> frozenset[str]:
    from dynamo import prometheus_names as pn

    prefix = pn.name_prefix.FRONTEND
    return frozenset(f"{prefix}_{v}" for cls in (pn.frontend_service, pn.frontend_perf) for k, v in vars(cls).items()
                     if k.isupper() and isinstance(v, str) and not k.endswith("_ENV"))


def kvbm_metric_known(name: str) -> bool:
    """``kvbm_<name>`` as the installed kvbm registers it (the names are compiled into its core)."""
    d = package_dir("kvbm")
    if d is None:
        raise DynamoMissing("kvbm is not installed here: EXTRAS=test,dynamo ./setup.sh")
    short = name[len("kvbm_"):].encode()
    return any(short in p.read_bytes() for p in d.glob("_core*.so"))


# --------------------------------------------------------------------------- what we use


def stack_uses(stack: dict) -> list[tuple[str, str, str]]:
    """(where, kind, name) for every Dynamo flag and DYN_* env name a stack config uses; kind is
    ``flag:<module>`` or ``env``."""
    out = []
    argvs = [(f"pre_commands[{i}]", p.get("argv") if isinstance(p, dict) else p, (p.get("env") or {}) if isinstance(p, dict) else {})
             for i, p in enumerate(stack.get("pre_commands") or [])]
    argvs.append(("command", stack.get("command") or [], {}))
    for where, argv, env in argvs:
        argv = [str(a) for a in argv]
        module = next((m.group(1) for a in argv if (m := DYNAMO_MODULE.match(a))), None)
        if module:
            out += [(where, f"flag:{module}", a.split("=", 1)[0]) for a in argv if a.startswith("--")]
        out += [(f"{where}.env", "env", k) for k in env if k.startswith("DYN_")]
    out += [("env", "env", k) for k in (stack.get("env") or {}) if k.startswith("DYN_")]
    return out


def check_stack(path: Path) -> list[str]:
    stack = yaml.safe_load(path.read_text()) or {}
    problems = []
    for where, kind, name in stack_uses(stack):
        if kind == "env":
            ok = env_known(name)
        else:
            module = kind.split(":", 1)[1]
            ok = name in module_flags(module)
        if not ok:
            what = f"python -m dynamo.{kind[5:]}" if kind != "env" else "the Dynamo runtime"
            problems.append(f"{path.name}: {where}: {name} is not known to {what} (ai-dynamo {dynamo_version()})")
    return problems


def dynamo_stack_paths() -> list[Path]:
    return [p for p in sorted(STACK_DIR.glob("*.yaml"))
            if any(DYNAMO_MODULE.match(str(a)) for a in re.findall(r"dynamo\.\w+", p.read_text()))]


def check_metrics() -> list[str]:
    from kvharness.telemetry.prom import COUNTER_RULES, GAUGE_RULES, HIST_RULES

    names = {n for names, *_ in COUNTER_RULES + GAUGE_RULES + HIST_RULES for n in names}  # counters without _total
    problems = []
    frontend = frontend_metric_names()
    for n in sorted(names):
        base = n.removesuffix(":max").removesuffix("_sum")
        if base.startswith("dynamo_frontend_") and base not in frontend and base + "_total" not in frontend:
            problems.append(f"telemetry/prom.py: {n} is not a frontend metric of ai-dynamo {dynamo_version()}")
        if base.startswith("kvbm_") and not kvbm_metric_known(base):
            problems.append(f"telemetry/prom.py: {n} is not a metric of the installed kvbm")
    return problems


def main() -> int:
    try:
        problems = [p for path in dynamo_stack_paths() for p in check_stack(path)] + check_metrics()
    except DynamoMissing as exc:
        print(f"kvharness upstream-names: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
