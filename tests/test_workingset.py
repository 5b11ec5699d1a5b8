"""Working-set arithmetic against hand-computed answers."""

from kvharness.plan.workingset import working_set, working_set_tokens

TIERS = {"tier0_bytes": 100 * 1024, "tier1_bytes": 200 * 1024, "tier2_bytes": 10**9}


def _load(**w):
    return {"concurrency": 4, "pattern": {"kind": "closed"},
            "workload": {"kind": "fixed_context", "context_tokens": 1000, "output_tokens": 16, **w}}


def test_per_request_nonce_has_nothing_reusable():
    t = working_set_tokens(_load(nonce="prefix"))
    assert t["reusable_tokens"] == 0 and t["inflight_tokens"] == 4000


def test_per_user_nonce_reuses_one_prompt_per_user():
    t = working_set_tokens(_load(nonce="per_user"))
    assert t["reusable_tokens"] == 4000 and t["inflight_tokens"] == 0


def test_prefix_groups_set_the_working_set_independent_of_concurrency():
    t = working_set_tokens(_load(nonce="prefix", shared_prefix_ratio=1.0, prefix_groups=7))
    assert t["reusable_tokens"] == 7000 and t["inflight_tokens"] == 0


def test_bytes_and_tier_position():
    ws = working_set(_load(nonce="per_user"), TIERS, kv_bytes_per_token=64)
    assert ws["working_set_bytes"] == 4000 * 64 and ws["fits_in"] == "T0+T1"
    ws = working_set(_load(nonce="none"), TIERS, kv_bytes_per_token=64)
    assert ws["fits_in"] == "T0"


def test_sessions_history():
    load = {"concurrency": 2, "pattern": {"kind": "closed"},
            "workload": {"kind": "sessioned_chat", "sessions": 3, "turns": 2, "first_turn_tokens": 100,
                         "turn_tokens": 10, "output_tokens": 5, "resume_turns": 1, "pressure": None}}
    t = working_set_tokens(load)
    assert t["reusable_tokens"] == 3 * (100 + 5 + 1 + 2 * (10 + 5 + 2))
