"""Port identity: a server that is not ours is never measured (issue 18, case 1)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from kvharness.measure.cell import CellFailed, run_cell
from kvharness.stacks import identity, launcher

SQUATTER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers(); self.wfile.write(b'{}')
    do_POST = do_GET
    def log_message(self, *a): pass
srv = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H)
print('up', flush=True)
srv.serve_forever()
"""

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net/tcp")


@pytest.fixture
def squatter():
    procs = []

    def start(port: int) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", SQUATTER, str(port)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "up"
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_listener_of_this_process_is_found_and_attributed():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        found = identity.listeners(port)
        assert [lst.address for lst in found] == ["127.0.0.1"]
        assert identity.socket_owners([found[0].inode])[found[0].inode] == {os.getpid()}
        proven = identity.verify_listeners("me", "127.0.0.1", [port], [os.getpid()])
        assert proven == {"checked": True, "ports": {str(port): [os.getpid()]}}
        with pytest.raises(identity.ForeignListener, match=rf"port {port} on 127.0.0.1 is held by PID {os.getpid()} "):
            identity.verify_listeners("other", "127.0.0.1", [port], [])


def test_tcp6_addresses_decode():
    assert identity._decode_address("0100007F") == "127.0.0.1"
    assert identity._decode_address("00000000000000000000000001000000") == "::1"


def test_container_names_come_from_docker_run_argv():
    argvs = [["docker", "run", "--rm", "--name", "trt-a", "img"], ["/usr/bin/podman", "run", "--name=x", "img"], ["python", "--name", "n"]]
    assert identity.container_names(argvs) == [("docker", "trt-a"), ("/usr/bin/podman", "x")]


def test_a_squatter_between_port_choice_and_bind_fails_the_cell_naming_it(make_cell, tmp_path, monkeypatch, squatter):
    # The stack binds the port itself (like trtllm-serve): the port is chosen, released, and taken
    # by someone else before the stack binds it. That someone answers /health 200 at once.
    held = {}

    def racy_free_port(host="127.0.0.1"):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        held["proc"] = squatter(port)
        return port

    monkeypatch.setattr(launcher, "free_port", racy_free_port)
    spec = make_cell(role="A")
    spec["stack"]["command"] = [sys.executable, "-c", "import time; time.sleep(60)"]  # never binds: keeps running
    out = tmp_path / "cells" / "squat"
    with pytest.raises(CellFailed) as exc:
        run_cell(spec, out)
    pid = held["proc"].pid
    assert f"PID {pid} (" in str(exc.value) and "not by the launched stack" in str(exc.value)
    kept = list(out.parent.glob("squat.failed-*"))
    assert len(kept) == 1 and not out.exists()
    reason = (kept[0] / "reason.txt").read_text()
    assert reason.count("\n") == 1 and f"PID {pid}" in reason and "port" in reason
    assert not (kept[0] / "metrics.jsonl").exists(), "no load may run against the squatter"


def test_the_simulator_inherits_its_reserved_socket_so_a_squatter_cannot_bind(make_cell, tmp_path, monkeypatch):
    grabbed = []
    real_reserve = identity.reserve

    def reserve_then_try_to_squat(host, port=0):
        sock = real_reserve(host, port)
        with socket.socket() as s:
            try:
                s.bind((host, sock.getsockname()[1]))
                grabbed.append(True)
            except OSError:
                grabbed.append(False)
        return sock

    monkeypatch.setattr(identity, "reserve", reserve_then_try_to_squat)
    spec = make_cell(role="B", concurrency=2, duration_s=0.5)
    summary = run_cell(spec, tmp_path / "cells" / "inherit")
    assert grabbed == [False, False]  # API and KVBM metrics port
    assert summary["status"] in ("ok", "degraded") and summary["requests"]["n_ok"] > 0
    ports = summary["listener"]["ports"]
    cell = json.loads((tmp_path / "cells" / "inherit" / "cell.json").read_text())
    assert set(ports) == {str(cell["launch"]["port"]), str(cell["launch"]["metrics_port"])}


def test_an_external_stack_is_exempt_and_says_so(tmp_path):
    plan = launcher.LaunchPlan(name="external", kind="external", argvs=[], env={}, host="127.0.0.1", port=8000,
                               metrics_port=None, health_url=None, base_url="http://127.0.0.1:8000", metrics_urls={},
                               startup_timeout_s=1.0, log_path=tmp_path / "server.log")
    stack = launcher.RunningStack(plan).start()
    assert stack.wait_healthy() == 0.0
    assert stack.identity == {"checked": False,
                              "note": "external stack external: not launched by us, listener identity not checked"}
