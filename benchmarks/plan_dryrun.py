"""Planning the plan: ``snakemake -n all --configfile configs/paper.yaml`` in a fresh folder.

    python benchmarks/plan_dryrun.py              # the paper config as it is (its reps)
    python benchmarks/plan_dryrun.py --reps 10    # every hypothesis at 10 reps: several hundred cells

Prints the number of cells planned, the wall time and the CPU time of the dry run (the CPU time is what
a busy shared machine cannot inflate), against the goal (< 10 s), as ratios. Exits 1 when the wall time
misses the goal and the CPU time does too.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from machine import StealMeter

GOAL_S = 10.0
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "paper.yaml"))
    ap.add_argument("--reps", type=int, help="override every hypothesis's reps")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvharness-plan-"))
    config = Path(a.config)
    if a.reps:
        cfg = yaml.safe_load(config.read_text())
        for h in cfg["hypotheses"].values():
            h["reps"] = a.reps
        config = work / "plan.yaml"
        config.write_text(yaml.safe_dump(cfg))
    argv = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(work),
            "--configfile", str(config), "-n", "all"]
    with StealMeter() as steal:
        t = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True)
        wall = time.monotonic() - t
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        print(f"plan_dryrun: snakemake -n failed ({proc.returncode}):\n{out[-2000:]}")
        return 1
    m = re.search(r"^measure_cell\s+(\d+)", out, re.M)
    cells = int(m.group(1)) if m else 0
    print(f"plan_dryrun: {cells} cells planned from {Path(a.config).name}{f' at {a.reps} reps' if a.reps else ''}: "
          f"wall {wall:.1f} s ({wall / GOAL_S:.2f} x the {GOAL_S:g} s goal), CPU {cpu:.1f} s ({cpu / GOAL_S:.2f} x), "
          f"steal {steal.percent:.1f} %")
    return 0 if min(wall, cpu) < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
