"""`kvharness export`: one row per request with the cell's parameters, Parquet and CSV, read back by pandas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kvharness.plan.config import expand_cells, validate_config
from kvharness.export import export

ROOT = Path(__file__).resolve().parents[1]


def _record(i: int, stack: str, concurrency: int) -> dict:
    return {"ts": 1.0e9 + i, "sched_ns": i * 1_000_000, "end_ns": i * 1_000_000 + 50_000_000, "rc": 0,
            "error_class": None, "lat_ttft_ms": 10.0 + i, "lat_e2e_ms": 50.0 + i, "lat_tpot_ms": 2.5,
            "itl_ms": [2.0, 3.0], "output_tokens": 3, "prompt_tokens": 100, "stack": stack,
            "concurrency": concurrency, "context_tokens": 100, "adapter_id": None, "window": "measure"}


def _write_cell(root: Path, spec: dict, n: int, status: str = "ok", folder: str | None = None) -> Path:
    d = root / spec["hyp"] / "cells" / (folder or spec["cell"])
    d.mkdir(parents=True)
    (d / "cell.json").write_text(json.dumps(spec))
    (d / "summary.json").write_text(json.dumps({"status": status}))
    conc = spec["load"].get("concurrency")
    with open(d / "metrics.jsonl", "w") as fh:
        for i in range(n):
            fh.write(json.dumps(_record(i, spec["stack"]["name"], conc)) + "\n")
    return d


@pytest.fixture
def results(tmp_path):
    cfg = validate_config(yaml.safe_load((ROOT / "tests/workflow/tiny.yaml").read_text()))
    root = tmp_path / "results"
    specs = [c for c in expand_cells(cfg, "H0") if c["load"]["concurrency"] in (1, 2)]
    counts = {}
    for k, spec in enumerate(specs):
        counts[spec["cell"]] = 3 + k
        _write_cell(root, spec, 3 + k)
    failed = dict(specs[0], cell=specs[0]["cell"])
    _write_cell(root, failed, 2, status="failed", folder=f"{specs[0]['cell']}.failed-20261201T000000Z")
    (root / "H0" / "cells" / "half.tmp").mkdir()  # a cell still being measured: never exported
    return root, counts


def test_parquet_and_csv_one_row_per_request(results, tmp_path):
    root, counts = results
    out, csv_out = tmp_path / "x" / "requests.parquet", tmp_path / "requests.csv"
    n_rows, n_cells = export(root, ["H0"], out, csv_out)
    assert (n_rows, n_cells) == (sum(counts.values()), len(counts)) == (18, 4)
    df = pd.read_parquet(out)
    assert len(df) == n_rows
    assert df.groupby("cell").size().to_dict() == counts
    for col in ("hyp", "cell", "cell_status", "stack_name", "role", "profile", "tiered", "concurrency",
                "load_workload", "load_context_tokens", "tier0_bytes", "tier1_bytes", "memory_budget_bytes",
                "engine_tokens_per_block", "lat_ttft_ms", "itl_ms", "itl_ms_max"):
        assert col in df.columns, col
    assert set(df["hyp"]) == {"H0"} and set(df["cell_status"]) == {"ok"}
    assert list(df["itl_ms"].iloc[0]) == [2.0, 3.0] and df["itl_ms_max"].iloc[0] == 3.0
    # no column shadows a DataFrame attribute (df.stack is a method), and none repeats another
    assert not [c for c in df.columns if hasattr(pd.DataFrame, c)]
    assert "stack_label" not in df.columns and "load_concurrency" not in df.columns
    assert "sweep_concurrency" not in df.columns and set(df["concurrency"]) == {1, 2}
    back = pd.read_csv(csv_out)
    assert len(back) == n_rows and list(back.columns) == list(df.columns)
    assert json.loads(back["itl_ms"].iloc[0]) == [2.0, 3.0]
    assert back["lat_ttft_ms"].sum() == pytest.approx(df["lat_ttft_ms"].sum())


def test_failed_cells_only_on_request_and_cli(results, tmp_path):
    root, counts = results
    n_rows, _ = export(root, None, tmp_path / "all.parquet", None, include_failed=True)
    df = pd.read_parquet(tmp_path / "all.parquet")
    assert n_rows == len(df) == sum(counts.values()) + 2 and (df["cell_status"] == "failed").sum() == 2
    r = subprocess.run([sys.executable, "-m", "kvharness", "export", "--results", str(root), "--hyp", "H0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_parquet(root / "H0" / "requests.parquet")) == sum(counts.values())
    r = subprocess.run([sys.executable, "-m", "kvharness", "export", "--results", str(root), "--hyp", "H9"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "H9" in r.stderr


def test_empty_labels_stay_null_and_the_schema_says_what_each_column_is(tmp_path):
    import pyarrow.parquet as pq

    cfg = validate_config(yaml.safe_load((ROOT / "tests/workflow/tiny.yaml").read_text()))
    spec = expand_cells(cfg, "H0")[0]
    d = _write_cell(tmp_path / "results", spec, 2)
    rows = [dict(_record(0, "other-label", 9), session_id="s-7", turn=2),
            dict(_record(1, "other-label", 9), session_id=None, turn=None)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, csv_out = tmp_path / "r.parquet", tmp_path / "r.csv"
    export(tmp_path / "results", ["H0"], out, csv_out)
    df = pd.read_parquet(out)
    assert df["session_id"].tolist()[0] == "s-7" and df["session_id"].isna().tolist() == [False, True]
    assert df["turn"].isna().tolist() == [False, True] and "nan" not in df["session_id"].dropna().tolist()
    assert str(df["turn"].dtype) == "Int64" and df["turn"].iloc[0] == 2  # a whole number, not 2.0 beside NaN
    assert df["stack_label"].tolist() == ["other-label"] * 2  # a label that differs from the stack name is kept
    assert df["load_concurrency"].notna().all()  # and so is a cell value that the records contradict
    assert open(csv_out).read().splitlines()[2].count(",,") >= 1  # empty in the CSV, not "nan"
    schema = pq.read_schema(out)
    meta = {f.name: {k.decode(): v.decode() for k, v in (f.metadata or {}).items()} for f in schema}
    assert meta["lat_ttft_ms"]["unit"] == "ms" and "first token" in meta["lat_ttft_ms"]["description"]
    assert meta["tier0_bytes"]["unit"] == "bytes" and meta["engine_tokens_per_block"]["description"]
    assert all(m.get("description") for m in meta.values())
