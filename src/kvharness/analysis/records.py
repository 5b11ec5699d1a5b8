"""Kept so the analyses' ``from kvharness.analysis.records import ...`` keeps working: record reading is
base-layer code (the load generator, the telemetry read-back and the cell runner use it too), in
:mod:`kvharness.records`."""

from kvharness.records import RecordError, read_json, read_jsonl  # noqa: F401 (re-exported)
