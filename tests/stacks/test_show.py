"""kvharness cell --show: every argv, container argument and env of a cell, secrets redacted."""

import re
import subprocess
import sys

import pytest
import yaml

from kvharness.plan.config import CONFIG_DIR, expand_cells, load_config_file
from kvharness.stacks.show import describe_cell
from kvharness.stacks.sizing import workload_max_seq_len

from .conftest import real_cells


def test_show_prints_docker_run_env_and_engine_yaml_with_secrets_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_showPlantedSecret123")
    spec = real_cells({"A": "trtllm", "B": "dynamo-kvbm"}, "H8", "spill")["B"]
    spec["stack"]["runtime"] = {"kind": "container", "image": "dynamo:rt", "mounts": ["/models:/models:ro"]}
    spec["stack"]["env"] = {**spec["stack"]["env"], "HF_TOKEN": "hf_showPlantedSecret123", "NGC_API_KEY": "nvapi-abcdef"}
    spec["tier2_root"] = str(tmp_path / "t2")
    text = describe_cell(spec)
    assert "hf_showPlantedSecret123" not in text and "nvapi-abcdef" not in text
    assert "HF_TOKEN=" in text and "NGC_API_KEY=" in text
    assert text.count("docker run --rm --name kvh-dynamo-kvbm-") == 2
    assert "--gpus all --ipc host --network host -v /models:/models:ro" in text
    assert "DYN_KVBM_CPU_CACHE_OVERRIDE_NUM_BLOCKS=2048" in text
    assert "teardown: docker stop kvh-dynamo-kvbm-" in text
    assert "lists 'llama-3.1-8b-instruct'" in text and "(worker)" in text
    assert "kv_connector_config:" in text and f"max_seq_len: {workload_max_seq_len(spec['load'], 32)}" in text


def test_show_marks_a_refused_cell(tmp_path):
    spec = real_cells({"A": "trtllm", "B": "dynamo-kvbm"}, "H8", "spill")["B"]
    spec["tiers"] = {**spec["tiers"], "tier0_bytes": 8 << 30}
    spec["tier2_root"] = str(tmp_path / "t2")
    assert "# REFUSED: profiles.spill: tier1 (4 GiB) is smaller than tier0 (8 GiB)" in describe_cell(spec)


SHIPPED = sorted(p.stem for p in (CONFIG_DIR / "stacks").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_show_works_for_every_shipped_stack_config(name, tmp_path):
    role = yaml.safe_load((CONFIG_DIR / "stacks" / f"{name}.yaml").read_text()).get("role", "A")
    other = {"A": "sim-B", "B": "sim-A"}[role]  # the partner: a simulated stack of the other role
    spec = real_cells({role: name, "A" if role == "B" else "B": other}, "H8")[role]
    spec["tier2_root"] = str(tmp_path / "t2")
    text = describe_cell(spec)
    assert f"stack {name} (role {role}" in text and "ready when: " in text
    assert not re.search(r"\{[a-z_0-9]+\}", text), text  # every placeholder has a value


def test_readme_show_command_lists_every_h8_cell():
    r = subprocess.run([sys.executable, "-m", "kvharness", "cell", "--hyp", "H8", "--show"], capture_output=True,
                       text=True, timeout=120, cwd=CONFIG_DIR.parent)
    assert r.returncode == 0, r.stderr
    planned = len(expand_cells(load_config_file(CONFIG_DIR / "config.yaml"), "H8"))
    assert planned >= 28 and r.stdout.count("# cell H8/") == planned
    assert "--fd '<fd of the port socket>'" in r.stdout


def test_paper_h8_show_prints_no_port_dynamo_would_refuse(tmp_path):
    """`kvharness cell --config configs/paper.yaml --hyp H8 --show`: every port <= 32767 (Dynamo reads
    DYN_SYSTEM_PORT as i16; the paper stacks' other ports are fixed below that too)."""
    import re
    import subprocess
    import sys

    from kvharness.plan.config import CONFIG_DIR

    out = subprocess.run([sys.executable, "-m", "kvharness", "cell", "--config", str(CONFIG_DIR / "paper.yaml"),
                          "--hyp", "H8", "--show"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    ports = [int(p) for p in re.findall(r"(?:PORT=|port |:)(\d{2,5})\b", out.stdout)]
    assert "DYN_SYSTEM_PORT=" in out.stdout and ports and max(ports) <= 32767, sorted(set(ports))
