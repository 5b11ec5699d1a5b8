"""Reading per-cell records strictly: a malformed line is an error naming file and line.

The one tolerated defect is a truncated *last* line (a process killed mid-write); it is counted,
never silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path


class RecordError(ValueError):
    """A records file that cannot be trusted; the message names the file and line."""


def read_jsonl(path: str | Path, tolerate_truncated_tail: bool = True) -> tuple[list[dict], int]:
    """Records of a JSONL file and the number of truncated tail lines skipped (0 or 1)."""
    path = Path(path)
    records: list[dict] = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise RecordError(f"{path}: missing") from None
    truncated = 0
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if tolerate_truncated_tail and i == len(lines):
                truncated = 1
                continue
            raise RecordError(f"{path}:{i}: malformed JSON line ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise RecordError(f"{path}:{i}: expected a JSON object per line, got {type(rec).__name__}")
        records.append(rec)
    return records, truncated


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: missing") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
