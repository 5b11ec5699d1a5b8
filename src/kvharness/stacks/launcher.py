"""Launch a serving stack as real processes, wait for health, and always tear it down.

A stack is one main argv (whose ``/health`` gates readiness) plus optional ``pre_commands`` (e.g. a
Dynamo worker before its frontend). Every argv is a list, rendered element by element from a fixed set
of template names, and started with ``subprocess.Popen`` without a shell, in its own session (process
group) so teardown can signal the whole tree. On Linux each child also gets a parent-death signal, so
even a SIGKILLed cell runner leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from kvharness.errors import ConfigError, StackLaunchError
from kvharness.stacks import identity
from kvharness.provenance import redact_env
from kvharness.stacks.runtime import container_name, interpreter, stop_containers, wrap

PR_SET_PDEATHSIG = 1
# Engine settings recorded for a stack without an engine YAML (what the cell hands its command line).
ENGINE_NAMES = ("max_batch_size", "max_num_tokens", "max_seq_len", "tokens_per_block", "tier0_tokens", "eviction_policy")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def child_popen_kwargs() -> dict:
    """Popen options for every process the harness starts: own process group, dies with its parent."""
    kwargs: dict = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        kwargs["preexec_fn"] = _die_with_parent
    return kwargs


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a child: ours, plus ``extra``, with this package importable even when not installed."""
    env = dict(os.environ)
    env.update(extra or {})
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


#: Dynamo reads DYN_SYSTEM_PORT as a signed 16-bit value: a port above this makes the worker exit
SYSTEM_PORT_MAX = 32767
#: where ``system_port: auto`` looks: below Linux's ephemeral range (32768-60999), so the kernel never
#: hands one of these to an outgoing connection, and above the registered well-known services
SYSTEM_PORT_RANGE = (20000, SYSTEM_PORT_MAX)


def free_low_port(host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A port in SYSTEM_PORT_RANGE that nothing listens on now (bound and released to prove it). The stack
    binds it moments later; verify_identity then proves the listener on it is ours."""
    rng = random.Random()
    for _ in range(attempts):
        port = rng.randint(*SYSTEM_PORT_RANGE)
        if not port_in_use(host, port):
            return port
    raise StackLaunchError(f"no free port in {SYSTEM_PORT_RANGE[0]}..{SYSTEM_PORT_RANGE[1]} on {host} for system_port")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def render(value: str, names: Mapping[str, object], where: str) -> str:
    """Substitute ``{name}`` placeholders from ``names`` only; an unknown name is a ConfigError."""
    text = str(value)
    for _, field_name, _, _ in string.Formatter().parse(text):
        if field_name is not None and field_name not in names:
            raise ConfigError(
                f"{where}: unknown placeholder {{{field_name}}} (known: {', '.join(sorted(names))})"
            )
        if field_name is not None and names[field_name] is None:
            raise ConfigError(f"{where}: placeholder {{{field_name}}} has no value for this cell")
    return text.format_map(names)


OPTIONAL_NAMES = {"lora_config"}  # placeholders that may have no value: their key is then left out


def _unset(node, names) -> bool:
    return isinstance(node, str) and node.strip() in {f"{{{n}}}" for n in OPTIONAL_NAMES} \
        and names.get(node.strip()[1:-1]) is None


def _render_tree(node, names, where):
    """Render every string in a YAML tree; a string that is exactly one placeholder keeps its type."""
    if isinstance(node, dict):  # an optional placeholder without a value leaves its key out
        return {k: _render_tree(v, names, f"{where}.{k}") for k, v in node.items() if not _unset(v, names)}
    if isinstance(node, list):
        return [_render_tree(v, names, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        stripped = node.strip()
        if stripped.startswith("{") and stripped.endswith("}") and stripped[1:-1] in names:
            render(stripped, names, where)
            return names[stripped[1:-1]]
        return render(node, names, where)
    return node


@dataclass
class LaunchPlan:
    name: str
    kind: str
    argvs: list[list[str]]           # pre_commands..., main command last
    env: dict[str, str]              # added to the inherited environment
    host: str
    port: int
    metrics_port: int | None
    health_url: str | None
    base_url: str
    metrics_urls: dict[str, str]
    startup_timeout_s: float
    log_path: Path
    engine_yaml_path: Path | None = None
    names: dict = field(default_factory=dict)
    held_sockets: list = field(default_factory=list)  # reserved listeners the stack inherits (identity.reserve)
    models_url: str | None = None            # readiness: the served model must be listed here
    served_model_name: str | None = None
    ready_urls: dict[str, str] = field(default_factory=dict)  # readiness: each must answer 200 (worker health)
    ready_steps: list[dict] = field(default_factory=list)     # filled by wait_healthy: what became ready when
    argv_envs: list[dict[str, str]] = field(default_factory=list)  # per argv: env only that process gets
    engine_settings: dict = field(default_factory=dict)       # the effective engine YAML (or engine names)
    runtime: dict = field(default_factory=lambda: {"kind": "host"})  # runtime.py: host | venv | container
    containers: list[str] = field(default_factory=list)       # docker names, stopped on teardown
    stack_argvs: list[list[str]] = field(default_factory=list)  # the stack's own argvs (inside the container)

    def describe(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "argvs": self.argvs, "env": redact_env(self.env),
            "host": self.host, "port": self.port, "metrics_port": self.metrics_port,
            "base_url": self.base_url, "health_url": self.health_url, "metrics_urls": self.metrics_urls,
            "argv_envs": [redact_env(e) for e in self.argv_envs], "runtime": self.runtime, "containers": self.containers,
            "stack_argvs": self.stack_argvs, "models_url": self.models_url, "served_model_name": self.served_model_name, "ready_urls": self.ready_urls,
            "engine_yaml": str(self.engine_yaml_path) if self.engine_yaml_path else None,
            "engine_settings": self.engine_settings,
        }


def _pick_port(value, host: str, what: str, stack_name: str, launched: bool) -> int | None:
    if value is None:
        return None
    if value == "auto":
        return free_low_port(host) if what == "system_port" else free_port(host)
    port = int(value)
    if launched and port_in_use(host, port):
        raise StackLaunchError(
            f"stack {stack_name}: {what} {host}:{port} is already in use; stop what holds it or set {what}: auto"
        )
    return port


def _held_fd(held: Mapping, key: str, check_ports: bool):
    """The fd of the socket the harness holds for ``key``; for ``--show`` (nothing bound) a placeholder
    that says what the launched process would get there."""
    if key in held:
        return held[key].fileno()
    return None if check_ports else f"<fd of the {key} socket>"


def plan_launch(stack: Mapping, names: Mapping[str, object], workdir: Path, check_ports: bool = True) -> LaunchPlan:
    """Resolve ports and templates of a stack config for one cell. ``names`` are the cell's values.
    ``check_ports=False`` (``kvharness cell --show``) does not refuse a fixed port that is in use.
    Phases: ports and template names, the engine YAML, the argvs, the runtime wrap, the URLs (and a proxy)."""
    host = str(names.get("host", "127.0.0.1"))
    launched = stack["kind"] != "external" and check_ports
    held = identity.reserve_ports(stack, host) if launched else {}
    runtime = stack.get("runtime") or {"kind": "host"}
    all_names = _launch_names(stack, names, workdir, host, held, launched, check_ports, runtime)
    port, metrics_port = all_names["port"], all_names["metrics_port"]
    where = f"configs/stacks/{stack['name']}.yaml"
    engine_yaml_path, engine_settings = _engine_settings(stack, all_names, workdir, where)
    argvs, argv_envs = _stack_argvs(stack, all_names, where)
    env = {str(k): render(v, all_names, f"{where}: env.{k}") for k, v in (stack.get("env") or {}).items()}
    containers = [container_name(stack["name"], workdir, i) for i in range(len(argvs))] \
        if runtime["kind"] == "container" else []
    mounts = [render(m, all_names, f"{where}: runtime.mounts") for m in runtime.get("mounts", []) or []]
    for own_dir in (str(workdir.resolve()), all_names.get("tier2_dir")):  # engine YAML, KVBM disk tier
        if own_dir and not any(m.split(":")[0] == own_dir for m in mounts):
            mounts.append(f"{own_dir}:{own_dir}")
    run_argvs = wrap(runtime, argvs, argv_envs, env, mounts, containers)
    base_url = f"http://{host}:{port}"
    health = stack.get("health_path")
    metrics = {k: render(v, all_names, f"{where}: metrics.{k}") for k, v in (stack.get("metrics") or {}).items()}
    models_path = stack.get("models_path", "/v1/models")
    ready_urls = {k: render(v, all_names, f"{where}: ready_urls.{k}") for k, v in (stack.get("ready_urls") or {}).items()}
    if stack.get("proxy") and launched:  # kvharness proxy in front: launched last, stopped first, serves the load
        from kvharness.stacks.proxy import stack_proxy_argv

        pport = _pick_port(stack["proxy"].get("port", "auto"), host, "proxy.port", stack["name"], launched)
        run_argvs.append(stack_proxy_argv(stack["proxy"], all_names, base_url, pport,  # on the host, not in a container
                                          lambda v: render(v, all_names, f"{where}: proxy")))
        base_url = metrics["proxy"] = f"http://{host}:{pport}"
        metrics["proxy"] += "/metrics"
    return LaunchPlan(
        name=stack["name"], kind=stack["kind"], argvs=run_argvs, env=env, host=host, port=port,
        metrics_port=metrics_port, health_url=(base_url + health) if health else None, base_url=base_url,
        metrics_urls=metrics, startup_timeout_s=float(stack.get("startup_timeout_s", 60)),
        log_path=workdir / "server.log", engine_yaml_path=engine_yaml_path, names=all_names,
        held_sockets=list(held.values()),
        models_url=(base_url + models_path) if models_path else None,
        served_model_name=str(names["served_model_name"]) if names.get("served_model_name") is not None else None,
        ready_urls=ready_urls, argv_envs=argv_envs, engine_settings=engine_settings,
        runtime=runtime, containers=containers, stack_argvs=argvs,
    )


def _launch_names(stack: Mapping, names: Mapping[str, object], workdir: Path, host: str, held: dict, launched: bool,
                  check_ports: bool, runtime: Mapping) -> dict:
    """The cell's names plus what the launch decides: interpreter, host, the three ports, directories, held fds."""
    port = held["port"].getsockname()[1] if "port" in held else _pick_port(stack.get("port", "auto"), host, "port", stack["name"], launched)
    metrics_port = (held["metrics_port"].getsockname()[1] if "metrics_port" in held
                    else _pick_port(stack.get("metrics_port"), host, "metrics_port", stack["name"], launched))
    system_port = _pick_port(stack.get("system_port"), host, "system_port", stack["name"], launched)
    all_names = dict(names)
    all_names.update({"python": interpreter(runtime, sys.executable), "host": host, "port": port, "metrics_port": metrics_port,
                      "system_port": system_port, "discovery_dir": str(workdir / "dynamo_store_kv"), "cell_dir": str(workdir.resolve()),
                      "port_fd": _held_fd(held, "port", check_ports),
                      "metrics_port_fd": _held_fd(held, "metrics_port", check_ports)})
    return all_names


def _engine_settings(stack: Mapping, all_names: dict, workdir: Path, where: str) -> tuple[Path | None, dict]:
    """The rendered engine YAML (written to the cell folder) and the settings it holds; without one (the
    simulator, an external endpoint) the engine names the cell hands over."""
    if stack.get("engine_yaml") is None:
        return None, {k: all_names[k] for k in ENGINE_NAMES if all_names.get(k) is not None}
    engine_yaml_path = workdir / "engine.yaml"
    all_names["engine_yaml"] = str(engine_yaml_path)
    rendered = _render_tree(stack["engine_yaml"], all_names, f"{where}: engine_yaml")
    import yaml

    engine_yaml_path.write_text(yaml.safe_dump(rendered, sort_keys=False))
    return engine_yaml_path, rendered


def _stack_argvs(stack: Mapping, all_names: dict, where: str) -> tuple[list[list[str]], list[dict]]:
    """pre_commands then command, rendered, each with the env only it gets."""
    argvs, argv_envs = [], []
    for i, pre in enumerate(stack.get("pre_commands") or []):
        argv, own_env = (pre.get("argv"), pre.get("env") or {}) if isinstance(pre, dict) else (pre, {})
        argvs.append([render(a, all_names, f"{where}: pre_commands[{i}]") for a in argv])
        argv_envs.append({str(k): render(v, all_names, f"{where}: pre_commands[{i}].env.{k}") for k, v in own_env.items()})
    if stack.get("command"):
        argvs.append([render(a, all_names, f"{where}: command") for a in stack["command"]])
        argv_envs.append({})
    return argvs, argv_envs


def terminate_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group, wait up to ``grace_s``, then SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # The leader may be gone while others in its group live on: always sweep the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=2)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(log is empty)"


class RunningStack:
    """Context manager: start on enter (and wait for health), stop the whole tree on exit."""

    def __init__(self, plan: LaunchPlan, poll_s: float = 0.1):
        self.plan = plan
        self.poll_s = poll_s
        self.procs: list[subprocess.Popen] = []
        self._log = None
        self.identity: dict | None = None  # what verify_identity proved about the listeners
        self.stopped_containers: list[list[str]] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> "RunningStack":
        if self.plan.kind == "external":
            return self
        self._log = open(self.plan.log_path, "ab", buffering=0)
        fds = tuple(s.fileno() for s in self.plan.held_sockets)
        try:
            for i, argv in enumerate(self.plan.argvs):
                own = self.plan.argv_envs[i] if i < len(self.plan.argv_envs) else {}
                env = child_env({**self.plan.env, **own})
                try:
                    proc = subprocess.Popen(
                        argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                        pass_fds=fds, **child_popen_kwargs(),
                    )
                except OSError as exc:
                    self.stop()
                    raise StackLaunchError(f"stack {self.plan.name}: cannot start {argv[0]!r}: {exc.strerror}") from None
                self.procs.append(proc)
        finally:
            identity.release(self.plan.held_sockets)  # the stack holds its copies now
        return self

    def verify_identity(self, ready: bool = True) -> dict:
        """Prove the listeners on the stack's ports are processes of this launch (identity.verify_listeners):
        at the first answer (``ready=False``) port and metrics_port; once ready, also the worker's system_port,
        which its process binds later than the frontend binds its port."""
        if self.plan.kind == "external":
            self.identity = identity.external_note(self.plan.name)
            return self.identity
        declared = (self.plan.port, self.plan.metrics_port) + ((self.plan.names.get("system_port"),) if ready else ())
        ports = [p for p in declared if p]
        try:
            self.identity = identity.verify_listeners(self.plan.name, self.plan.host, ports, self.pids, self.plan.argvs)
        except identity.ForeignListener as exc:
            raise StackLaunchError(str(exc)) from None
        return self.identity

    def dead_process(self) -> subprocess.Popen | None:
        return next((p for p in self.procs if p.poll() is not None), None)

    def _check_alive(self) -> None:
        dead = self.dead_process()
        if dead is not None:
            raise StackLaunchError(
                f"stack {self.plan.name}: process {dead.args[0]!r} exited with code {dead.returncode} "
                f"before becoming healthy; last lines of {self.plan.log_path}:\n{log_tail(self.plan.log_path)}"
            )

    def wait_healthy(self) -> float:
        """Wait until the stack is ready (readiness.py: health 200, served model listed by /v1/models, every
        ``ready_urls`` 200); returns seconds waited. Raises StackLaunchError with the log tail."""
        from kvharness.stacks import http
        from kvharness.stacks.readiness import wait_ready

        if not self.plan.health_url and not self.plan.ready_urls:
            self.verify_identity()
            return 0.0
        t0 = time.monotonic()
        deadline = t0 + self.plan.startup_timeout_s
        with http.Client(timeout=2.0) as client:
            try:
                state = wait_ready(client, self.plan.health_url, self.plan.models_url, self.plan.served_model_name,
                                   self.plan.ready_urls, deadline, self.poll_s, self._check_alive, t0,
                                   on_first_answer=lambda: self.verify_identity(ready=False))
            except TimeoutError as exc:
                raise StackLaunchError(
                    f"stack {self.plan.name}: not healthy after {self.plan.startup_timeout_s:.0f} s, waiting for {exc}; "
                    f"last lines of {self.plan.log_path}:\n{log_tail(self.plan.log_path)}"
                ) from None
        self.plan.ready_steps = state.steps
        self.verify_identity()
        return time.monotonic() - t0

    def stop(self, grace_s: float = 5.0) -> None:
        identity.release(self.plan.held_sockets)  # reserved but never handed over (start failed early)
        if self.procs and self.plan.containers:  # a killed docker client leaves its container running
            self.stopped_containers = stop_containers(self.plan.runtime, self.plan.containers[:len(self.procs)], self._log)
        for proc in reversed(self.procs):  # main command first, then what it depends on
            terminate_group(proc, grace_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "RunningStack":
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
