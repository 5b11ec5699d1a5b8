"""Running one registered hypothesis: cell folders + upstream results in, declared files out.

Shared by the generated workflow rules (``workflow/scripts/analyze.py``) and ``kvharness analyze``.
Besides the declared tables and figures it writes, for every hypothesis:

- ``points.csv``: one row per point (stack x swept values, ``rep`` excluded) over its repetitions: the
  pooled p99 TTFT with its hierarchical-bootstrap interval, order-statistic bound, early-stopping estimate
  and minimum detectable effect (:func:`p99_evidence`); mean and 95 % t interval of p50/p95/p99 TTFT, p50/p99 TPOT, p99 E2E, req/s, goodput and good fraction, the
  CoV of p99 across reps, the worst rep's p99 deviation from the mean, and the fewest ok requests of a rep;
- ``verdict.json``: the question, the computed verdict, the gates (the hypothesis's own, then the common
  ones of :mod:`kvharness.analysis.gates`, each with value and limit), one-line notes, the cells' status
  counts, their code fingerprints and provenance (stacks, model, measured UTC span).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

from kvharness import stats
from kvharness.analysis import evidence, gates, registry
from kvharness.analysis.records import read_json
from kvharness.analysis.tables import write_csv
from kvharness.provenance import utc_now
from kvharness.cellfolder import CellFolder
from kvharness.cellfiles import CELL_JSON, PROVENANCE_JSON, SUMMARY_JSON

log = logging.getLogger("kvharness.analysis")


def read_table(path: str | Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def uwork_by_stack(rows: Sequence[dict]) -> dict[str, int]:
    """stack -> U_work used (the ``uwork`` result's rows, validated by :mod:`kvharness.plan.uwork`)."""
    from kvharness.plan import uwork

    return uwork.from_rows(rows, "the uwork result")


def stale_uwork_notes(cell_dirs: Sequence[Path], upstream: Mapping[str, list[dict]]) -> list[str]:
    """One line per cell measured at a U_work other than the current one."""
    if "uwork" not in upstream:
        return []
    current = uwork_by_stack(upstream["uwork"])
    notes = []
    for d in cell_dirs:
        spec = CellFolder(d).spec
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


POINT_METRICS = ("ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p99", "e2e_ms_p99",
                 "req_s", "goodput_req_s", "good_fraction")


REPORT_COLUMNS = 10  # a table without key_columns shows its first declared columns in the report
POINT_KEY_COLUMNS = ("n_reps", "ttft_ms_p50_mean", "ttft_ms_p99_pooled", "ttft_ms_p99_boot_low", "ttft_ms_p99_boot_high",
                     "ttft_ms_p99_es", "ttft_p99_mde_pct", "ttft_p99_cov", "good_fraction_mean", "n_ok_min", "status")


def _read_or_empty(path: Path) -> dict:
    try:
        return read_json(path)
    except (ValueError, OSError):
        return {}


def point_keys(cell_dirs: Sequence[Path]) -> list[str]:
    """Columns naming a point: the stack, then every swept axis of the cells (``rep`` excluded)."""
    keys = ["stack"]
    for d in cell_dirs:
        for key in (_read_or_empty(Path(d) / CELL_JSON).get("sweep") or {}):
            if key != "rep" and key not in keys:
                keys.append(key)
    return keys


def p99_evidence(reps: Sequence) -> dict:
    """The p99 TTFT of a point from its requests (kvharness.stats): pooled value with the hierarchical
    bootstrap's 95 % interval, the one-sided 95 % order-statistic bound, LoadGen's early-stopping estimate,
    and the smallest difference a comparison with an identical twin of this point could detect (80 %
    power, 5 % two-sided): the minimum detectable effect at these cell sizes."""
    reps = [r for r in reps if len(r)]
    if not reps:
        return {}
    pooled = [x for r in reps for x in r]
    ci = stats.percentile_interval(reps, 99)
    twin = stats.compare(reps, reps, 99)
    return {"ttft_ms_p99_pooled": ci["estimate"], "ttft_ms_p99_boot_low": ci["low"], "ttft_ms_p99_boot_high": ci["high"],
            "ttft_ms_p99_upper95": stats.order_stat_ci(pooled, 99)["upper"],
            "ttft_ms_p99_es": stats.early_stopping_estimate(pooled, 99)["estimate"], "ttft_p99_mde_pct": twin["mde_pct"]}


def points_table(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """Per point over its repetitions (evidence.aggregate), plus reproducibility and sample counts."""
    table = evidence.aggregate(rows, keys, POINT_METRICS)
    members: dict[tuple, list[dict]] = {}
    for r in rows:
        members.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    need = stats.min_ok_requests(99)
    for p in table:
        reps = members[tuple(p.get(k) for k in keys)]
        p["reps"] = ";".join(str(r.get("rep", 0)) for r in sorted(reps, key=lambda r: r.get("rep", 0)))
        p["ttft_p99_max_dev_pct"] = gates.p99_deviation_pct(r.get("ttft_ms_p99") for r in reps)
        p["n_ok_min"] = min((r.get("n_ok") or 0) for r in reps)
        p["enough_samples_p99"] = p["n_ok_min"] >= need
        p["status"] = ";".join(sorted({str(r.get("status")) for r in reps}))
        p["torn_lines"] = sum(int(r.get("truncated_lines") or 0) for r in reps)  # cut last lines, not analysed
        p.update(p99_evidence([stats.samples(r) for r in reps]))
    return sorted(table, key=lambda p: tuple((v is None, str(type(v)), v) for v in (p.get(k) for k in keys)))


def _cell_facts(cell_dirs: Sequence[Path]) -> dict:
    status: dict[str, int] = {}
    fingerprints: dict[str, list[str]] = {}
    stacks: dict[str, dict] = {}
    models: set[tuple] = set()
    starts, ends, shas = [], [], set()
    for d in cell_dirs:
        d = Path(d)
        summary = _read_or_empty(d / SUMMARY_JSON)
        status_value = summary.get("status", "unknown")
        status[status_value] = status.get(status_value, 0) + 1
        prov = _read_or_empty(d / PROVENANCE_JSON)
        fp = prov.get("code_fingerprint") or "unknown"
        fingerprints.setdefault(fp, []).append(d.name)
        if prov.get("git_sha"):
            shas.add(prov["git_sha"])
        spec = _read_or_empty(d / CELL_JSON)
        stack = spec.get("stack") or {}
        if stack.get("name"):
            stacks[stack["name"]] = {"role": spec.get("role"), "kind": stack.get("kind"),
                                     "tiered": bool(stack.get("tiered")), "description": stack.get("description", "")}
        if spec.get("model"):
            models.add((spec.get("model"), spec.get("served_model_name"), spec.get("precision"), spec.get("hardware")))
        starts.extend([summary["started_utc"]] if summary.get("started_utc") else [])
        ends.extend([summary["finished_utc"]] if summary.get("finished_utc") else [])
    provenance = {
        "stacks": stacks,
        "models": [dict(zip(("model", "served_model_name", "precision", "hardware"), m)) for m in sorted(models, key=str)],
        "measured_from_utc": min(starts) if starts else None, "measured_to_utc": max(ends) if ends else None,
        "git_shas": sorted(shas),
    }
    return {"cell_status": status, "code_fingerprints": fingerprints,
            "mixed_code": len(fingerprints) > 1, "provenance": provenance}


def invalid_cells(cell_dirs: Sequence[Path]) -> dict[str, str]:
    """Cell folder name -> reason, for every cell whose ``summary.json`` says ``invalid``."""
    out = {}
    for d in cell_dirs:
        summary = _read_or_empty(Path(d) / SUMMARY_JSON)
        if summary.get("status") == "invalid":
            out[Path(d).name] = str(summary.get("reason") or ", ".join(summary.get("invalid_because") or []))
    return out


def run_hypothesis(hyp: str, cell_dirs: Sequence[str | Path], upstream_paths: Mapping[str, str | Path],
                   outputs: Mapping[str, str | Path], config: Mapping | None = None) -> list[Path]:
    """Analyse one hypothesis and write every declared output; returns the written paths."""
    h = registry.get(hyp)
    upstream = {name: read_table(path) for name, path in upstream_paths.items()}
    missing = [n for n in h.needs if n not in upstream]
    if missing:
        raise registry.RegistryError(f"{hyp} needs upstream result(s) {', '.join(missing)}")
    every_cell = [Path(d) for d in cell_dirs]
    invalid = invalid_cells(every_cell)  # the measurement failed: listed, never analysed as a point
    cells = [d for d in every_cell if d.name not in invalid]
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
    keys = point_keys(cells)
    points = points_table(ctx.rows, keys)
    if registry.POINTS in outputs:
        written.append(write_csv(points, outputs[registry.POINTS], keys + ["n_reps", "reps", "status", "torn_lines"]))
    facts = _cell_facts(every_cell)
    torn = {r["cell"]: r["truncated_lines"] for r in ctx.rows if r.get("truncated_lines")}
    if torn:
        ctx.notes.append(f"{sum(torn.values())} cut record line(s) dropped (a writer killed mid-line) in "
                         f"{', '.join(sorted(torn))}")
    for name, why in invalid.items():
        ctx.notes.append(f"cell {name} is invalid and not analysed: {why}")
    if facts["mixed_code"]:
        ctx.notes.append(f"cells were measured by different code ({len(facts['code_fingerprints'])} code "
                         f"fingerprints, see provenance): compare them with care")
    for note in ctx.notes:
        log.warning("%s: %s", hyp, note)
    # gates first, then the verdict: a claim whose gate failed is not stated (gates.gate_sentence)
    gate_dicts = [{**g.as_dict(), "scope": hyp} for g in h.gates(result)]
    gate_dicts += [{**g.as_dict(), "scope": "common"} for g in gates.common_gates(ctx.rows, points, keys)]
    result.facts["gates"] = gate_dicts
    measured = h.verdict(result)
    depends = gates.QUALITY_GATES if h.verdict_gates is None else h.verdict_gates
    sentence = gates.gate_sentence(measured, gate_dicts, depends) if depends else measured
    tables = {t.name: Path(outputs[t.name]).name for t in h.tables}
    if registry.POINTS in outputs:
        tables[registry.POINTS] = Path(outputs[registry.POINTS]).name
    verdict = {
        "hyp": hyp, "question": h.question, "verdict": sentence, "measured": measured,
        "how_to_read": h.how_to_read, "gates": gate_dicts, "gate_status": gates.gate_status(gate_dicts), "notes": ctx.notes, **facts,
        "n_cells": len(every_cell), "invalid_cells": invalid, "torn_lines": sum(torn.values()), "point_keys": keys, "n_points": len(points), "analysed_utc": utc_now(),
        "tables": tables,
        "key_columns": {**{t.name: list(t.key_columns or t.columns[:REPORT_COLUMNS]) for t in h.tables},
                        registry.POINTS: keys + list(POINT_KEY_COLUMNS)},
        "figures": {f.name: {"file": Path(outputs[f.name]).name, "caption": f.caption} for f in h.figures},
    }
    path = Path(outputs["verdict"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(verdict, indent=2, default=str))
    os.replace(tmp, path)
    written.append(path)
    return written
