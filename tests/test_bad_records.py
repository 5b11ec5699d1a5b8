"""Records gone bad (issue 25): a wrong type is one error naming file, line and field; a cut last line is
dropped but counted in the points table and the verdict."""

import json

import pytest

from kvharness.records import RecordError, read_jsonl
from kvharness.analysis.run import points_table

OK = {"rc": 0, "sched_ns": 1, "sent_ns": 2, "end_ns": 30, "lat_ttft_ms": 1.5, "itl_ms": [0.5, 0.6], "error_class": None}


@pytest.mark.parametrize("field, value, expected", [
    ("lat_ttft_ms", "fast", "is not a number"),
    ("rc", 0.5, "is not an integer"),
    ("lat_e2e_ms", True, "is not a number"),
    ("itl_ms", [0.5, "x"], "is not a number (in the list)"),
    ("error_class", 500, "is not a string"),
])
def test_a_wrong_type_names_file_line_and_field(tmp_path, field, value, expected):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(OK) + "\n" + json.dumps({**OK, field: value}) + "\n")
    with pytest.raises(RecordError) as info:
        read_jsonl(path)
    assert str(info.value).startswith(f"{path}:2: field {field}: ") and expected in str(info.value)


def test_a_cut_last_line_is_counted_and_reaches_the_points_table(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(OK) + "\n" + json.dumps(OK)[:20])
    records, torn = read_jsonl(path)
    assert len(records) == 1 and torn == 1
    rows = [{"stack": "s", "rep": r, "truncated_lines": t, "ttft_ms_p99": 10.0, "n_ok": 1, "status": "ok"}
            for r, t in ((0, torn), (1, 0))]
    assert points_table(rows, ["stack"])[0]["torn_lines"] == 1
