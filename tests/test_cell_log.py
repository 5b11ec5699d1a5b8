"""The closing line of a cell's log: status, counts, TTFT p50/p99, tier-2 bytes and the reason."""

import logging

from kvharness.measure.cell import log_outcome


def test_outcome_line_for_ok_degraded_and_failed(caplog):
    base = {"hyp": "H0", "cell": "sim-B_c4", "tier2_file_bytes": 3 << 20, "tier2_files": 2,
            "requests": {"n_ok": 40, "n_errors": 1, "ttft_ms_p50": 12.345, "ttft_ms_p99": 80.0}}
    with caplog.at_level(logging.INFO, logger="kvharness.measure.cell"):
        ok = log_outcome({**base, "status": "ok", "degraded_because": []})
        degraded = log_outcome({**base, "status": "degraded", "degraded_because": ["alignment_ok", "itl_stalled"]})
        failed = log_outcome({**base, "status": "failed", "reason": "stack process 'sim' exited with code 70\nmore",
                              "requests": {"n_ok": 0, "n_errors": 5, "ttft_ms_p50": None, "ttft_ms_p99": None}})
    assert ok == ("cell H0/sim-B_c4 ok: requests 40 ok / 1 errors, TTFT p50 12.3 ms p99 80.0 ms, "
                  "tier-2 3 MiB in 2 files")
    assert degraded.endswith("; because: alignment_ok, itl_stalled")
    assert failed == ("cell H0/sim-B_c4 failed: requests 0 ok / 5 errors, TTFT p50 - ms p99 - ms, tier-2 3 MiB in 2 files; "
                      "because: stack process 'sim' exited with code 70")
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING, logging.ERROR]
    assert [r.getMessage() for r in caplog.records] == [ok, degraded, failed]
