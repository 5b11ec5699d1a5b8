"""`kvharness analyze`: cell folders -> hypothesis tables (the same code the workflow runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvharness.analysis.records import RecordError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("hyp", choices=["H0", "H7", "H8"], help="hypothesis to analyse")
    p.add_argument("cells", nargs="*", help="cell folders (default: results/<hyp>/cells/*, skipping .tmp/.failed)")
    p.add_argument("--out-dir", help="where the tables go (default results/<hyp>)")
    p.add_argument("--uwork", help="H0 uwork.csv (H8: adds the U_work column)")


def default_cells(hyp: str) -> list[Path]:
    root = Path("results") / hyp / "cells"
    return sorted(p for p in root.glob("*") if p.is_dir() and "." not in p.name)


def main(args: argparse.Namespace) -> int:
    from kvharness.analysis import run

    cells = [Path(c) for c in args.cells] or default_cells(args.hyp)
    if not cells:
        print(f"kvharness analyze: no finished cell folders for {args.hyp} (looked in results/{args.hyp}/cells)", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir or f"results/{args.hyp}")
    try:
        if args.hyp == "H0":
            written = run.analyze_h0(cells, out_dir / "summary.csv", out_dir / "uwork.csv")
        elif args.hyp == "H7":
            written = run.analyze_h7(cells, out_dir / "summary.csv")
        else:
            written = run.analyze_h8(cells, out_dir / "summary.csv", out_dir / "hero.png", args.uwork)
    except RecordError as exc:
        print(f"kvharness analyze: {exc}", file=sys.stderr)
        return 1
    for p in written:
        print(p)
    return 0
