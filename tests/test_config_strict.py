"""Stricter config (issue 18 case 6): every refusal is one line naming the file and the field."""

import subprocess
import sys
from pathlib import Path

import pytest

from kvharness.plan.config import ConfigError, check_config_files, load_config_file, load_stack, validate_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "workflow" / "tiny.yaml"


def refused(path: Path, *fragments: str) -> str:
    with pytest.raises(ConfigError) as exc:
        check_config_files([ROOT / "configs" / "config.yaml", path])
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_duplicate_keys_name_file_and_line(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("stacks: {A: sim-A}\nsim: {speedup: 2}\nstacks: {A: sim-B}\n")
    refused(p, f"{p}:3:", "duplicate key 'stacks' (first given at line 1)")
    nested = tmp_path / "nested.yaml"
    nested.write_text("profiles:\n  comfy: {tier0: 8GiB, tier0: 4GiB, tier1: 1GiB, tier2: 2GiB}\n")
    refused(nested, f"{nested}:2:", "duplicate key 'tier0'")
    with pytest.raises(ConfigError, match=rf"^{p}:3: duplicate key"):
        load_config_file(p)


@pytest.mark.parametrize("section", ["stacks", "profiles", "hypotheses"])
def test_an_emptied_required_section_is_refused(tmp_path, section):
    p = tmp_path / "empty.yaml"
    p.write_text(f"{section}: {{}}\n")
    refused(p, f"{section}: empty")


def test_a_stack_that_is_not_a_stack_names_the_field(tmp_path):
    p = tmp_path / "passwd.yaml"
    p.write_text("stacks: {A: ../../etc/passwd}\n")
    refused(p, "stacks.A:", "'../../etc/passwd' is neither a stack name")
    with pytest.raises(ConfigError, match=r"stacks\.B: unknown stack 'nope'"):
        validate_config({**load_config_file(TINY), "stacks": {"A": "sim-A", "B": "nope"}})


def test_a_stack_file_with_duplicate_keys_names_its_line(tmp_path):
    stack = tmp_path / "mystack.yaml"
    stack.write_text((ROOT / "configs/stacks/sim-A.yaml").read_text() + "kind: sim\n")
    with pytest.raises(ConfigError, match=rf"^{stack}:\d+: duplicate key 'kind'"):
        load_stack(str(stack), where="stacks.A")
    p = tmp_path / "uses.yaml"
    p.write_text(f"stacks: {{A: {stack}}}\n")
    refused(p, "duplicate key 'kind'")


def test_a_context_beyond_the_models_window_is_refused(tmp_path):
    p = tmp_path / "ctx.yaml"
    p.write_text("hypotheses:\n  H0:\n    stacks: [A]\n    profile: comfy\n    sweep: {concurrency: [1], context_tokens: [1024, 200000]}\n"
                 "    load: {workload: {kind: fixed_context, output_tokens: 16}}\n")
    refused(p, "hypotheses.H0.sweep.context_tokens: 200000 prompt + 16 output tokens exceed",
            "models.llama-3.1-8b.max_context_tokens")
    raw = load_config_file(TINY)
    raw["hypotheses"]["H8"]["load"]["workload"]["buckets"] = [
        {"name": "huge", "min_tokens": 100, "max_tokens": 140000, "weight": 1.0}]
    with pytest.raises(ConfigError, match=r"hypotheses\.H8\.load\.workload\.buckets\.huge\.max_tokens: 140000"):
        validate_config(raw)


def test_a_config_file_that_is_a_list_names_the_file(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- stacks\n- profiles\n")
    refused(p, "expected a mapping of config keys at the top level, got a list")
    with pytest.raises(ConfigError, match=rf"^{p}: expected a mapping"):
        load_config_file(p)


def test_the_workflow_refuses_duplicate_keys_in_one_line(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text(TINY.read_text() + "sim: {speedup: 1}\n")
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                          "--configfile", str(p), "-n"], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if "duplicate key" in ln]
    assert lines == [f"{p}:{len(TINY.read_text().splitlines()) + 1}: duplicate key 'sim' (first given at line 4)"], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
