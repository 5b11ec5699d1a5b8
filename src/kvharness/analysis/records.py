"""Reading per-cell records strictly: a malformed line is an error naming file and line.

The one tolerated defect is a cut *last* line (a process killed mid-write, so no final newline); it is
counted, never silently dropped. Shared by the analysis, the cell runner and the telemetry read-back.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

try:  # 3-4x faster on big cells; anything it refuses (NaN, Infinity) is read again by json
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency, json the fallback
    _fast_loads = json.loads


def _loads(line: str):
    try:
        return _fast_loads(line)
    except ValueError:
        return json.loads(line)


class RecordError(ValueError):
    """A records file that cannot be trusted; the message names the file and line."""


def read_jsonl(path: str | Path, tolerate_truncated_tail: bool = True) -> tuple[list[dict], int]:
    """Records of a JSONL file and the number of cut tail lines skipped (0 or 1).

    Only a last line without its newline counts as cut (the writer was killed mid-write); a malformed
    line that ends in a newline was written that way and raises, naming file and line.
    """
    path = Path(path)
    records: list[dict] = []
    truncated = 0
    try:
        fh = path.open(errors="replace")
    except FileNotFoundError:
        raise RecordError(f"{path}: missing") from None
    gc_was_on = gc.isenabled()
    gc.disable()  # a million fresh dicts would trigger full collections over all of them again and again
    try:
        with fh:  # line by line: a big cell's text is never held whole beside its records
            for i, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    rec = _loads(line)
                except json.JSONDecodeError as exc:
                    # only the file's last line can lack its newline: that is a cut tail
                    if tolerate_truncated_tail and not line.endswith("\n"):
                        truncated = 1
                        break
                    raise RecordError(f"{path}:{i + 1}: malformed JSON line ({exc.msg})") from None
                if not isinstance(rec, dict):
                    raise RecordError(f"{path}:{i + 1}: expected a JSON object per line, got {type(rec).__name__}")
                records.append(rec)
    finally:
        if gc_was_on:
            gc.enable()
    return records, truncated


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: missing") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
