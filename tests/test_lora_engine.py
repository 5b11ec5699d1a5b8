"""Resident LoRA slots as an engine setting: per-hypothesis override, the stacks' templates, the cell's working set."""

from pathlib import Path

import pytest
import yaml

from kvharness.measure.cell import resident_adapter_bytes
from kvharness.stacks.names import template_names
from kvharness.plan.config import ConfigError, expand_cells, load_stack, validate_config
from kvharness.stacks.launcher import plan_launch

ROOT = Path(__file__).resolve().parents[1]


def config(**h1):
    raw = yaml.safe_load((ROOT / "configs/config.yaml").read_text())
    raw["hypotheses"] = {"H1": {**raw["hypotheses"]["H1"], **h1}}
    return validate_config(raw)


def test_hypothesis_engine_overrides_the_top_level():
    cells = expand_cells(config(), "H1")
    assert {c["engine"]["max_loras"] for c in cells} == {128}
    assert cells[0]["engine"]["tokens_per_block"] == 32 and cells[0]["engine"]["lora_adapter_bytes"] == 16 << 20
    cells = expand_cells(config(engine={"max_loras": 4, "lora_adapter_bytes": "2MiB"}), "H1")
    assert cells[0]["engine"]["max_loras"] == 4 and cells[0]["engine"]["lora_adapter_bytes"] == 2 << 20


@pytest.mark.parametrize("engine, message", [
    ({"max_lora": 4}, r"hypotheses.H1.engine.max_lora: unknown engine setting"),
    ({"max_loras": "many"}, r"hypotheses.H1.engine.max_loras: expected int"),
    ({"lora_adapter_bytes": "lots"}, r"hypotheses.H1: engine.lora_adapter_bytes: expected a byte size"),
])
def test_bad_engine_overrides_are_one_line_errors(engine, message):
    with pytest.raises(ConfigError, match=message):
        expand_cells(config(engine=engine), "H1")


def test_slots_reach_the_simulator_and_trtllm(tmp_path):
    cell = expand_cells(config(), "H1")[-1]
    names = template_names(cell, tmp_path)
    for stack in ("sim-A", "sim-B"):
        argv = plan_launch(load_stack(stack), names, tmp_path).argvs[-1]
        assert argv[argv.index("--max-loras") + 1] == "128"
        assert argv[argv.index("--lora-adapter-bytes") + 1] == str(16 << 20)
    plan_launch(load_stack("trtllm"), names, tmp_path)
    assert yaml.safe_load((tmp_path / "engine.yaml").read_text())["lora_config"] == {"max_loras": 128}
    off = {**cell, "engine": {**cell["engine"], "max_loras": 0}}
    plan_launch(load_stack("trtllm"), template_names(off, tmp_path), tmp_path)
    assert "lora_config" not in yaml.safe_load((tmp_path / "engine.yaml").read_text())


def test_resident_adapter_bytes():
    cell = expand_cells(config(), "H1")[0]
    assert resident_adapter_bytes(cell, {"lora": {"count": 100}}) == 100 * (16 << 20)
    assert resident_adapter_bytes(cell, {"lora": {"count": 300}}) == 128 * (16 << 20)
    assert resident_adapter_bytes(cell, {}) == 0
    proxied = {**cell, "stack": {**cell["stack"], "proxy": {"resident": 8, "adapter_bytes": "1MiB"}}}
    assert resident_adapter_bytes(proxied, {"lora": {"count": 300}}) == 8 << 20
