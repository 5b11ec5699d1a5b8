"""`kvharness export`: every request of one hypothesis (or of all) as one Parquet file, CSV too.

One row per line of each cell's ``metrics.jsonl``, with the cell's parameters beside it (hypothesis,
cell, status, stack, profile, swept values, resolved load, tier sizes, engine settings), so that
pandas, polars or DuckDB can group and compare requests without knowing the folder layout:

    kvharness export --hyp H0 --out H0-requests.parquet --csv H0-requests.csv
    python -c "import pandas as pd; print(pd.read_parquet('H0-requests.parquet')
               .groupby(['stack_name', 'concurrency']).lat_ttft_ms.quantile(0.99))"

Columns from the records keep their names (``lat_ttft_ms``, ``itl_ms`` as a list, ...); a cell
parameter whose name a record also uses is written as ``cell_<name>`` (a measured value is never
overwritten). The record's ``stack`` label is ``stack_label`` (``df.stack`` is a DataFrame method) and
a column equal in every row to one before it (``stack_label`` = ``stack_name``, ``load_concurrency`` or
``sweep_concurrency`` = ``concurrency``) is left out. Every column's description and unit are in the
Parquet schema (field metadata ``description`` and ``unit``). Empty values are nulls, never text, and
pandas reads integer and text columns as its nullable dtypes (an empty ``turn`` is <NA>, not NaN).
Finished cells only by default (``ok``, ``degraded`` and ``invalid``, see ``cell_status``);
``--include-failed`` adds the records kept in ``<cell>.failed-<UTC>/`` and ``<cell>.stale-<UTC>/`` folders. Reads only: no cell is
measured or changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kvharness.records import RecordError
from kvharness.cellfolder import CellFolder
from kvharness.cellfiles import CELL_JSON, METRICS_JSONL, SUMMARY_JSON

TIER_KEYS = ("tier0_bytes", "tier1_bytes", "tier2_bytes", "memory_budget_bytes")


class ExportError(ValueError):
    pass


def _scalar(v):
    """Scalars as they are; anything else (a list or mapping parameter) as its JSON text."""
    return v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v, sort_keys=True)


def cell_columns(spec: dict, summary: dict, cell_dir: Path) -> dict:
    """The cell's parameters as flat columns (from its resolved ``cell.json`` and ``summary.json``)."""
    load = spec.get("load") or {}
    workload = load.get("workload") or {}
    pattern = load.get("pattern") or {}
    stack = spec.get("stack") or {}
    cols = {
        "hyp": spec.get("hyp"), "cell": spec.get("cell"), "cell_status": summary.get("status"),
        "role": spec.get("role"), "stack_name": stack.get("name"), "tiered": bool(stack.get("tiered")),
        "profile": spec.get("profile"), "model_profile": spec.get("model"), "precision": spec.get("precision"),
        "hardware": spec.get("hardware"),
        "load_concurrency": load.get("concurrency"), "load_pattern": pattern.get("kind"),
        "load_workload": workload.get("kind"), "load_context_tokens": workload.get("context_tokens"),
        "load_output_tokens": workload.get("output_tokens"), "load_duration_s": load.get("duration_s"),
    }
    cols.update({k: (spec.get("tiers") or {}).get(k) for k in TIER_KEYS})
    cols.update({f"sweep_{k}": _scalar(v) for k, v in sorted((spec.get("sweep") or {}).items())})
    cols.update({f"engine_{k}": _scalar(v) for k, v in sorted((spec.get("engine") or {}).items())})
    cols["telemetry_interval_ms"] = (spec.get("telemetry") or {}).get("interval_ms")
    cols["cell_dir"] = str(cell_dir)
    return cols


def find_cells(results: Path, hyps: list[str] | None, include_failed: bool) -> list[Path]:
    """Cell folders under ``results/<H>/cells/``, sorted by hypothesis and cell (never ``.tmp``)."""
    if hyps:
        hyp_dirs = [results / h for h in hyps]
    else:
        hyp_dirs = sorted(p for p in results.iterdir() if p.is_dir()) if results.is_dir() else []
    cells = []
    for hyp_dir in hyp_dirs:
        cells_dir = hyp_dir / "cells"
        if not cells_dir.is_dir():
            continue
        for d in sorted(cells_dir.iterdir()):
            if not d.is_dir() or d.name.endswith(".tmp"):
                continue
            if (".failed-" in d.name or ".stale-" in d.name) and not include_failed:
                continue
            if (d / CELL_JSON).is_file():
                cells.append(d)
    return cells


def request_rows(cell_dirs: list[Path]) -> list[dict]:
    rows = []
    for d in cell_dirs:
        folder = CellFolder(d)
        spec = folder.spec
        summary = folder.summary if folder.has(SUMMARY_JSON) else {"status": "failed"}
        records, _truncated = folder.records() if folder.has(METRICS_JSONL) else ([], 0)
        params = cell_columns(spec, summary, d)
        for rec in records:
            row = dict(rec)
            if "stack" in row:
                row["stack_label"] = row.pop("stack")
            itl = rec.get("itl_ms")
            if isinstance(itl, list):
                row["itl_ms_mean"] = sum(itl) / len(itl) if itl else None
                row["itl_ms_max"] = max(itl) if itl else None
            for k, v in params.items():
                row[f"cell_{k}" if k in rec else k] = v
            rows.append(row)
    return rows


FIRST = ("hyp", "cell", "cell_status", "stack_name", "role", "concurrency")
REPEATS = {"stack_label": "stack_name", "load_concurrency": "concurrency", "sweep_concurrency": "concurrency"}


def _columns(rows: list[dict]) -> list[str]:
    """Every column of every row, cell parameters first, then record fields in first-seen order; a
    column of REPEATS is left out when it equals the column it repeats in every row."""
    seen: dict[str, None] = {}
    for row in rows:
        for k in row:
            seen.setdefault(k, None)
    first = [k for k in FIRST if k in seen]
    return [k for k in first + [k for k in seen if k not in first]
            if not (k in REPEATS and all(_same(row.get(k), row.get(REPEATS[k])) for row in rows))]


def _same(a, b) -> bool:
    return a is not None and type(a) is type(b) and a == b


def to_table(rows: list[dict]):
    import pyarrow as pa

    from kvharness.export_schema import describe

    arrays, fields = [], []
    for name in _columns(rows):
        values = [row.get(name) for row in rows]
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds across cells: keep every value as text
            arr = pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values],
                           type=pa.string())
        if pa.types.is_null(arr.type):
            arr = arr.cast(pa.string())  # a column with no value anywhere: typed, so readers agree
        arrays.append(arr)
        description, unit = describe(name)
        fields.append(pa.field(name, arr.type, metadata={"description": description, "unit": unit}))
    return _pandas_reads_nullable(pa.Table.from_arrays(arrays, schema=pa.schema(fields)))


def _pandas_reads_nullable(table):
    """Add the schema metadata that makes pandas read integer, boolean and text columns as its nullable
    dtypes (Int64, boolean, string): an empty ``turn`` beside whole numbers stays <NA>, not 0.0 and NaN.
    The columns themselves are unchanged; other readers ignore the metadata."""
    try:
        import pandas as pd
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pandas comes with the analysis dependencies
        return table
    mapper = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype(),
              pa.string(): pd.StringDtype("python", na_value=pd.NA)}.get
    empty = table.slice(0, 0).to_pandas(types_mapper=mapper)
    meta = pa.Table.from_pandas(empty, preserve_index=False).schema.metadata or {}
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})


def write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_csv(rows: list[dict], path: Path) -> None:
    import csv

    cols = _columns(rows)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for row in rows:
            w.writerow(["" if row.get(c) is None else
                        json.dumps(row[c]) if isinstance(row.get(c), (list, dict)) else row[c] for c in cols])
    os.replace(tmp, path)


def export(results: Path, hyps: list[str] | None, out: Path | None, csv_out: Path | None,
           include_failed: bool = False, cells: list[Path] | None = None) -> tuple[int, int]:
    """Write the export; returns (rows, cells)."""
    cell_dirs = cells if cells else find_cells(results, hyps, include_failed)
    if not cell_dirs:
        where = ", ".join(str(results / h / "cells") for h in hyps) if hyps else f"{results}/*/cells"
        raise ExportError(f"no cell folder (with cell.json) under {where}")
    rows = request_rows(cell_dirs)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(to_table(rows), out)
    if csv_out is not None:
        csv_out.parent.mkdir(parents=True, exist_ok=True)
        write_csv(rows, csv_out)
    return len(rows), len(cell_dirs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--results", default="results", help="the workflow's results folder (default: %(default)s)")
    parser.add_argument("--hyp", nargs="+", metavar="H", help="hypotheses to export (default: every one found)")
    parser.add_argument("--cells", nargs="+", metavar="CELL_DIR", type=Path,
                        help="export these cell folders instead of searching --results")
    parser.add_argument("--out", type=Path, default=None,
                        help="Parquet file to write (default: <results>/requests.parquet, or <results>/<H>/"
                             "requests.parquet for one --hyp)")
    parser.add_argument("--csv", type=Path, default=None, metavar="CSV", help="also write the rows as CSV here")
    parser.add_argument("--include-failed", action="store_true",
                        help="also export the records kept in failed cells' folders (<cell>.failed-<UTC>/)")


def main(args: argparse.Namespace) -> int:
    results = Path(args.results)
    out = args.out
    if out is None:
        out = results / args.hyp[0] / "requests.parquet" if args.hyp and len(args.hyp) == 1 else results / "requests.parquet"
    try:
        n_rows, n_cells = export(results, args.hyp, out, args.csv, args.include_failed, args.cells)
    except (ExportError, RecordError) as exc:
        print(f"kvharness export: {exc}", file=sys.stderr)
        return 2
    written = ", ".join(str(p) for p in (out, args.csv) if p is not None)
    print(f"kvharness export: {n_rows} requests from {n_cells} cells -> {written}", file=sys.stderr)
    return 0
