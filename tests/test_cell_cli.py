"""`kvharness cell --job`: the workflow's job file (spec + U_work); a bad one is one line naming the file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvharness.cell_cli import read_job
from kvharness.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_job_file_round_trip(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"spec": {"hyp": "H8", "cell": "sim-A_c2"}, "uwork": {"value": 2, "from": "x"}}))
    job = read_job(str(path))
    assert job["spec"]["cell"] == "sim-A_c2" and job["uwork"]["value"] == 2


@pytest.mark.parametrize("text, field", [("{", "not a JSON job file"), ('{"uwork": 2}', "spec:"), ("[1]", "spec:")])
def test_bad_job_file_is_one_line_naming_it(tmp_path, text, field):
    path = tmp_path / "job.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_job(str(path))
    assert str(path) in str(err.value) and field in str(err.value) and "\n" not in str(err.value)


def test_missing_job_file_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kvharness", "cell", "--job", str(tmp_path / "nope.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("kvharness cell: ") and "nope.json" in lines[-1] and "cannot read" in lines[-1]
    assert not list(tmp_path.iterdir())
