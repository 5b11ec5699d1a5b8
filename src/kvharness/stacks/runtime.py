"""Where a stack's processes run: on the host, with a named interpreter (venv), or in a container.

``runtime`` in a stack config (validated in config.load_stack):

- ``{kind: host}`` (default): argv as written; ``{python}`` is the harness's own interpreter, which has no
  ``dynamo``/``vllm``/``sglang`` module unless they were installed into it.
- ``{kind: venv, python: /opt/dynamo/venv/bin/python}``: ``{python}`` is that interpreter.
- ``{kind: container, image: ..., mounts: [...], gpus: all, docker: docker, extra_args: [...], python: python3}``:
  every argv runs as ``docker run --rm --name <unique> --gpus all --ipc host --network host -v ... -e NAME ...
  <image> <argv>``. The cell folder and the tier-2 directory are mounted at their own paths (the engine
  YAML and the KVBM disk tier live there). Environment values never appear in the argv: ``-e NAME`` makes
  docker copy the value from the client's environment, which the launcher sets. Teardown runs
  ``docker stop <name>`` for every container (also when the cell fails or is interrupted), then signals
  the client's process group.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path

DEFAULT_STOP_TIMEOUT_S = 30


def interpreter(runtime: dict | None, default: str) -> str:
    """What ``{python}`` means for this runtime."""
    rt = runtime or {"kind": "host"}
    if rt["kind"] == "venv":
        return str(rt["python"])
    if rt["kind"] == "container":
        return str(rt.get("python", "python3"))
    return default


def container_name(stack: str, cell_dir: Path, index: int) -> str:
    """A name unique to this cell and process (docker allows [a-zA-Z0-9][a-zA-Z0-9_.-]*)."""
    raw = f"kvh-{stack}-{cell_dir.name}-{index}-{os.getpid()}"
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", raw)[:120]


def wrap(runtime: dict | None, argvs: list[list[str]], envs: list[dict[str, str]], common_env: dict[str, str],
         mounts: list[str], names: list[str]) -> list[list[str]]:
    """The argvs as they are started: unchanged on the host or in a venv, inside ``docker run`` otherwise."""
    rt = runtime or {"kind": "host"}
    if rt["kind"] != "container":
        return argvs
    docker = str(rt.get("docker", "docker"))
    out = []
    for argv, own, name in zip(argvs, envs, names):
        cmd = [docker, "run", "--rm", "--name", name, "--gpus", str(rt.get("gpus", "all")),
               "--ipc", "host", "--network", "host"]
        for m in mounts:
            cmd += ["-v", m]
        for key in sorted({**common_env, **own}):
            cmd += ["-e", key]
        cmd += [str(a) for a in rt.get("extra_args", []) or []]
        cmd += [str(rt["image"]), *argv]
        out.append(cmd)
    return out


def stop_containers(runtime: dict | None, names: list[str], log=None) -> list[list[str]]:
    """``docker stop`` every container of the stack, newest first; returns the commands run."""
    rt = runtime or {"kind": "host"}
    if rt["kind"] != "container":
        return []
    docker = str(rt.get("docker", "docker"))
    timeout = int(rt.get("stop_timeout_s", DEFAULT_STOP_TIMEOUT_S))
    ran = []
    for name in reversed(names):
        cmd = [docker, "stop", "-t", str(timeout), name]
        ran.append(cmd)
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL,
                           stderr=log or subprocess.DEVNULL, timeout=timeout + 15, check=False)
    return ran
