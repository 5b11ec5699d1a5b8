"""The statistics module (kvharness.stats) on a hypothesis of 1,000,000 request records.

    python benchmarks/stats_scale.py                    # 1,000,000 records: 100 points x 2 reps x 5,000
    python benchmarks/stats_scale.py --records 200000

Per point (2 reps of TTFT-like samples: lognormal body + a 1 % Pareto tail) it computes what the
analysis computes: the order-statistic interval and LoadGen's early-stopping estimate of each cell's
p99, the hierarchical-bootstrap interval of the point's p99, its minimum detectable effect (a twin
comparison), and one B-vs-A comparison per pair of points. Reports wall and CPU time and peak RSS
against the goals (< 30 s, < 4 GiB), and, measured in the same run, a reference: numpy's plain
percentile over every cell (the floor any percentile costs), as a ratio. Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time

import numpy as np

from kvharness import stats

GOAL_S = 30.0
GOAL_RSS = 4 * 1024**3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--per-cell", type=int, default=5000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    n_cells = max(2, a.records // a.per_cell)
    cells = []
    for _ in range(n_cells):
        x = rng.lognormal(math.log(50.0), 0.3, a.per_cell)
        tail = rng.random(a.per_cell) < 0.01
        x[tail] *= 1 + rng.pareto(3.0, tail.sum())
        cells.append(x)
    points = [cells[i:i + a.reps] for i in range(0, n_cells - a.reps + 1, a.reps)]

    t0, c0 = time.perf_counter(), time.process_time()
    ref = [float(np.percentile(c, 99)) for c in cells]
    ref_s = time.perf_counter() - t0

    t0, c0 = time.perf_counter(), time.process_time()
    for c in cells:
        stats.order_stat_ci(c, 99)
        stats.early_stopping_estimate(c, 99)
    for p in points:
        stats.percentile_interval(p, 99)
        stats.compare(p, p, 99)
    for pa, pb in zip(points[::2], points[1::2]):
        stats.compare(pa, pb, 99)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"records {n_cells * a.per_cell:,} in {n_cells} cells, {len(points)} points of {a.reps} reps")
    print(f"stats module: wall {wall:.2f} s (cpu {cpu:.2f} s) = {wall / GOAL_S:.2f} x the 30 s goal; "
          f"peak RSS {rss / 2**20:.0f} MiB = {rss / GOAL_RSS:.3f} x the 4 GiB goal")
    print(f"reference (numpy percentile of every cell, same run): {ref_s * 1000:.1f} ms; the module costs "
          f"{wall / max(ref_s, 1e-9):.0f} x that (it bootstraps 2,000 replicates per point and comparison)")
    assert len(ref) == n_cells
    return 0 if wall < GOAL_S and rss < GOAL_RSS else 1


if __name__ == "__main__":
    sys.exit(main())
