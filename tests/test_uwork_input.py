"""results/H0/uwork.csv corrupted or hand-edited (issue 25): one line naming file, line and field, never a
traceback or wrong advice; a changed value keeps the earlier measurement as stale."""

import json

import pytest

from kvharness.plan import uwork
from kvharness.analysis.run import uwork_by_stack
from kvharness.measure.cell import read_uwork
from kvharness.errors import ConfigError

HEADER = "stack,role,u_work,u_work_used\n"


@pytest.mark.parametrize("body, message", [
    (b"stack,role,u_work,u_work_used\nsim-A,A,4,\xff\xfe\n", r"uwork.csv:2: not UTF-8 text \(byte 0xff"),
    (HEADER + "sim-A,A,4,abc\n", r"uwork.csv:2: field u_work_used: 'abc' is not a whole number"),
    ("", r"uwork.csv: empty"),
    (HEADER, r"uwork.csv: header only, no U_work row"),
    (HEADER + "sim-A,A,4,-3\n", r"uwork.csv:2: field u_work_used: -3 is below 1"),
    (HEADER + "sim-A,A,4,4.5\n", r"uwork.csv:2: field u_work_used: '4.5' is not a whole number"),
    (HEADER + "sim-B,B,4,4\nsim-A,A,4,1e9\n", r"uwork.csv:3: field u_work_used: 1000000000 is above the highest concurrency H0 measures \(64\)"),
    ("stack,role,u_work\nsim-A,A,4\n", r"uwork.csv:1: no column 'u_work_used'"),
])
def test_bad_uwork_csv_is_one_line_naming_file_line_and_field(tmp_path, body, message):
    path = tmp_path / "uwork.csv"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(ConfigError, match=message) as info:
        uwork.read(path, max_value=64)
    assert "\n" not in str(info.value) and "add its role" not in str(info.value)
    assert "re-run H0" in str(info.value)


def test_extra_columns_are_tolerated_and_every_reader_agrees(tmp_path):
    path = tmp_path / "uwork.csv"
    path.write_text("stack,role,u_work,u_work_used,u_work_ci_low,u_work_ci_high\nsim-A,A,4,4,2,8\nsim-B,B,8,8,,\n")
    assert uwork.read(path) == {"sim-A": 4, "sim-B": 8}
    assert read_uwork(path, "sim-B") == 8 and read_uwork(path, "sim-B", "uwork_min") == 4
    assert uwork_by_stack([{"stack": "sim-A", "u_work_used": "4"}]) == {"sim-A": 4}
    with pytest.raises(ConfigError, match="no U_work for stack 'sim-C'"):
        read_uwork(path, "sim-C")


def test_a_changed_uwork_keeps_the_earlier_cell_as_stale(tmp_path):
    cell = tmp_path / "cells" / "sim-A_uwork"
    cell.mkdir(parents=True)
    spec = {"load": {"concurrency": 4, "concurrency_source": {"result": "uwork", "value": 4}}}
    (cell / "cell.json").write_text(json.dumps(spec))
    (cell / "metrics.jsonl").write_text('{"rc": 0}\n')
    assert uwork.keep_stale(cell, 4, "results/H0/uwork.csv") is None  # unchanged: nothing to keep
    kept = uwork.keep_stale(cell, 7, "results/H0/uwork.csv")
    assert kept.name.startswith("sim-A_uwork.stale-")
    assert (kept / "metrics.jsonl").read_text() == '{"rc": 0}\n'
    assert "measured at U_work 4" in (kept / "reason.txt").read_text() and "now gives 7" in (kept / "reason.txt").read_text()
    assert not (cell / "reason.txt").exists()  # the original (hard-linked) is untouched
