"""Exact KVBM sizes, the host-tier rule, and A/B parity of the real engine YAMLs."""

import pytest
import yaml

from kvharness.stacks.names import template_names
from kvharness.plan.config import ConfigError
from kvharness.stacks.launcher import plan_launch
from kvharness.stacks.sizing import check_host_tier, decimal_gb, workload_max_seq_len

from .conftest import auto_ports, real_cells

GiB = 1 << 30


def test_decimal_gb_is_exact_to_the_byte():
    assert decimal_gb(8 * GiB) == "8.589934592"
    assert decimal_gb(4 * GiB) == "4.294967296"
    assert decimal_gb(10**9) == "1" and decimal_gb(1) == "0.000000001" and decimal_gb(0) == "0"
    assert int(round(float(decimal_gb(64 * GiB)) * 10**9)) == 64 * GiB  # what KVBM computes back


def test_workload_max_seq_len_covers_the_longest_prompt_in_whole_blocks():
    assert workload_max_seq_len({"workload": {"context_tokens": 2048, "output_tokens": 16}}, 32) == 2080
    mixed = {"workload": {"buckets": [{"max_tokens": 500}, {"max_tokens": 3200}], "output_tokens": 16}}
    assert workload_max_seq_len(mixed, 32) == 3232
    assert workload_max_seq_len({"workload": {}}, 32) is None


def _plan(spec, tmp_path):
    names = template_names(spec, tmp_path / "tier2")
    return plan_launch(auto_ports(spec["stack"]), names, tmp_path)


def test_spill_profile_gives_kvbm_exact_block_counts_and_decimal_gb(tmp_path):
    spec = real_cells({"A": "trtllm", "B": "dynamo-kvbm"}, "H8", "spill")["B"]
    plan = _plan(spec, tmp_path)
    worker_env = plan.argv_envs[0]
    block = 64 * 1024 * 32  # llama-3.1-8b fp8: 64 KiB per token x 32 tokens per block = 2 MiB
    assert worker_env["DYN_KVBM_CPU_CACHE_OVERRIDE_NUM_BLOCKS"] == str(4 * GiB // block) == "2048"
    assert worker_env["DYN_KVBM_DISK_CACHE_OVERRIDE_NUM_BLOCKS"] == str(64 * GiB // block) == "32768"
    assert worker_env["DYN_KVBM_CPU_CACHE_GB"] == "4.294967296"      # 4 GiB, not "4" (= 3.73 GiB)
    assert worker_env["DYN_KVBM_DISK_CACHE_GB"] == "68.719476736"
    engine = yaml.safe_load(plan.engine_yaml_path.read_text())
    assert engine["kv_cache_config"]["max_tokens"] == 2 * GiB // (64 * 1024)  # device pool = tier0 exactly
    # the host tier holds at least the device pool (write-through)
    assert int(worker_env["DYN_KVBM_CPU_CACHE_OVERRIDE_NUM_BLOCKS"]) * 32 >= engine["kv_cache_config"]["max_tokens"]


def test_comfy_host_tier_equals_the_device_pool_to_the_block(tmp_path):
    spec = real_cells({"A": "trtllm", "B": "dynamo-kvbm"}, "H8", "comfy")["B"]
    plan = _plan(spec, tmp_path)
    engine = yaml.safe_load(plan.engine_yaml_path.read_text())
    assert int(plan.argv_envs[0]["DYN_KVBM_CPU_CACHE_OVERRIDE_NUM_BLOCKS"]) * 32 == engine["kv_cache_config"]["max_tokens"]


def test_a_host_tier_smaller_than_the_device_pool_is_refused():
    spec = real_cells({"A": "trtllm", "B": "dynamo-kvbm"}, "H8", "spill")["B"]
    spec["tiers"] = {**spec["tiers"], "tier0_bytes": 4 * GiB, "tier1_bytes": 2 * GiB}
    with pytest.raises(ConfigError, match=r"profiles.spill: tier1 \(2 GiB\) is smaller than tier0 \(4 GiB\) for "
                                          r"tiered stack dynamo-kvbm: .*make tier1 >= tier0"):
        check_host_tier(spec)
    check_host_tier(real_cells({"A": "trtllm", "B": "dynamo-kvbm"}, "H8", "spill")["A"])  # memory-only: no rule


@pytest.mark.parametrize("profile", ["comfy", "spill", "stress"])
def test_a_and_b_engine_yamls_differ_only_in_the_connector_and_the_pool(tmp_path, profile):
    cells = real_cells({"A": "trtllm", "B": "dynamo-kvbm"}, "H8", profile)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pa, pb = _plan(cells["A"], tmp_path / "a"), _plan(cells["B"], tmp_path / "b")
    a, b = (yaml.safe_load(p.engine_yaml_path.read_text()) for p in (pa, pb))
    assert b.pop("kv_connector_config")["connector_module"] == "kvbm.trtllm_integration.connector"
    pool_a, pool_b = a["kv_cache_config"].pop("max_tokens"), b["kv_cache_config"].pop("max_tokens")
    assert a == b  # everything else identical
    assert a["max_batch_size"] == 64 and a["max_num_tokens"] == 8192
    assert a["max_seq_len"] == workload_max_seq_len(cells["A"]["load"], 32) == b["max_seq_len"]
    assert a["return_perf_metrics"] is True and a["enable_iter_perf_stats"] is True
    # equal memory: A's device pool = B's device + host tiers
    t = cells["B"]["tiers"]
    assert pool_a * 64 * 1024 == t["tier0_bytes"] + t["tier1_bytes"] and pool_b * 64 * 1024 == t["tier0_bytes"]
    # both command lines carry the same limits
    assert pa.argvs[-1][pa.argvs[-1].index("--max_batch_size") + 1] == pb.argvs[0][pb.argvs[0].index("--max-batch-size") + 1]
    assert pa.engine_settings == yaml.safe_load(pa.engine_yaml_path.read_text())  # recorded in the cell
