"""Running one registered hypothesis: cell folders + upstream results in, declared files out.

Shared by the generated workflow rules (``workflow/scripts/analyze.py``) and ``kvharness analyze``.
Besides the declared tables and figures it writes ``verdict.json``: the question, the computed verdict,
the gates (value and limit), one-line notes, the cells' status counts and their code fingerprints.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

from kvharness.analysis import registry
from kvharness.analysis.records import read_json
from kvharness.analysis.tables import write_csv
from kvharness.provenance import utc_now

log = logging.getLogger("kvharness.analysis")


def read_table(path: str | Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def uwork_by_stack(rows: Sequence[dict]) -> dict[str, int]:
    """stack -> U_work used (the ``uwork`` result's rows)."""
    out = {}
    for r in rows:
        value = r.get("u_work_used") or r.get("u_work")
        if value not in (None, ""):
            out[r["stack"]] = int(float(value))
    return out


def stale_uwork_notes(cell_dirs: Sequence[Path], upstream: Mapping[str, list[dict]]) -> list[str]:
    """One line per cell measured at a U_work other than the current one."""
    if "uwork" not in upstream:
        return []
    current = uwork_by_stack(upstream["uwork"])
    notes = []
    for d in cell_dirs:
        spec = read_json(Path(d) / "cell.json")
        source = spec["load"].get("concurrency_source")
        stack = spec["stack"]["name"]
        rule = source.get("rule", "uwork") if isinstance(source, dict) else None
        if rule in ("uwork_min", "uwork_max") and current:
            want = (min if rule == "uwork_min" else max)(current.values())
            if int(spec["load"]["concurrency"]) != want:
                notes.append(f"cell {Path(d).name} was measured at {rule} {spec['load']['concurrency']}, "
                             f"but the current {rule} is {want}: re-measure it")
            continue
        if isinstance(source, dict) and source.get("result") == "uwork" and stack in current \
                and int(spec["load"]["concurrency"]) != current[stack]:
            notes.append(f"cell {Path(d).name} was measured at U_work {spec['load']['concurrency']}, "
                         f"but the current U_work of {stack} is {current[stack]}: re-measure it")
    return notes


def _cell_facts(cell_dirs: Sequence[Path]) -> dict:
    status: dict[str, int] = {}
    fingerprints: dict[str, list[str]] = {}
    for d in cell_dirs:
        d = Path(d)
        try:
            status_value = read_json(d / "summary.json").get("status", "unknown")
        except ValueError:
            status_value = "unknown"
        status[status_value] = status.get(status_value, 0) + 1
        try:
            fp = read_json(d / "provenance.json").get("code_fingerprint") or "unknown"
        except ValueError:
            fp = "unknown"
        fingerprints.setdefault(fp, []).append(d.name)
    return {"cell_status": status, "code_fingerprints": fingerprints,
            "mixed_code": len(fingerprints) > 1}


def run_hypothesis(hyp: str, cell_dirs: Sequence[str | Path], upstream_paths: Mapping[str, str | Path],
                   outputs: Mapping[str, str | Path], config: Mapping | None = None) -> list[Path]:
    """Analyse one hypothesis and write every declared output; returns the written paths."""
    h = registry.get(hyp)
    upstream = {name: read_table(path) for name, path in upstream_paths.items()}
    missing = [n for n in h.needs if n not in upstream]
    if missing:
        raise registry.RegistryError(f"{hyp} needs upstream result(s) {', '.join(missing)}")
    cells = [Path(d) for d in cell_dirs]
    ctx = registry.Context(hyp=hyp, cell_dirs=cells, upstream=upstream, config=dict(config or {}))
    ctx.notes.extend(stale_uwork_notes(cells, upstream))
    result = h.analyze(ctx)
    written = []
    for table in h.tables:
        written.append(write_csv(result.tables.get(table.name, []), outputs[table.name], table.columns))
    for fig in h.figures:
        path = Path(outputs[fig.name])
        path.parent.mkdir(parents=True, exist_ok=True)
        result.figures[fig.name](path)
        written.append(path)
    facts = _cell_facts(cells)
    if facts["mixed_code"]:
        ctx.notes.append(f"cells were measured by different code ({len(facts['code_fingerprints'])} fingerprints)")
    for note in ctx.notes:
        log.warning("%s: %s", hyp, note)
    gates = [g.as_dict() for g in h.gates(result)]
    verdict = {
        "hyp": hyp, "question": h.question, "verdict": h.verdict(result), "how_to_read": h.how_to_read,
        "gates": gates, "notes": ctx.notes, **facts, "n_cells": len(cells), "analysed_utc": utc_now(),
        "tables": {t.name: Path(outputs[t.name]).name for t in h.tables},
        "figures": {f.name: {"file": Path(outputs[f.name]).name, "caption": f.caption} for f in h.figures},
    }
    path = Path(outputs["verdict"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(verdict, indent=2, default=str))
    os.replace(tmp, path)
    written.append(path)
    return written
