"""`kvharness scrape URL`: one baseline and one delta scrape, printed as the mapped record."""

from __future__ import annotations

import json
from pathlib import Path

from kvharness.cli import main
from tm_fakeserver import FakeMetrics

FIX = Path(__file__).parent / "fixtures"


def test_scrape_prints_mapped_deltas(capsys):
    bodies = [(FIX / n).read_text() for n in ("kvbm_1.prom", "kvbm_2.prom")]
    with FakeMetrics(bodies) as fm:
        rc = main(["scrape", fm.url, "--interval-ms", "10", "--kv-block-bytes", "2MiB", "--raw"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tier2"]["hits"] == 4 and out["tier2"]["bytes_out"] == 8 << 20
    assert "kvbm_offload_blocks_d2h" in out["parsed"]["counters"]


def test_scrape_unreachable_is_exit_1(capsys):
    assert main(["scrape", "http://127.0.0.1:9/metrics", "--timeout-s", "0.5"]) == 1
    assert "127.0.0.1:9" in capsys.readouterr().err
