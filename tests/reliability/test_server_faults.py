"""Server faults (the simulator's fault options): the cell says what happened and keeps what it measured."""

import json

import pytest

from kvharness.records import read_jsonl
from kvharness.measure.cell import CellFailed, run_cell


def failed_dir(out):
    kept = sorted(out.parent.glob(out.name + ".failed-*"))
    assert len(kept) == 1, "a failed cell keeps exactly one folder"
    assert not out.exists(), "a failed cell must not look complete"
    return kept[0]


def test_crash_mid_cell_is_failed_with_reason_and_records_kept(make_cell, tmp_path):
    out = tmp_path / "cells" / "crash"
    spec = make_cell(concurrency=2, duration_s=3.0, fault_args=["--fault-crash-after", "6"])
    with pytest.raises(CellFailed, match="crash"):
        run_cell(spec, out)
    kept = failed_dir(out)
    reason = (kept / "reason.txt").read_text()
    assert "exited with code" in reason and "during the load" in reason
    records, _ = read_jsonl(kept / "metrics.jsonl")
    assert sum(1 for r in records if r["rc"] == 0) >= 5  # what completed before the crash is kept
    summary = json.loads((kept / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["requests"]["n_ok"] >= 5


def test_hang_fires_per_request_timeouts(make_cell, tmp_path):
    out = tmp_path / "cells" / "hang"
    spec = make_cell(concurrency=2, duration_s=1.0, request_timeout_s=1.0, fault_args=["--fault-hang"])
    with pytest.raises(CellFailed, match="no successful request"):
        run_cell(spec, out)
    summary = json.loads((failed_dir(out) / "summary.json").read_text())
    assert summary["requests"]["error_classes"].get("timeout", 0) >= 2


def test_hang_fires_the_cell_timeout(make_cell, tmp_path):
    out = tmp_path / "cells" / "hang-cell"
    spec = make_cell(concurrency=1, duration_s=1.0, request_timeout_s=60.0, cell_timeout_s=3.0, fault_args=["--fault-hang"])
    with pytest.raises(CellFailed, match="cell timeout"):
        run_cell(spec, out)
    failed_dir(out)


@pytest.mark.parametrize("status", ["500", "429"])
def test_http_errors_are_counted_per_class_and_in_the_error_rate(make_cell, tmp_path, status):
    out = tmp_path / "cells" / f"err{status}"
    spec = make_cell(concurrency=4, duration_s=1.5, fault_args=["--fault-error-rate", "0.3", "--fault-error-status", status])
    summary = run_cell(spec, out)
    req = summary["requests"]
    assert req["n_ok"] > 0 and req["error_classes"].get(f"http_{status}", 0) > 0
    assert req["error_rate"] == pytest.approx(req["n_errors"] / req["n_requests"])
    assert 0.1 < req["error_rate"] < 0.6
    # the server misbehaved: a result, analysed, but degraded with the partial percentiles named
    assert summary["status"] == "degraded" and "server_errors" in summary["degraded_because"]
    assert f"cover {req['n_ok']} of {req['n_requests']} requests" in summary["degraded_reason"]


def test_malformed_event_is_a_parse_error_not_a_crash(make_cell, tmp_path):
    out = tmp_path / "cells" / "malformed"
    spec = make_cell(concurrency=2, duration_s=1.5, fault_args=["--fault-malformed-every", "3"])
    summary = run_cell(spec, out)
    assert summary["requests"]["error_classes"].get("parse", 0) > 0
    assert summary["requests"]["n_ok"] > 0
    assert summary["loadgen_rc"] == 0


def test_slow_drip_is_visible_in_itl_and_flagged(make_cell, tmp_path):
    out = tmp_path / "cells" / "drip"
    spec = make_cell(concurrency=2, duration_s=1.0, fault_args=["--fault-slow-drip-ms", "150"])
    spec["quality"] = {"itl_stall_ms": 100.0}
    summary = run_cell(spec, out)
    assert summary["requests"]["itl_ms_p50"] >= 140
    assert summary["quality"]["itl_stalled"] is True
    assert summary["status"] == "degraded" and "itl_stalled" in summary["degraded_because"]
