"""Joining telemetry ticks with request records on the monotonic clock."""

from __future__ import annotations

import json

import pytest

from kvharness.telemetry.read import TelemetryFormatError, TickIndex, attributable_fraction, read_jsonl

MS = 1_000_000


def test_read_jsonl_strict_but_tolerates_a_cut_last_line(tmp_path):
    p = tmp_path / "sysmon.jsonl"
    p.write_text('{"tick": 1}\n{"tick": 2}\n{"tick": 3, "cp')
    assert [r["tick"] for r in read_jsonl(p)] == [1, 2]
    p.write_text('{"tick": 1}\nnot json\n{"tick": 3}\n')
    with pytest.raises(TelemetryFormatError, match="sysmon.jsonl:2"):
        read_jsonl(p)
    p.write_text('{"tick": 1}\n{"tick": 2, "x\n')  # newline-terminated garbage is not a cut write
    with pytest.raises(TelemetryFormatError):
        read_jsonl(p)


def test_tick_windows_and_attribution():
    # ticks every 200 ms at 1000, 1200, 1400 (1600 missed), 1800 ms
    ticks = [{"tick": k, "mono_ns": t * MS, "nvme": {"rps": 1}} for k, t in ((1, 1000), (2, 1200), (3, 1400), (5, 1800))]
    idx = TickIndex(ticks, 200 * MS)
    assert idx.at(1100 * MS)["tick"] == 2 and idx.at(1200 * MS)["tick"] == 2
    assert idx.at(1500 * MS) is None  # its tick (1600) is missing
    assert [t["tick"] for t in idx.covering(1050 * MS, 1350 * MS)] == [2, 3]
    reqs = [
        {"sched_ns": 1050 * MS, "first_token_ns": 1350 * MS},  # windows 1200, 1400: present
        {"sched_ns": 1450 * MS, "first_token_ns": 1700 * MS},  # needs the missed 1600 window
        {"sched_ns": None, "first_token_ns": None},            # failed request: not counted
    ]
    assert attributable_fraction(reqs, idx) == 0.5
    assert attributable_fraction(reqs[:1], idx, need=lambda t: t["nvme"]["rps"] > 5) == 0.0


def test_from_cell(tmp_path):
    (tmp_path / "collector_summary.json").write_text(json.dumps({"interval_ms": 100}))
    (tmp_path / "sysmon.jsonl").write_text('{"tick": 1, "mono_ns": 5}\n')
    idx = TickIndex.from_cell(tmp_path)
    assert idx.interval_ns == 100 * MS and idx.at(0)["tick"] == 1
