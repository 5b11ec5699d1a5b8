"""Hot set + scan (`scan_share`, `scan_tokens`): one-off scan prompts mixed into a reusable hot set."""

import json
from types import SimpleNamespace

import pytest

from kvharness.loadgen.spec import SpecError, validate_spec
from kvharness.loadgen.workloads import make_workload


def workload(**w):
    spec = validate_spec({"base_url": "http://127.0.0.1:1", "model": "m", "pattern": {"kind": "closed", "concurrency": 4},
                          "workload": {"kind": "fixed_context", "context_tokens": 64, **w}, "duration_s": 1})
    return make_workload(spec)


def prompts(w, n=400, users=4):
    out = []
    for i in range(n):
        req = w.build(SimpleNamespace(user=i % users, phase=None))
        out.append((req.labels["bucket"], json.loads(req.body)["prompt"], req.labels["context_tokens"]))
    return out


def test_scan_share_and_lengths():
    got = prompts(workload(nonce="per_user", scan_share=0.5, scan_tokens=128))
    scans = [p for b, p, _ in got if b == "scan"]
    hot = [p for b, p, _ in got if b == "hot"]
    assert 0.4 < len(scans) / len(got) < 0.6
    assert all(len(p.split()) == 128 for p in scans) and all(len(p.split()) == 64 for p in hot)
    # every scan prompt is one-off (its first words differ), the hot set is the users' own prompts
    assert len({tuple(p.split()[:6]) for p in scans}) == len(scans)
    assert len(set(hot)) == 4
    assert not {tuple(p.split()[:6]) for p in scans} & {tuple(p.split()[:6]) for p in hot}


def test_scan_with_prefix_groups_keeps_groups_as_hot_set():
    got = prompts(workload(shared_prefix_ratio=1.0, prefix_groups=3, nonce="none", scan_share=0.25))
    hot = {p for b, p, _ in got if b == "hot"}
    assert len(hot) == 3
    assert all(n == 64 for b, _, n in got if b == "scan")  # scan_tokens defaults to the request's length


def test_no_scan_by_default_and_labels_unchanged():
    got = prompts(workload(nonce="per_user"), n=20)
    assert all(b is None for b, _, _ in got)


def test_scan_share_is_checked():
    with pytest.raises(SpecError, match="scan_share"):
        workload(scan_share=1.5)
    with pytest.raises(SpecError, match="scan_tokens"):
        workload(scan_share=0.5, scan_tokens=0)
