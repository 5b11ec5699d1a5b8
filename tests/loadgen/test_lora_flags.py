"""The v3.3 LoRA flags map onto the spec's lora block; adapters land in records and in the summary."""

import argparse
import json
import subprocess
import sys

import pytest

from kvharness.loadgen import cli
from kvharness.loadgen.lora import apply_lora_flags, per_adapter
from kvharness.loadgen.spec import SpecError, validate_spec


def parse(*argv):
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(list(argv))


def spec_of(*argv):
    return validate_spec(cli.build_spec(parse("--model", "m", *argv)))


def test_count_and_mode_map_onto_the_lora_block():
    s = spec_of("--lora-adapter-count", "5", "--lora-churn-mode", "hot_cold", "--lora-hot-ratio", "0.4",
                "--lora-hot-prob", "0.9")
    assert s["lora"]["adapters"] == [f"lora-{i}" for i in range(5)]
    assert (s["lora"]["policy"], s["lora"]["hot_ratio"], s["lora"]["hot_prob"]) == ("hot_cold", 0.4, 0.9)


def test_underscored_v33_spelling_is_accepted():
    s = spec_of("--lora_adapter_count", "3", "--lora_churn_mode", "random")
    assert s["lora"]["count"] == 3 and s["lora"]["policy"] == "random"


def test_list_from_comma_list_and_file(tmp_path):
    assert spec_of("--lora-adapter-list", "a, b,c")["lora"]["adapters"] == ["a", "b", "c"]
    f = tmp_path / "adapters.txt"
    f.write_text("# names\nx1\n\nx2  # second\n")
    assert spec_of("--lora-adapter-list", str(f))["lora"]["adapters"] == ["x1", "x2"]


def test_flags_override_a_spec_file(tmp_path):
    f = tmp_path / "load.json"
    f.write_text(json.dumps({"model": "m", "pattern": {"kind": "closed", "concurrency": 1},
                             "workload": {"kind": "fixed_context", "context_tokens": 8}, "duration_s": 1,
                             "lora": {"adapters": ["p", "q"], "policy": "random"}}))
    s = validate_spec(cli.build_spec(parse("--spec", str(f), "--lora-adapter-count", "4")))
    assert s["lora"]["count"] == 4 and s["lora"]["policy"] == "random"


def test_no_flags_leave_lora_off():
    assert spec_of()["lora"] is None


def test_bad_values_are_one_line_errors():
    with pytest.raises(SpecError, match="lora.hot_ratio"):
        spec_of("--lora-adapter-count", "2", "--lora-hot-ratio", "0")
    with pytest.raises(SpecError, match="--lora-adapter-list"):
        apply_lora_flags({}, parse("--lora-adapter-list", " , "))


def test_per_adapter_counts_and_ttft():
    recs = [{"adapter_id": "a", "rc": 0, "lat_ttft_ms": 10.0}, {"adapter_id": "a", "rc": 0, "lat_ttft_ms": 30.0},
            {"adapter_id": "b", "rc": -1, "error_class": "timeout", "lat_ttft_ms": None}, {"adapter_id": None, "rc": 0}]
    out = per_adapter(recs)
    assert set(out) == {"a", "b"}
    assert out["a"]["n"] == 2 and out["a"]["n_ok"] == 2 and out["a"]["ttft_ms_p50"] == pytest.approx(20.0)
    assert out["b"] == {"n": 1, "n_ok": 0, "n_errors": 1, "ttft_ms_p50": None, "ttft_ms_p99": None}
    assert per_adapter([{"rc": 0}]) is None


def test_end_to_end_records_and_summary(server, tmp_path):
    out, summ = tmp_path / "m.jsonl", tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "kvharness", "loadgen", "--base-url", server.base_url, "--model", "m",
                        "--concurrency", "2", "--context-tokens", "20", "--output-tokens", "2", "--max-requests", "12",
                        "--lora-adapter-list", "ad1,ad2,ad3", "--lora-churn-mode", "round_robin",
                        "--out", str(out), "--summary-out", str(summ)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted({x["adapter_id"] for x in recs}) == ["ad1", "ad2", "ad3"]
    assert all(body["model"] in ("ad1", "ad2", "ad3") for body in server.requests)
    s = json.loads(summ.read_text())
    assert sum(v["n"] for v in s["per_adapter"].values()) == len(recs) == 12
