"""The one reader of the ``uwork`` result (H0's ``results/H0/uwork.csv``), validated like config.

The workflow (``rules/common.smk``: the U_work a cell runs at), ``kvharness cell --uwork`` and the analyses
(``analysis.run``: stale-cell notes, H8) read U_work only through :func:`read` / :func:`from_rows`. A
corrupted or hand-edited file stops with one line naming the file, the line and the field: bytes that are
not UTF-8, an empty or header-only file, a missing column, a value that is not a whole number, below 1,
or above the highest concurrency H0 measured. Columns beyond ``stack`` and ``u_work_used`` (``u_work``,
reps, intervals, ...) are allowed and ignored here.

When a changed U_work makes the workflow re-measure a cell, :func:`keep_stale` first keeps the earlier
measurement as ``<cell>.stale-<UTC>/`` (hard links, so no bytes are copied) with a ``reason.txt``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Mapping

from kvharness.cellfiles import CELL_JSON
from kvharness.errors import ConfigError, utf8_text

RULES = ("uwork", "uwork_min", "uwork_max")
VALUE_COLUMN = "u_work_used"
RERUN = "re-run H0 (snakemake results/H0/uwork.csv) or restore the file"


def parse_value(raw, where: str, max_value: int | None = None) -> int:
    """A U_work value: a whole number >= 1 (and <= ``max_value`` when given); else one line naming ``where``."""
    text = str(raw).strip()
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(f"{where}: field {VALUE_COLUMN}: {text!r} is not a whole number; {RERUN}") from None
    if number != number or number in (float("inf"), float("-inf")) or number != int(number):
        raise ConfigError(f"{where}: field {VALUE_COLUMN}: {text!r} is not a whole number; {RERUN}")
    value = int(number)
    if value < 1:
        raise ConfigError(f"{where}: field {VALUE_COLUMN}: {value} is below 1 (a concurrency); {RERUN}")
    if max_value is not None and value > max_value:
        raise ConfigError(f"{where}: field {VALUE_COLUMN}: {value} is above the highest concurrency H0 measures "
                          f"({max_value}); {RERUN}")
    return value


def from_rows(rows: Iterable[Mapping], source: str | Path, max_value: int | None = None) -> dict[str, int]:
    """stack -> U_work used, from the table's rows (line numbers count the header as line 1). A row with
    an empty ``u_work_used`` (H0 found no U_work for that stack) is left out."""
    out: dict[str, int] = {}
    for i, row in enumerate(rows, start=2):
        where = f"{source}:{i}"
        stack = (row.get("stack") or "").strip()
        if not stack:
            raise ConfigError(f"{where}: field stack is empty; {RERUN}")
        raw = row.get(VALUE_COLUMN)
        if raw is None or str(raw).strip() == "":
            continue
        out[stack] = parse_value(raw, where, max_value)
    return out


def read(path: str | Path, max_value: int | None = None) -> dict[str, int]:
    """stack -> U_work used, read strictly from ``path``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing (run H0 first: snakemake results/H0/uwork.csv)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    text = utf8_text(path, data, RERUN)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames
    if not header or not any(h.strip() for h in header):
        raise ConfigError(f"{path}: empty (no header, no U_work row); {RERUN}")
    for column in ("stack", VALUE_COLUMN):
        if column not in header:
            raise ConfigError(f"{path}:1: no column {column!r} in the header ({', '.join(header)}); {RERUN}")
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise ConfigError(f"{path}:{reader.line_num}: not a CSV row ({exc}); {RERUN}") from None
    if not rows:
        raise ConfigError(f"{path}: header only, no U_work row; {RERUN}")
    return from_rows(rows, path, max_value)


def value(found: Mapping[str, int], path: str | Path, rule: str, stacks: list[str]) -> int:
    """The U_work a cell runs at: ``uwork`` its stack's own (``stacks`` = [it]); ``uwork_min`` /
    ``uwork_max`` the lower / higher of ``stacks`` (equal load)."""
    missing = [s for s in stacks if s not in found]
    if missing:
        have = ", ".join(sorted(found)) or "none"
        raise ConfigError(f"{path}: no U_work for stack {missing[0]!r} (U_work rows: {have}); if H0 found none "
                          f"for it, see results/H0/verdict.json; if H0 does not run it, add its role to H0's stacks")
    values = [found[s] for s in stacks]
    return values[0] if rule == "uwork" else (min(values) if rule == "uwork_min" else max(values))


def measured_at(cell_dir: str | Path) -> int | None:
    """The U_work a finished cell folder was measured at (its cell.json), None when it was not."""
    try:
        spec = json.loads((Path(cell_dir) / CELL_JSON).read_text())
    except (OSError, ValueError):
        return None
    source = (spec.get("load") or {}).get("concurrency_source")
    if not isinstance(source, dict) or source.get("result") != "uwork":
        return None
    try:
        return int(spec["load"]["concurrency"])
    except (KeyError, TypeError, ValueError):
        return None


def keep_stale(cell_dir: str | Path, new_value: int, source: str | Path) -> Path | None:
    """Before a cell measured at another U_work is re-measured (and its folder deleted by the workflow),
    keep it as ``<cell>.stale-<UTC>/`` with ``reason.txt``; returns that folder, None when nothing to keep."""
    cell_dir = Path(cell_dir)
    old = measured_at(cell_dir)
    if old is None or old == new_value:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    stale = cell_dir.with_name(f"{cell_dir.name}.stale-{stamp}")
    n = 1
    while stale.exists():
        stale = cell_dir.with_name(f"{cell_dir.name}.stale-{stamp}-{n}")
        n += 1
    try:
        shutil.copytree(cell_dir, stale, copy_function=os.link)
    except OSError:  # another filesystem or no hard links: a real copy
        shutil.rmtree(stale, ignore_errors=True)
        shutil.copytree(cell_dir, stale)
    (stale / "reason.txt").unlink(missing_ok=True)  # never write through a hard link into the original
    (stale / "reason.txt").write_text(f"stale: measured at U_work {old}; {source} now gives {new_value}, so the "
                                      f"cell was re-measured; this is the earlier measurement\n")
    return stale
