"""Where a stack runs: host, a named interpreter, or a container (docker run ... / docker stop)."""

import pytest

from kvharness.plan.config import ConfigError, load_stack
from kvharness.stacks.launcher import plan_launch


def _stack(**extra):
    return {"name": "t", "kind": "dynamo", "command": ["{python}", "-m", "dynamo.frontend", "--http-port", "{port}"],
            "pre_commands": [{"argv": ["{python}", "-m", "dynamo.trtllm"], "env": {"DYN_SYSTEM_PORT": "7001"}}],
            "env": {"DYN_DISCOVERY_BACKEND": "file", "HF_TOKEN": "{hf_token}"}, "metrics": {},
            "health_path": "/health", "startup_timeout_s": 1, "port": "auto", **extra}


NAMES = {"host": "127.0.0.1", "served_model_name": "m", "hf_token": "hf_secret_value", "tier2_dir": "/nvme/t2/H8/c"}


def test_venv_runtime_names_the_interpreter(tmp_path):
    plan = plan_launch(_stack(runtime={"kind": "venv", "python": "/opt/dynamo/venv/bin/python"}), NAMES, tmp_path)
    assert [a[0] for a in plan.argvs] == ["/opt/dynamo/venv/bin/python"] * 2
    assert plan.containers == []


def test_container_runtime_wraps_every_process_in_docker_run(tmp_path):
    rt = {"kind": "container", "image": "nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:x", "mounts": ["/models:/models:ro"]}
    plan = plan_launch(_stack(runtime=rt), NAMES, tmp_path)
    worker, frontend = plan.argvs
    assert worker[:11] == ["docker", "run", "--rm", "--name", plan.containers[0], "--gpus", "all",
                           "--ipc", "host", "--network", "host"]
    assert worker[worker.index(rt["image"]) + 1:] == ["python3", "-m", "dynamo.trtllm"]
    assert frontend[frontend.index(rt["image"]) + 1:][:3] == ["python3", "-m", "dynamo.frontend"]
    mounts = [worker[i + 1] for i, a in enumerate(worker) if a == "-v"]
    cell = str(tmp_path.resolve())
    assert mounts == ["/models:/models:ro", f"{cell}:{cell}", "/nvme/t2/H8/c:/nvme/t2/H8/c"]
    envs = [worker[i + 1] for i, a in enumerate(worker) if a == "-e"]
    assert envs == ["DYN_DISCOVERY_BACKEND", "DYN_SYSTEM_PORT", "HF_TOKEN"]  # names only: values stay out of argv
    assert "hf_secret_value" not in " ".join(worker + frontend)
    assert "DYN_SYSTEM_PORT" not in [frontend[i + 1] for i, a in enumerate(frontend) if a == "-e"]
    assert plan.stack_argvs[1][:3] == ["python3", "-m", "dynamo.frontend"]
    assert len(set(plan.containers)) == 2 and all(c.startswith("kvh-t-") for c in plan.containers)


@pytest.mark.parametrize("runtime, message", [
    ({"kind": "vm"}, "runtime.kind: expected host, venv or container"),
    ({"kind": "venv"}, "runtime.python: a venv runtime needs the interpreter path"),
    ({"kind": "container"}, "runtime.image: a container runtime needs an image"),
    ({"kind": "container", "image": "x", "mounts": ["/a"]}, "runtime.mounts: expected a list"),
    ({"kind": "host", "image": "x"}, "runtime.image: not a setting of a host runtime"),
])
def test_bad_runtime_is_one_line_naming_file_and_key(tmp_path, runtime, message):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"kind": "vllm", "command": ["vllm"], "runtime": runtime}))
    with pytest.raises(ConfigError, match=f"{path}: {message}"):
        load_stack(str(path))


def test_unknown_stack_key_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kind: vllm\ncommand: [vllm]\nready_url: http://x\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown key 'ready_url'"):
        load_stack(str(path))


def test_trtllm_json_metrics_route_is_refused(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text('kind: trtllm\ncommand: [trtllm-serve]\nmetrics: {engine: "http://{host}:{port}/metrics"}\n')
    with pytest.raises(ConfigError, match=f"{path}: metrics.engine: trtllm-serve's JSON /metrics drains"):
        load_stack(str(path))
    path.write_text('kind: trtllm\ncommand: [trtllm-serve]\nmetrics: {engine: "http://{host}:{port}/prometheus/metrics"}\n')
    load_stack(str(path))
