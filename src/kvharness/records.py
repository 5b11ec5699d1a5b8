"""Reading per-cell records strictly: a malformed line is an error naming file and line.

The one tolerated defect is a cut *last* line (a process killed mid-write, so no final newline); it is
counted, never silently dropped. Base layer: shared by the load generator, the telemetry read-back, the cell runner and the analysis.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

from kvharness.cellfiles import METRICS_JSONL

try:  # 3-4x faster on big cells; anything it refuses (NaN, Infinity) is read again by json
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency, json the fallback
    _fast_loads = json.loads


def _loads(line: str):
    try:
        return _fast_loads(line)
    except ValueError:
        return json.loads(line)


_NUM = (int, float)
_INT = (int,)
_STR = (str,)
# Per-request records (metrics.jsonl, the load generator's schema): the fields the statistics read, and the
# types they must have when present and not null. bool is refused where a number is expected.
METRICS_FIELDS: tuple[tuple[str, tuple], ...] = (
    ("rc", _INT), ("sched_ns", _INT), ("sent_ns", _INT), ("end_ns", _INT), ("first_token_ns", _INT),
    ("first_byte_ns", _INT), ("lat_ttft_ms", _NUM), ("lat_ttfb_ms", _NUM), ("lat_e2e_ms", _NUM),
    ("lat_tpot_ms", _NUM), ("prompt_tokens", _INT), ("output_tokens", _INT), ("cached_tokens", _INT),
    ("error_class", _STR),
)
CHECKED = {METRICS_JSONL: METRICS_FIELDS}


_EXPECTED = {_NUM: "a number", _INT: "an integer", _STR: "a string"}


def _bad_field(rec: dict, fields) -> tuple[str, object, str] | None:
    """The first field of ``rec`` whose value has the wrong type (field, value, what was expected)."""
    for key, types in fields:
        v = rec.get(key)
        if v is not None and type(v) not in types:
            return key, v, _EXPECTED[types]
    itl = rec.get("itl_ms")
    if itl is not None:
        if type(itl) is not list:
            return "itl_ms", itl, "a list of numbers"
        for x in itl:
            if type(x) not in _NUM:
                return "itl_ms", x, "a number (in the list)"
    return None


class RecordError(ValueError):
    """A records file that cannot be trusted; the message names the file and line."""


def read_jsonl(path: str | Path, tolerate_truncated_tail: bool = True) -> tuple[list[dict], int]:
    """Records of a JSONL file and the number of cut tail lines skipped (0 or 1).

    Only a last line without its newline counts as cut (the writer was killed mid-write); a malformed
    line that ends in a newline was written that way and raises, naming file and line. Records of a file
    named in ``CHECKED`` (metrics.jsonl) are type-checked: a wrong type raises, naming file, line and field.
    """
    path = Path(path)
    fields = CHECKED.get(path.name)
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
                if fields is not None:
                    bad = _bad_field(rec, fields)
                    if bad is not None:
                        raise RecordError(f"{path}:{i + 1}: field {bad[0]}: {bad[1]!r} is not {bad[2]}")
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
