"""Is U_work reproducible? Run H0 (the default config's sweep) in N fresh work directories, one after the
other, and print every run's U_work per stack, the spread, and the equal-load levels H8 would use.

    python benchmarks/uwork_reproducibility.py --runs 3 [--configfile configs/config.yaml] [--keep DIR]

Each run is `snakemake --directory <fresh dir> results/H0/uwork.csv`, so nothing is shared between runs
(cells, tier-2 files, Snakemake metadata). H8 compares the stacks at `uwork_min` and `uwork_max` (the
lower and the higher U_work of the two stacks in that run), never each at its own, so a U_work that moves
by a step changes which load is compared but never makes the comparison unequal.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_h0(workdir: Path, configfile: Path) -> dict[str, dict]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "1", "results/H0/uwork.csv"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
        raise SystemExit(f"H0 run in {workdir} failed (exit {proc.returncode})")
    with open(workdir / "results/H0/uwork.csv") as fh:
        return {r["stack"]: r for r in csv.DictReader(fh)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--configfile", type=Path, default=ROOT / "configs/config.yaml")
    ap.add_argument("--keep", type=Path, help="put the work directories here (default: a temporary directory)")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="uwork-repro-"))
    base.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(args.runs):
        t0 = time.monotonic()
        runs.append(run_h0(base / f"run{i}", args.configfile.resolve()))
        print(f"run {i}: {time.monotonic() - t0:.0f} s, " +
              ", ".join(f"{s} U_work {r['u_work_used']} (knee {r.get('knee_at') or '-'})" for s, r in sorted(runs[-1].items())),
              flush=True)
    stacks = sorted(set().union(*runs))
    print("\nstack       " + "  ".join(f"run{i}" for i in range(len(runs))) + "  spread")
    for s in stacks:
        vals = [int(float(r[s]["u_work_used"])) for r in runs if s in r]
        print(f"{s:<11} " + "  ".join(f"{v:>4}" for v in vals) + f"  {min(vals)}..{max(vals)}")
    for i, r in enumerate(runs):
        vals = [int(float(x["u_work_used"])) for x in r.values()]
        print(f"run{i}: H8 equal load at uwork_min {min(vals)}, uwork_max {max(vals)}")
    print(f"(work directories in {base})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
