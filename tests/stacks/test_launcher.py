"""The launcher really starts processes, waits for health, and tears down whole process groups."""

import os
import re
import socket
import sys
import time

import pytest

from kvharness.plan.config import ConfigError
from kvharness.stacks.launcher import RunningStack, StackLaunchError, plan_launch, render

FORKING_SERVER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print('child-pid', child.pid, flush=True)\n"
    "print('secret-free log line', flush=True)\n"
    "time.sleep(120)\n"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _stack(command, **extra):
    return {"name": "t", "kind": "sim", "command": command, "pre_commands": [], "env": {}, "metrics": {},
            "health_path": "/health", "startup_timeout_s": 1.5, "port": "auto", **extra}


def test_health_timeout_kills_the_whole_process_group(tmp_path):
    plan = plan_launch(_stack(["{python}", "-c", FORKING_SERVER]), {"host": "127.0.0.1"}, tmp_path)
    stack = RunningStack(plan)
    with pytest.raises(StackLaunchError) as info:
        with stack:
            pass
    message = str(info.value)
    assert "not healthy after" in message and "secret-free log line" in message  # the log tail is included
    child_pid = int(re.search(r"child-pid (\d+)", (tmp_path / "server.log").read_text()).group(1))
    leader = stack.procs[0].pid
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (_alive(child_pid) or _alive(leader)):
        time.sleep(0.05)
    assert not _alive(leader) and not _alive(child_pid)


def test_process_exit_before_health_reports_exit_code(tmp_path):
    plan = plan_launch(_stack(["{python}", "-c", "import sys; print('boom'); sys.exit(3)"]), {"host": "127.0.0.1"}, tmp_path)
    with pytest.raises(StackLaunchError, match=r"exited with code 3.*\n.*boom"):
        with RunningStack(plan):
            pass


def test_missing_executable_is_a_clear_error(tmp_path):
    plan = plan_launch(_stack(["definitely-not-a-server-binary"]), {"host": "127.0.0.1"}, tmp_path)
    with pytest.raises(StackLaunchError, match="cannot start 'definitely-not-a-server-binary'"):
        with RunningStack(plan):
            pass


def test_port_in_use_is_refused_before_launch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StackLaunchError, match=f"127.0.0.1:{port} is already in use"):
            plan_launch(_stack(["x"], port=port), {"host": "127.0.0.1"}, tmp_path)


def test_templates_render_per_argv_element_without_a_shell(tmp_path):
    plan = plan_launch(_stack(["{python}", "--name", "{served_model_name}; rm -rf /"],
                              env={"DYN_KVBM_CPU_CACHE_GB": "{tier1_gb}"}),
                       {"host": "127.0.0.1", "served_model_name": "m", "tier1_gb": "4"}, tmp_path)
    assert plan.argvs == [[sys.executable, "--name", "m; rm -rf /"]]  # one argv element, never shell-parsed
    assert plan.env == {"DYN_KVBM_CPU_CACHE_GB": "4"}
    with pytest.raises(ConfigError, match=r"unknown placeholder \{nope\}"):
        render("{nope}", {"a": 1}, "configs/stacks/x.yaml: command")


def test_engine_yaml_keeps_types_of_single_placeholders(tmp_path):
    import yaml

    stack = _stack(["{python}", "{engine_yaml}"], engine_yaml={"kv_cache_config": {"max_tokens": "{tier0_tokens}", "note": "t={tier0_tokens}"}})
    plan = plan_launch(stack, {"host": "127.0.0.1", "tier0_tokens": 4096}, tmp_path)
    written = yaml.safe_load((tmp_path / "engine.yaml").read_text())
    assert written == {"kv_cache_config": {"max_tokens": 4096, "note": "t=4096"}}
    assert plan.argvs[0][1] == str(tmp_path / "engine.yaml")


def test_healthy_server_is_stopped_on_exit(tmp_path):
    server = (
        "import http.server, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
    )
    plan = plan_launch(_stack(["{python}", "-c", server, "{port}"]), {"host": "127.0.0.1"}, tmp_path)
    with RunningStack(plan) as stack:
        pid = stack.pids[0]
        assert _alive(pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)
