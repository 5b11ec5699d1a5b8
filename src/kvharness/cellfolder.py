"""A small reader of a cell's folder (``results/<H>/cells/<cell>/``; its file names are in kvharness.cellfiles).

The cell runner (kvharness.measure.cell) writes these files; the analyses, the export, the planner's progress
estimates and the telemetry read-back read them. Reading is strict (kvharness.records): a malformed file
is a RecordError naming the file and line.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from kvharness.cellfiles import CELL_JSON, COLLECTOR_SUMMARY_JSON, METRICS_JSONL, PROVENANCE_JSON, SUMMARY_JSON
from kvharness.records import RecordError, read_json, read_jsonl


class CellFolder:
    """Read one cell folder: ``spec`` and ``summary`` are read once per object, ``records()`` on each call
    (a big cell's records are not kept alive by the reader)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"CellFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    @cached_property
    def spec(self) -> dict:
        return read_json(self.path / CELL_JSON)

    @cached_property
    def summary(self) -> dict:
        return read_json(self.path / SUMMARY_JSON)

    @cached_property
    def collector_summary(self) -> dict:
        return read_json(self.path / COLLECTOR_SUMMARY_JSON)

    def provenance(self) -> dict | None:
        """provenance.json, or None when the cell has none (or an unreadable one)."""
        try:
            return read_json(self.path / PROVENANCE_JSON)
        except RecordError:
            return None

    def records(self) -> tuple[list[dict], int]:
        """The per-request records and the count of a cut last line (kvharness.records.read_jsonl)."""
        return read_jsonl(self.path / METRICS_JSONL)
