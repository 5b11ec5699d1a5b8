"""The real stack configs, run end to end against stand-in executables (tests/stacks/standins): the
rendered command and env per stack x profile, readiness that waits for the model, cold-start
verification, and teardown (docker stop included) on success, failure and interrupt."""

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import yaml

from kvharness.measure.cell import CellFailed, run_cell
from kvharness.stacks.names import template_names
from kvharness.stacks.coldstart import prepare
from kvharness.stacks.launcher import RunningStack, plan_launch
from kvharness.stacks.sizing import workload_max_seq_len

from .conftest import auto_ports, real_cells
from .standins.standin import install

STANDINS = Path(__file__).resolve().parent / "standins"
ROLE = {"trtllm": "A", "dynamo-kvbm": "B", "vllm": "B", "sglang": "B", "external": "B"}
CONTAINER = {"kind": "container", "image": "standin/runtime:test", "mounts": ["/models:/models:ro"]}


@pytest.fixture
def standins(tmp_path, monkeypatch):
    install(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(STANDINS / "pylib"), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("KVH_STANDIN_LOG", str(tmp_path / "standin.jsonl"))
    monkeypatch.setenv("KVH_STANDIN_DOCKER_DIR", str(tmp_path / "docker"))
    monkeypatch.setenv("KVH_STANDIN_REGISTER_AFTER_S", "1.0")

    def log():
        p = tmp_path / "standin.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []
    return log


def _spec(stack, profile, tmp_path, runtime=None, **stack_extra):
    other = "trtllm" if ROLE[stack] == "B" else "dynamo-kvbm"
    roles = {ROLE[stack]: stack, ("B" if ROLE[stack] == "A" else "A"): other}
    spec = real_cells(roles, "H8", profile)[ROLE[stack]]
    spec["stack"] = {**auto_ports(spec["stack"]), **stack_extra}
    if runtime:
        spec["stack"]["runtime"] = runtime
    spec["tier2_root"] = str(tmp_path / "tier2")
    spec["load"].update(duration_s=1.0, concurrency=2)
    spec["model_path"] = "/models/llama-3.1-8b"
    return spec


def _small(spec):
    """A real stack's disk tier is checked against the free space of tier2_root: 1 GiB fits any test machine."""
    spec["tiers"]["tier2_bytes"] = 1 << 30
    return spec


# ----------------------------------------------------------------------- rendering, every stack x profile

@pytest.mark.parametrize("profile", ["comfy", "spill", "stress"])
@pytest.mark.parametrize("stack", ["trtllm", "dynamo-kvbm", "vllm", "sglang", "external"])
def test_rendered_command_and_env_per_stack_and_profile(tmp_path, stack, profile):
    spec = _spec(stack, profile, tmp_path)
    names = template_names(spec, tmp_path / "t2")
    plan = plan_launch(spec["stack"], names, tmp_path)
    t = spec["tiers"]
    block = 64 * 1024 * 32
    if stack == "trtllm":
        argv = plan.argvs[0]
        assert argv[:3] == ["trtllm-serve", "serve", "/models/llama-3.1-8b"]
        assert argv[argv.index("--served_model_name") + 1] == "llama-3.1-8b-instruct"
        assert yaml.safe_load(plan.engine_yaml_path.read_text())["kv_cache_config"]["max_tokens"] * 65536 == t["tier0_bytes"]
    elif stack == "dynamo-kvbm":
        worker, frontend = plan.argvs
        assert worker[1:4] == ["-m", "dynamo.trtllm", "--model"] and frontend[1:3] == ["-m", "dynamo.frontend"]
        assert frontend[frontend.index("--http-host") + 1] == "127.0.0.1"  # its default is 0.0.0.0
        env = plan.argv_envs[0]
        assert int(env["DYN_KVBM_CPU_CACHE_OVERRIDE_NUM_BLOCKS"]) == t["tier1_bytes"] // block
        assert int(env["DYN_KVBM_DISK_CACHE_OVERRIDE_NUM_BLOCKS"]) == t["tier2_bytes"] // block
        assert round(float(env["DYN_KVBM_CPU_CACHE_GB"]) * 1e9) == t["tier1_bytes"]
        assert plan.env["DYN_DISCOVERY_BACKEND"] == "file" and plan.env["DYN_FILE_KV"].startswith(str(tmp_path))
        assert plan.ready_urls == {"worker": f"http://127.0.0.1:{plan.names['system_port']}/health"}
    elif stack == "vllm":
        argv = plan.argvs[0]
        assert argv[:2] == ["vllm", "serve"]
        assert int(argv[argv.index("--num-gpu-blocks-override") + 1]) == t["tier0_bytes"] // block
        cfg = json.loads(argv[argv.index("--kv-transfer-config") + 1])
        extra = cfg["kv_connector_extra_config"]
        assert cfg["kv_connector"] == "OffloadingConnector" and extra["cpu_bytes_to_use"] == t["tier1_bytes"]
        assert extra["secondary_tiers"] == [{"type": "fs", "root_dir": str(tmp_path / "t2")}]
        assert argv[argv.index("--max-model-len") + 1] == str(workload_max_seq_len(spec["load"], 32))
    elif stack == "sglang":
        argv = plan.argvs[0]
        assert argv[1:3] == ["-m", "sglang.launch_server"] and "--enable-hierarchical-cache" in argv
        assert float(argv[argv.index("--hicache-ratio") + 1]) * t["tier0_bytes"] == t["tier1_bytes"]
        assert int(argv[argv.index("--max-total-tokens") + 1]) * 65536 == t["tier0_bytes"]
        assert plan.env["SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR"] == str(tmp_path / "t2")
    else:
        assert plan.argvs == [] and plan.models_url.endswith("/v1/models")


# ----------------------------------------------------------------------- end to end against stand-ins

@pytest.mark.slow
def test_dynamo_kvbm_in_containers_waits_for_the_model_and_stops_every_container(tmp_path, standins):
    spec = _small(_spec("dynamo-kvbm", "spill", tmp_path, runtime=CONTAINER))
    summary = run_cell(spec, tmp_path / "cell")
    assert summary["requests"]["n_ok"] > 0 and summary["cold_start"]["verified"] is True
    steps = {s["step"]: s["after_s"] for s in summary["ready_steps"]}
    assert list(steps) == ["health", "model listed", "worker ready"]
    assert steps["model listed"] >= 1.0  # the frontend said 200 long before it listed the model
    log = standins()
    runs = [r for r in log if r["tool"] == "docker" and r["argv"][0] == "run"]
    assert len(runs) == 2 and all(r["argv"][r["argv"].index("--gpus") + 1] == "all" for r in runs)
    assert all("--ipc" in r["argv"] and "host" in r["argv"] for r in runs)
    worker = next(r for r in log if r["tool"] == "dynamo.trtllm")
    frontend = next(r for r in log if r["tool"] == "dynamo.frontend")
    assert worker["env"]["DYN_KVBM_CPU_CACHE_OVERRIDE_NUM_BLOCKS"] == "2048"       # spill: 4 GiB / 2 MiB blocks
    assert worker["env"]["DYN_KVBM_DISK_CACHE_OVERRIDE_NUM_BLOCKS"] == "512"        # 1 GiB / 2 MiB
    assert worker["env"]["DYN_KVBM_CPU_CACHE_GB"] == "4.294967296"
    assert "DYN_SYSTEM_PORT" not in frontend["env"] and frontend["env"]["DYN_DISCOVERY_BACKEND"] == "file"
    stops = [r["argv"] for r in log if r["tool"] == "docker" and r["argv"][0] == "stop"]
    names = [r["argv"][r["argv"].index("--name") + 1] for r in runs]
    assert sorted(s[-1] for s in stops) == sorted(names)
    assert not list((tmp_path / "docker").glob("*.pid"))  # every container is gone
    cell = json.loads((tmp_path / "cell" / "cell.json").read_text())
    assert cell["launch"]["engine_settings"]["max_batch_size"] == 64
    assert summary["engine_settings"]["kv_connector_config"]["connector_worker_class"] == "DynamoKVBMConnectorWorker"


@pytest.mark.slow
def test_vllm_cold_start_is_reset_and_verified_by_a_probe(tmp_path, standins):
    spec = _small(_spec("vllm", "stress", tmp_path))
    summary = run_cell(spec, tmp_path / "cell")
    cold = summary["cold_start"]
    assert [r["path"] for r in cold["resets"]] == ["/reset_prefix_cache"] * 3 and all(r["status"] == 200 for r in cold["resets"])
    assert cold["checks"]["probe_hits_after_reset"] == 0 and cold["checks"]["hits_at_baseline"] == 0
    assert cold["checks"]["tier2_files_older_than_launch"] == 0 and cold["verified"] is True
    assert summary["requests"]["n_ok"] > 0
    vllm = next(r for r in standins() if r["tool"] == "vllm")
    assert vllm["argv"][0] == "serve" and "--kv-transfer-config" in vllm["argv"]


@pytest.mark.slow
def test_a_reset_that_does_not_empty_the_cache_is_caught(tmp_path, standins):
    """A 'reset' route that leaves the cache warm: the probe hits, the cold start is not verified."""
    spec = _spec("vllm", "stress", tmp_path, cold_start={"reset": [{"method": "GET", "path": "/live"}], "verify": True})
    plan = plan_launch(spec["stack"], template_names(spec, tmp_path / "t2"), tmp_path)
    with RunningStack(plan) as stack:
        cold = prepare(stack.plan, spec["stack"]["cold_start"], tmp_path / "t2", fresh=True)
    assert cold["checks"]["probe_hits_after_reset"] > 0 and cold["verified"] is False


@pytest.mark.slow
def test_failed_readiness_in_containers_still_stops_them(tmp_path, standins, monkeypatch):
    monkeypatch.setenv("KVH_STANDIN_REGISTER_AFTER_S", "600")  # the model never appears
    spec = _small(_spec("dynamo-kvbm", "comfy", tmp_path, runtime=CONTAINER, startup_timeout_s=3))
    with pytest.raises(CellFailed, match="waiting for model listed"):
        run_cell(spec, tmp_path / "cell")
    log = standins()
    names = [r["argv"][r["argv"].index("--name") + 1] for r in log if r["tool"] == "docker" and r["argv"][0] == "run"]
    stops = [r["argv"][-1] for r in log if r["tool"] == "docker" and r["argv"][0] == "stop"]
    assert len(names) == 2 and sorted(stops) == sorted(names)
    assert not list((tmp_path / "docker").glob("*.pid"))
    failed = next(tmp_path.glob("cell.failed-*"))
    assert "not listed yet" in (failed / "reason.txt").read_text()


@pytest.mark.slow
def test_interrupted_cell_stops_its_container(tmp_path, standins):
    spec = _small(_spec("trtllm", "comfy", tmp_path, runtime=CONTAINER))
    spec["load"]["duration_s"] = 30.0
    timer = threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with pytest.raises(CellFailed, match="interrupted"):
            run_cell(spec, tmp_path / "cell")
    finally:
        timer.cancel()
    log = standins()
    run = next(r for r in log if r["tool"] == "docker" and r["argv"][0] == "run")
    inner = run["argv"][run["argv"].index("standin/runtime:test") + 1:]
    assert inner[:2] == ["trtllm-serve", "serve"]
    stops = [r["argv"] for r in log if r["tool"] == "docker" and r["argv"][0] == "stop"]
    assert [s[-1] for s in stops] == [run["argv"][run["argv"].index("--name") + 1]]
    assert not list((tmp_path / "docker").glob("*.pid"))


@pytest.mark.slow
def test_sglang_flush_cache_cold_start(tmp_path, standins):
    summary = run_cell(_small(_spec("sglang", "spill", tmp_path)), tmp_path / "cell")
    cold = summary["cold_start"]
    assert {r["path"] for r in cold["resets"]} == {"/flush_cache"} and cold["checks"]["probe_hits_after_reset"] == 0
    assert cold["verified"] is True and summary["requests"]["n_ok"] > 0
    launched = next(r for r in standins() if r["tool"] == "sglang.launch_server")
    assert "/H8/sglang" in launched["env"]["SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR"]


@pytest.mark.slow
def test_external_endpoint_is_ready_only_with_the_model_and_reset_between_cells(tmp_path, standins):
    """An endpoint that outlives the cell: nothing launched or stopped; readiness still waits for the
    model, and its reset route is verified by the probe."""
    (tmp_path / "srv").mkdir()
    plan = plan_launch({"name": "ext-server", "kind": "sim", "port": "auto", "pre_commands": [], "env": {},
                        "metrics": {}, "health_path": "/health", "startup_timeout_s": 20,
                        "command": ["{python}", "-m", "kvharness", "sim", "--mode", "A", "--host", "{host}",
                                    "--port", "{port}", "--served-model-name", "{served_model_name}",
                                    "--tier0-bytes", "256MiB", "--speedup", "50", "--register-after-s", "1.0"]},
                       {"host": "127.0.0.1", "served_model_name": "llama-3.1-8b-instruct"}, tmp_path / "srv")
    server = RunningStack(plan).start()
    try:
        spec = _spec("external", "spill", tmp_path, port=plan.port,
                     metrics={"engine": f"http://127.0.0.1:{plan.port}/metrics"},
                     cold_start={"reset": [{"method": "POST", "path": "/reset_prefix_cache"}], "verify": True})
        summary = run_cell(spec, tmp_path / "cell")
        assert [s["step"] for s in summary["ready_steps"]] == ["health", "model listed"]
        assert summary["ready_steps"][1]["after_s"] >= summary["ready_steps"][0]["after_s"]
        cold = summary["cold_start"]
        assert cold["checks"]["probe_hits_after_reset"] == 0 and "hits_at_baseline" not in cold["checks"]
        assert summary["requests"]["n_ok"] > 0
        assert server.dead_process() is None  # the cell did not stop what it did not start
    finally:
        server.stop()
