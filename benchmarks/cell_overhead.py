"""Cell overhead: wall time of a cell minus its load duration, per phase.

    python benchmarks/cell_overhead.py                     # measure 6 H0 cells (sim-A/sim-B, c=4, 2 s load)
    python benchmarks/cell_overhead.py --results results   # read the cells of a finished run instead

Every cell's ``summary.json`` carries ``phases_s`` (setup, launch, health, collectors, load, teardown,
write) and ``phase_starts_ns`` on the records' monotonic clock, so the load phase splits further into
the load generator's start-up (phase start -> first scheduled send), the drain after the duration
(in-flight requests finishing) and the generator's exit. Prints the median of each and the overhead
(wall - load duration) as a ratio of the goal (<= 1.0 s median). Exits 1 when the median misses it.
With ``--results``, the jobs' Snakemake ``benchmark:`` files are read too: the job's wall time over the
load duration (judged against the same goal: it is what a user waits for), and how much of it is the job
starting before the cell does (the ``script:`` directive's interpreter, its snakemake import and
unpickling, importing kvharness.measure.cell, whose heavy imports are deferred to where they are used).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from machine import StealMeter

GOAL_S = 1.0
PHASES = ("setup", "launch", "health", "collectors", "load", "teardown", "write")


def cell_breakdown(cell_dir: Path) -> dict | None:
    from kvharness.analysis.records import read_json, read_jsonl

    summary = read_json(cell_dir / "summary.json")
    phases = summary.get("phases_s")
    if not phases:
        return None
    duration = float(read_json(cell_dir / "cell.json")["load"].get("duration_s") or 0)
    out = {"cell": cell_dir.name, "wall": summary["wall_s"], "duration": duration,
           "overhead": summary["wall_s"] - duration, **{p: phases.get(p, 0.0) for p in PHASES}}
    bench = cell_dir.parents[1] / "benchmarks" / f"{cell_dir.name}.tsv"  # Snakemake's benchmark: file of the job
    if bench.exists():
        try:
            job_s = float(bench.read_text().splitlines()[1].split("\t")[0])
            out["job_s"] = job_s
            out["job_start"] = job_s - summary["wall_s"]
        except (IndexError, ValueError):
            pass
    starts = summary.get("phase_starts_ns") or {}
    records, _ = read_jsonl(cell_dir / "metrics.jsonl")
    sched = [r["sched_ns"] for r in records if r.get("sched_ns")]
    ends = [r["end_ns"] for r in records if r.get("end_ns")]
    if sched and ends:  # a load that ends early (max_requests, a finished chat) is shorter than duration_s
        span = (max(ends) - min(sched)) / 1e9
        if duration <= 0 or span < duration:
            duration = span
            out["duration"] = duration
            out["overhead"] = summary["wall_s"] - duration
    if sched and ends and "load" in starts and "teardown" in starts:
        first, last = min(sched), max(ends)
        out["loadgen_start"] = (first - starts["load"]) / 1e9
        out["drain"] = max(0.0, (last - first) / 1e9 - duration)
        out["loadgen_exit"] = (starts["teardown"] - last) / 1e9
    if "job_s" in out:
        out["job_overhead"] = out.pop("job_s") - out["duration"]
    return out


def measure(n: int, duration: float, concurrency: int) -> list[Path]:
    from kvharness.measure.cell import run_cell
    from kvharness.plan.config import cell_index, load_config_file

    cfg = load_config_file(Path(__file__).resolve().parents[1] / "configs" / "config.yaml")
    specs = [s for (h, _), s in cell_index(cfg).items() if h == "H0" and s["sweep"].get("concurrency") == concurrency]
    root = Path(tempfile.mkdtemp(prefix="kvharness-overhead-"))
    dirs = []
    for i in range(n):
        spec = json.loads(json.dumps(specs[i % len(specs)]))
        spec["load"]["duration_s"] = duration
        spec["tier2_root"] = str(root / "tier2")
        out = root / f"{spec['cell']}_{i}"
        run_cell(spec, out)
        dirs.append(out)
    return dirs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", help="read results/<H>/cells/* of a finished run instead of measuring")
    ap.add_argument("--cells", type=int, default=6)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=4)
    a = ap.parse_args()
    with StealMeter() as steal:
        if a.results:
            dirs = sorted(p for p in Path(a.results).glob("H*/cells/*") if p.is_dir() and "." not in p.name)
        else:
            dirs = measure(a.cells, a.duration, a.concurrency)
    rows = [r for r in (cell_breakdown(d) for d in dirs) if r is not None]
    if not rows:
        print("cell_overhead: no cell with phases_s (cells measured before phases were recorded?)")
        return 2
    cols = ["overhead", *PHASES, "loadgen_start", "drain", "loadgen_exit"]
    print(f"cell_overhead: {len(rows)} cells, steal {steal.percent:.1f} %")
    print("  median s  " + "  ".join(f"{c:>12}" for c in cols))
    med = {c: statistics.median(r[c] for r in rows if c in r)
           for c in (*cols, "job_overhead", "job_start") if any(c in r for r in rows)}
    print("            " + "  ".join(f"{med.get(c, float('nan')):12.3f}" for c in cols))
    ratio = med["overhead"] / GOAL_S
    print(f"cell_overhead: median overhead {med['overhead']:.2f} s = {ratio:.2f} x the goal ({GOAL_S:g} s)"
          f" -> {'OK' if ratio <= 1 else 'MISSED'}")
    if "job_overhead" in med:
        job_ratio = med["job_overhead"] / GOAL_S
        print(f"cell_overhead: as Snakemake's benchmark files see the jobs: median {med['job_overhead']:.2f} s over the "
              f"load duration = {job_ratio:.2f} x the goal -> {'OK' if job_ratio <= 1 else 'MISSED'}; "
              f"{med['job_start']:.2f} s of it is outside the cell (the script: directive's interpreter, its "
              "snakemake import and unpickling, importing kvharness.measure.cell)")
        ratio = max(ratio, job_ratio)
    return 0 if ratio <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
