"""Prove that the server answering on a stack's port is the stack we launched, not a squatter.

``port: auto`` used to pick a free port, release it, and let the stack bind it later: anything that
grabbed the port in between answered ``/health`` and was measured as ours. Two defences live here:

* :func:`reserve` binds and listens on the port *in the harness* and keeps the socket, so nobody else
  can take it; a stack whose argv names ``{port_fd}`` inherits that very socket (``kvharness sim
  --fd N``), so there is no window at all.
* :func:`verify_listeners` runs once the stack answers its health check: every listening socket that
  could answer ``host:port`` (``/proc/net/tcp`` and ``tcp6``, by inode) must be held by a process of
  the launched tree (descendants or session members of the processes we started, plus the PIDs
  ``docker inspect`` reports for a container we started). Anything else is a one-line failure that
  names the port and the foreign PID and command.

``external`` stacks are not launched by us, so there is nothing to prove; :func:`external_note` says
so in the cell. Linux only (``/proc``); elsewhere the check reports itself as skipped.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from kvharness.errors import StackLaunchError

PROC = Path("/proc")
TCP_LISTEN = "0A"
CONTAINER_TOOLS = ("docker", "podman")


class ForeignListener(RuntimeError):
    """The port is served by a process that is not part of the launched stack (one line)."""


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    inode: int


def reserve(host: str, port: int = 0) -> socket.socket:
    """A listening socket on ``host:port`` (0 = a free port), kept by the harness until the stack inherits it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def reserve_ports(stack: dict, host: str) -> dict[str, socket.socket]:
    """Reserved sockets for ``port``/``metrics_port`` of a stack whose argv inherits them
    (``{port_fd}``/``{metrics_port_fd}``); a fixed port that is taken is a one-line StackLaunchError."""
    text = " ".join(str(a) for argv in [stack.get("command") or [], *(stack.get("pre_commands") or [])] for a in argv)
    text += " ".join(str(v) for v in (stack.get("env") or {}).values())
    held: dict[str, socket.socket] = {}
    for key in ("port", "metrics_port"):
        value = stack.get(key, "auto" if key == "port" else None)
        if value is None or "{" + key + "_fd}" not in text:
            continue
        try:
            held[key] = reserve(host, 0 if value == "auto" else int(value))
        except OSError as exc:
            release(held.values())
            raise StackLaunchError(f"stack {stack['name']}: {key} {host}:{value} is already in use ({exc.strerror}); "
                                   f"stop what holds it or set {key}: auto") from None
    return held


def release(sockets: Iterable[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


# --------------------------------------------------------------------------- /proc readers


def _decode_address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # tcp6: four 32-bit words, each in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listeners(port: int, proc_root: Path = PROC) -> list[Listener]:
    """Every socket in LISTEN state on ``port`` in this network namespace."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_root / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != TCP_LISTEN:
                continue
            addr_hex, port_hex = parts[1].split(":")
            if int(port_hex, 16) != port:
                continue
            found.append(Listener(_decode_address(addr_hex), port, int(parts[9])))
    return found


def _could_answer(listener: Listener, host: str) -> bool:
    """Whether a connection to ``host`` may land on ``listener`` (same address, or a wildcard bind)."""
    try:
        addr = ipaddress.ip_address(listener.address)
    except ValueError:
        return True
    if addr.is_unspecified:
        return True
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    try:
        targets = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, ValueError):
        return True
    return addr in targets


def socket_owners(inodes: Iterable[int], proc_root: Path = PROC) -> dict[int, set[int]]:
    """inode -> PIDs holding it as an open fd (processes we may not inspect are simply not listed)."""
    wanted = {f"socket:[{i}]": i for i in inodes}
    owners: dict[int, set[int]] = {i: set() for i in wanted.values()}
    if not wanted:
        return owners
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(entry / "fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target in wanted:
                    owners[wanted[target]].add(int(entry.name))
    return owners


def _stat(pid: int, proc_root: Path = PROC) -> tuple[int, int, int] | None:
    """(ppid, pgrp, session) of ``pid``, or None when it is gone."""
    try:
        text = (proc_root / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[2]), int(fields[3])


def process_tree(roots: Iterable[int], proc_root: Path = PROC) -> set[int]:
    """``roots``, their descendants, and every member of their sessions or process groups.

    The launcher starts each command in its own session (session id = its PID), so a server that
    daemonized away from its parent is still found by its session.
    """
    roots = set(roots)
    table = {}
    for entry in proc_root.iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name), proc_root)
            if st is not None:
                table[int(entry.name)] = st
    tree = set(roots) | {pid for pid, (_, pgrp, sid) in table.items() if sid in roots or pgrp in roots}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(tree)
    while todo:
        for kid in children.get(todo.pop(), ()):
            if kid not in tree:
                tree.add(kid)
                todo.append(kid)
    return tree


def describe_pid(pid: int, proc_root: Path = PROC) -> str:
    try:
        cmd = " ".join((proc_root / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split())
    except OSError:
        cmd = ""
    if not cmd:
        try:
            cmd = f"[{(proc_root / str(pid) / 'comm').read_text().strip()}]"
        except OSError:
            cmd = "?"
    return f"PID {pid} ({cmd[:120]})"


# --------------------------------------------------------------------------- containers


def container_names(argvs: Iterable[list[str]]) -> list[tuple[str, str]]:
    """(tool, name) of every ``docker|podman run --name NAME`` among the launched argvs."""
    found = []
    for argv in argvs:
        if not argv or Path(argv[0]).name not in CONTAINER_TOOLS or "run" not in argv:
            continue
        for i, arg in enumerate(argv):
            if arg == "--name" and i + 1 < len(argv):
                found.append((argv[0], argv[i + 1]))
            elif arg.startswith("--name="):
                found.append((argv[0], arg.split("=", 1)[1]))
    return found


def container_publishes(argvs: Iterable[list[str]], port: int) -> bool:
    """Whether a container we started publishes host ``port`` (``docker port NAME``): its listener is
    then the engine's proxy, a root process whose fds this user cannot read."""
    for tool, name in container_names(argvs):
        try:
            out = subprocess.run([shutil.which(tool) or tool, "port", name], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if any(line.rstrip().endswith(f":{port}") for line in out.stdout.splitlines()):
            return True
    return False


def container_pids(argvs: Iterable[list[str]]) -> set[int]:
    """Host PIDs of the containers we started, as ``docker inspect`` reports them (empty if unknown)."""
    pids = set()
    for tool, name in container_names(argvs):
        exe = shutil.which(tool) or tool
        try:
            out = subprocess.run([exe, "inspect", "--format", "{{.State.Pid}}", name],
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        for word in out.stdout.split():
            if word.isdigit() and int(word) > 0:
                pids.add(int(word))
    return pids


# --------------------------------------------------------------------------- the check


def verify_listeners(stack_name: str, host: str, ports: Iterable[int], roots: Iterable[int],
                     argvs: Iterable[list[str]] = (), proc_root: Path = PROC) -> dict:
    """Raise :class:`ForeignListener` unless every listener that could answer each port is ours.

    Returns what was proven, for the cell's summary: ``{"checked": True, "ports": {port: [pids]}}``.
    """
    if not (proc_root / "net" / "tcp").exists():
        return {"checked": False, "note": "no /proc/net/tcp on this system: listener identity not checked"}
    argvs = list(argvs)
    roots = set(roots) | container_pids(argvs)
    tree = None
    proven: dict[int, list[int]] = {}
    for port in ports:
        found = [lst for lst in listeners(port, proc_root) if _could_answer(lst, host)]
        if not found:
            raise ForeignListener(f"stack {stack_name}: nothing listens on {host}:{port} although it answered "
                                  "(another network namespace?); refusing to measure it")
        owners = socket_owners([lst.inode for lst in found], proc_root)
        tree = tree if tree is not None else process_tree(roots, proc_root)
        ours = set()
        for lst in found:
            pids = owners[lst.inode]
            foreign = sorted(pids - tree)
            if not pids and container_publishes(argvs, port):
                continue
            if foreign or not pids:
                who = describe_pid(foreign[0], proc_root) if foreign else "a process this user cannot inspect"
                raise ForeignListener(
                    f"stack {stack_name}: port {port} on {lst.address} is held by {who}, not by the launched stack; "
                    "refusing to measure a server that is not ours")
            ours |= pids
        proven[port] = sorted(ours)
    return {"checked": True, "ports": {str(p): pids for p, pids in proven.items()}}


def external_note(stack_name: str) -> dict:
    return {"checked": False, "note": f"external stack {stack_name}: not launched by us, listener identity not checked"}
