"""Readiness = health 200 AND the served model listed by /v1/models AND every ready URL 200.

The stand-in frontend is the simulator with ``--register-after-s``: like Dynamo's frontend it answers
``/health`` 200 at once and lists the model only once "a worker registered"."""

import urllib.request

import pytest

from kvharness.stacks.launcher import RunningStack, StackLaunchError, plan_launch
from kvharness.stacks.readiness import listed_models

SIM = ["{python}", "-m", "kvharness", "sim", "--mode", "A", "--host", "{host}", "--port", "{port}",
       "--served-model-name", "{served_model_name}", "--tier0-bytes", "64MiB", "--speedup", "50"]


def _stack(command, **extra):
    return {"name": "t", "kind": "sim", "command": command, "pre_commands": [], "env": {}, "metrics": {},
            "health_path": "/health", "startup_timeout_s": 20, "port": "auto", **extra}


def _get(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status, r.read().decode()


def test_listed_models_reads_openai_shape():
    assert listed_models('{"object":"list","data":[{"id":"m1"},{"id":"m2"}]}') == ["m1", "m2"]
    assert listed_models('{"object":"list","data":[]}') == []
    assert listed_models("ok") == [] and listed_models('{"data": 3}') == []


def test_health_200_before_the_model_is_listed_is_not_ready(tmp_path):
    plan = plan_launch(_stack(SIM + ["--register-after-s", "1.5"]),
                       {"host": "127.0.0.1", "served_model_name": "m-ready"}, tmp_path)
    with RunningStack(plan, poll_s=0.05) as stack:
        steps = [s["step"] for s in stack.plan.ready_steps]
        assert steps == ["health", "model listed"]
        health_at, model_at = (s["after_s"] for s in stack.plan.ready_steps)
        assert health_at <= model_at
        # what the load would meet right now: the model is there
        status, body = _get(plan.base_url + "/v1/models")
        assert status == 200 and "m-ready" in listed_models(body)


def test_a_model_that_never_appears_times_out_naming_the_step(tmp_path):
    stack = _stack(SIM + ["--register-after-s", "60"], startup_timeout_s=1.5)
    plan = plan_launch(stack, {"host": "127.0.0.1", "served_model_name": "m-late"}, tmp_path)
    with pytest.raises(StackLaunchError, match=r"not healthy after 2 s, waiting for model listed: .*/v1/models "
                                               r"\(last: 'm-late' not listed yet \(listed: none\)\)"):
        with RunningStack(plan, poll_s=0.05):
            pass


def test_a_wrong_served_model_name_is_not_ready(tmp_path):
    """The stack serves another model than the cell asks for: never ready (the load would get 404s)."""
    cmd = [a if a != "{served_model_name}" else "other-model" for a in SIM]
    plan = plan_launch(_stack(cmd, startup_timeout_s=1.5), {"host": "127.0.0.1", "served_model_name": "m"}, tmp_path)
    with pytest.raises(StackLaunchError, match=r"listed: \['other-model'\]"):
        with RunningStack(plan, poll_s=0.05):
            pass


WORKER = (
    "import http.server, sys, time\n"
    "t0 = time.monotonic()\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        ok = time.monotonic() - t0 > float(sys.argv[2])\n"
    "        self.send_response(200 if ok else 503); self.end_headers()\n"
    "        self.wfile.write(b'ready' if ok else b'notready')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def test_worker_system_port_health_gates_readiness(tmp_path):
    """Dynamo: the worker's own /health on DYN_SYSTEM_PORT answers 503 until it is ready."""
    stack = _stack(SIM, system_port="auto",
                   pre_commands=[{"argv": ["{python}", "-c", WORKER, "{system_port}", "1.0"],
                                  "env": {"DYN_SYSTEM_PORT": "{system_port}"}}],
                   ready_urls={"worker": "http://{host}:{system_port}/health"})
    plan = plan_launch(stack, {"host": "127.0.0.1", "served_model_name": "m"}, tmp_path)
    assert plan.argv_envs[0] == {"DYN_SYSTEM_PORT": str(plan.names["system_port"])} and plan.argv_envs[1] == {}
    with RunningStack(plan, poll_s=0.05) as running:
        assert [s["step"] for s in running.plan.ready_steps] == ["health", "model listed", "worker ready"]
        status, body = _get(plan.ready_urls["worker"])
        assert status == 200 and body == "ready"
    # the system port is proven ours too, and is one Dynamo accepts (it parses DYN_SYSTEM_PORT as i16)
    assert set(running.identity["ports"]) == {str(plan.port), str(plan.names["system_port"])}
    assert plan.names["system_port"] <= 32767


def test_a_squatter_on_the_system_port_is_refused(tmp_path):
    """A worker that never binds its system port, and a foreign server answering 200 there: not ours."""
    import subprocess
    import sys

    stack = _stack(SIM, system_port="auto", pre_commands=[["{python}", "-c", "import time; time.sleep(60)"]],
                   ready_urls={"worker": "http://{host}:{system_port}/health"})
    plan = plan_launch(stack, {"host": "127.0.0.1", "served_model_name": "m"}, tmp_path)
    squatter = subprocess.Popen([sys.executable, "-c", WORKER, str(plan.names["system_port"]), "0"])
    try:
        with pytest.raises(StackLaunchError, match=rf"port {plan.names['system_port']} .* not by the launched stack"):
            with RunningStack(plan, poll_s=0.05):
                pass
    finally:
        squatter.kill()
        squatter.wait()
