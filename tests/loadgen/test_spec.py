"""Spec validation: defaults, one-line errors naming the field."""

import pytest

from kvharness.loadgen.spec import H8_BUCKETS, SpecError, validate_spec


def base(**over):
    spec = {"model": "m", "pattern": {"kind": "closed", "concurrency": 4},
            "workload": {"kind": "fixed_context", "context_tokens": 128}, "duration_s": 1.0}
    spec.update(over)
    return spec


def err(spec) -> str:
    with pytest.raises(SpecError) as e:
        validate_spec(spec)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_defaults_filled():
    s = validate_spec(base())
    assert s["stream"] is True and s["endpoint"] == "completions"
    assert s["workload"]["nonce"] == "prefix" and s["workload"]["output_tokens"] == 32
    assert s["pattern"]["think_time_s"] == 0.0
    assert s["slo"] == {"ttft_ms": None, "tpot_ms": None, "e2e_ms": None}


def test_mixed_context_defaults_to_h8_mix():
    s = validate_spec(base(workload={"kind": "mixed_context"}))
    assert s["workload"]["buckets"] == H8_BUCKETS


def test_concurrency_zero_message():
    assert err(base(pattern={"kind": "closed", "concurrency": 0})) == \
        "load spec: pattern.concurrency: expected an integer >= 1, got 0"


def test_unknown_key_named():
    assert err(base(durration_s=3)).startswith("load spec: durration_s: unknown key")
    assert err(base(pattern={"kind": "closed", "concurrency": 1, "thinktime": 1})).startswith(
        "load spec: pattern.thinktime: unknown key")


@pytest.mark.parametrize("over, field", [
    ({"stream": "yes"}, "stream: expected true or false"),
    ({"duration_s": -1}, "duration_s: expected a number > 0"),
    ({"endpoint": "embeddings"}, "endpoint: expected one of"),
    ({"pattern": {"kind": "poisson"}}, "pattern.rate: required key is missing"),
    ({"pattern": {"kind": "warp"}}, "pattern.kind: expected one of"),
    ({"workload": {"kind": "mixed_context", "buckets": [{"name": "a", "min_tokens": 5, "max_tokens": 2,
                                                            "weight": 1}]}}, "workload.buckets[0].max_tokens"),
    ({"labels": {"x": [1]}}, "labels.x: expected a string, number"),
    ({"model": 3}, "model: expected a non-empty string"),
])
def test_wrong_types(over, field):
    assert field in err(base(**over))


def test_lora_count_expands_names():
    s = validate_spec(base(lora={"count": 3, "policy": "hot_cold"}))
    assert s["lora"]["adapters"] == ["lora-0", "lora-1", "lora-2"]


def test_per_user_nonce_gives_each_user_its_own_stable_prompt():
    import json

    from kvharness.loadgen.patterns import Ticket
    from kvharness.loadgen.spec import validate_spec
    from kvharness.loadgen.workloads import make_workload

    spec = validate_spec({"model": "m", "pattern": {"kind": "closed", "concurrency": 2}, "duration_s": 1,
                          "workload": {"kind": "fixed_context", "context_tokens": 40, "nonce": "per_user"}})
    wl = make_workload(spec)
    prompts = [json.loads(wl.next_request(Ticket(0, user=u)).body)["prompt"] for u in (0, 1, 0, 1)]
    assert prompts[0] == prompts[2] and prompts[1] == prompts[3] and prompts[0] != prompts[1]
    assert prompts[0].split()[0] != prompts[1].split()[0]  # users do not share even their first block
    assert len(prompts[0].split()) == 40


def test_per_user_nonce_needs_closed_loop_users():
    import pytest

    from kvharness.loadgen.spec import SpecError, validate_spec

    with pytest.raises(SpecError, match="workload.nonce"):
        validate_spec({"model": "m", "pattern": {"kind": "poisson", "rate": 5}, "duration_s": 1,
                       "workload": {"kind": "fixed_context", "context_tokens": 40, "nonce": "per_user"}})
