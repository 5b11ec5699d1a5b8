"""Entry points shared by the workflow scripts and `kvharness analyze`: files in, files out."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from kvharness.analysis.cells import cell_rows
from kvharness.analysis.h0 import H0_COLUMNS, h0_tables
from kvharness.analysis.h8 import H8_COLUMNS, h8_table
from kvharness.analysis.records import read_json
from kvharness.analysis.tables import write_csv


def analyze_h0(cell_dirs: Sequence[str | Path], summary_csv: str | Path, uwork_csv: str | Path) -> list[Path]:
    summary, uwork = h0_tables(cell_rows(cell_dirs))
    return [write_csv(summary, summary_csv, H0_COLUMNS), write_csv(uwork, uwork_csv, ["stack", "role", "u_work", "u_work_used"])]


def analyze_h7(cell_dirs: Sequence[str | Path], summary_csv: str | Path) -> list[Path]:
    from kvharness.analysis.h7 import H7_COLUMNS, cadence_row, h7_table

    return [write_csv(h7_table([cadence_row(d) for d in cell_dirs]), summary_csv, H7_COLUMNS)]


def analyze_h8(cell_dirs: Sequence[str | Path], summary_csv: str | Path, hero_png: str | Path,
               uwork_csv: str | Path | None = None) -> list[Path]:
    from kvharness.report.hero import plot_hero

    uwork = None
    if uwork_csv and Path(uwork_csv).exists():
        with open(uwork_csv) as fh:
            uwork = {r["stack"]: int(float(r["u_work_used"])) for r in csv.DictReader(fh) if r.get("u_work_used")}
    rows = cell_rows(cell_dirs)
    for row, d in zip(rows, cell_dirs):  # what each engine ran with, for the A/B parity column
        row["engine_settings"] = read_json(Path(d) / "summary.json").get("engine_settings")
    table = h8_table(rows, uwork)
    return [write_csv(table, summary_csv, H8_COLUMNS), plot_hero(table, hero_png)]
