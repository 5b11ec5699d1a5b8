"""Cold-start check 2 on the collector's baseline scrape (dynkv.jsonl tick 0, `baseline_hits`)."""

import copy

from kvharness.stacks.coldstart import baseline_check

PENDING = {"resets": [], "checks": {"hits_at_baseline": "pending: the collector's baseline scrape"}, "verified": True}


def test_fresh_stack_with_no_hits_is_verified():
    cold = baseline_check(copy.deepcopy(PENDING), {"tick": 0, "baseline_hits": 0.0})
    assert cold["verified"] is True and cold["checks"]["hits_at_baseline"] == 0


def test_hits_at_baseline_or_no_baseline_is_not_verified():
    warm = baseline_check(copy.deepcopy(PENDING), {"tick": 0, "baseline_hits": 12.0})
    assert warm["verified"] is False and warm["checks"]["hits_at_baseline"] == 12
    missing = baseline_check(copy.deepcopy(PENDING), None)
    assert missing["verified"] is False and "no answer" in missing["checks"]["hits_at_baseline_missing"]


def test_a_check_done_by_the_cell_itself_is_left_alone():
    done = {"resets": [{"path": "/reset_prefix_cache"}], "checks": {"hits_at_baseline": 0}, "verified": True}
    assert baseline_check(copy.deepcopy(done), {"baseline_hits": 5}) == done


def test_first_request_check_accepts_one_cold_request_among_those_due_first():
    from kvharness.stacks.coldstart import first_request_check

    # a trace's first rows share one due time and one system-prompt block: whichever reached the server
    # first found nothing, the others may reuse its blocks
    recs = [{"ts": 2, "sched_ns": 100, "cached_tokens": 32}, {"ts": 3, "sched_ns": 100, "cached_tokens": 0},
            {"ts": 9, "sched_ns": 500, "cached_tokens": 64}]
    cold = first_request_check({"checks": {}, "verified": True}, recs)
    assert cold["verified"] is True and cold["checks"]["first_request_cached_tokens"] == 0
    warm = first_request_check({"checks": {}, "verified": True}, [{**r, "cached_tokens": 32} for r in recs])
    assert warm["verified"] is False
