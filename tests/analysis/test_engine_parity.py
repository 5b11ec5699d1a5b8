"""H8 names every engine setting in which B differs from A beyond the KV connector and the pool."""

from kvharness.analysis.h8 import H8_COLUMNS, engine_diff

A = {"max_batch_size": 64, "max_num_tokens": 8192, "kv_cache_config": {"max_tokens": 98304, "enable_block_reuse": True}}
B = {"max_batch_size": 64, "max_num_tokens": 8192, "kv_cache_config": {"max_tokens": 32768, "enable_block_reuse": True},
     "kv_connector_config": {"connector_module": "kvbm.trtllm_integration.connector"}}


def test_identical_but_for_connector_and_pool():
    assert engine_diff(A, B) == ""


def test_a_real_difference_is_named():
    b = {**B, "max_batch_size": 32, "return_perf_metrics": True}
    assert engine_diff(A, b) == "max_batch_size: 64 vs 32;return_perf_metrics: None vs True"
    assert engine_diff(A, None) is None


def test_h8_table_has_the_parity_column():
    assert "engine_diff_vs_A" in H8_COLUMNS  # filled per stack from each cell's summary.json engine_settings
