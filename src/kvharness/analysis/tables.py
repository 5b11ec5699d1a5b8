"""Writing analysis tables: CSV with a stable column order, written atomically."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence


def write_csv(rows: Sequence[dict], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(columns or [])
    for r in rows:
        cols.extend(k for k in r if k not in cols and not str(k).startswith("_"))  # _keys: in memory only
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else _fmt(r.get(k))) for k in cols})
    os.replace(tmp, path)
    return path


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
