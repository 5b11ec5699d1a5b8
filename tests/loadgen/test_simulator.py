"""Against the real simulated stack (`kvharness sim`) in its own process."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("sim") / "sim.log", "w")
    proc = subprocess.Popen([PY, "-m", "kvharness", "sim", "--mode", "A", "--port", str(port), "--served-model-name",
                             "m", "--max-batch-size", "256", "--speedup", "50", "--tier0-bytes", "64GiB"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("simulator did not become healthy")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.mark.slow
def test_thousand_users_against_the_simulator(sim, tmp_path):
    out, summ = tmp_path / "m.jsonl", tmp_path / "s.json"
    r = subprocess.run([PY, "-m", "kvharness", "loadgen", "--base-url", sim, "--model", "m", "--concurrency", "1000",
                        "--context-tokens", "64", "--output-tokens", "4", "--max-requests", "2000", "--duration-s", "60",
                        "--out", str(out), "--summary-out", str(summ)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(summ.read_text())
    assert s["n_ok"] == 2000 and s["n_errors"] == 0, s["error_classes"]
    assert s["max_connections"] == 1000
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(x["prompt_tokens"] == 64 and x["output_tokens"] == 4 for x in recs)


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_mixed_context_lengths_exact_on_the_simulator(sim, tmp_path, endpoint):
    spec = tmp_path / "load.json"
    spec.write_text(json.dumps({"base_url": sim, "model": "m", "endpoint": endpoint, "max_requests": 60,
                                "pattern": {"kind": "closed", "concurrency": 8},
                                "workload": {"kind": "mixed_context", "output_tokens": 2}}))
    out = tmp_path / "m.jsonl"
    r = subprocess.run([PY, "-m", "kvharness", "loadgen", "--spec", str(spec), "--out", str(out), "--summary-out",
                        str(tmp_path / "s.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 60 and all(x["rc"] == 0 for x in recs)
    assert all(x["prompt_tokens"] == x["context_tokens"] for x in recs)
