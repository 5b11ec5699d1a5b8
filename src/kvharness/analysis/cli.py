"""`kvharness analyze`: cell folders -> hypothesis tables (the same code the workflow runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvharness.analysis.records import RecordError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from kvharness.analysis import registry

    choices = registry.ids()
    p.add_argument("hyp", choices=choices, help="hypothesis to analyse (registered: " + ", ".join(choices) + ")")
    p.add_argument("cells", nargs="*", help="cell folders (default: results/<hyp>/cells/*, skipping .tmp/.failed)")
    p.add_argument("--out-dir", help="where the tables go (default results/<hyp>)")
    p.add_argument("--upstream", action="append", default=[], metavar="NAME=CSV",
                   help="an upstream result the hypothesis needs, e.g. uwork=results/H0/uwork.csv "
                        "(default: the providing hypothesis's file under results/)")
    p.add_argument("--uwork", help="shorthand for --upstream uwork=CSV")


def default_cells(hyp: str) -> list[Path]:
    root = Path("results") / hyp / "cells"
    return sorted(p for p in root.glob("*") if p.is_dir() and "." not in p.name)


def main(args: argparse.Namespace) -> int:
    from kvharness.analysis import registry
    from kvharness.analysis.run import run_hypothesis

    h = registry.get(args.hyp)
    cells = [Path(c) for c in args.cells] or default_cells(args.hyp)
    if not cells:
        print(f"kvharness analyze: no finished cell folders for {args.hyp} (looked in results/{args.hyp}/cells)", file=sys.stderr)
        return 2
    upstream = dict(item.split("=", 1) for item in args.upstream if "=" in item)
    if args.uwork:
        upstream["uwork"] = args.uwork
    for name in h.needs:
        if name not in upstream:
            try:
                upstream[name] = registry.result_path(name, registry.ids())
            except registry.RegistryError as exc:
                print(f"kvharness analyze: {exc}", file=sys.stderr)
                return 2
        if not Path(upstream[name]).is_file():
            print(f"kvharness analyze: {args.hyp} needs {name!r}: {upstream[name]} not found "
                  f"(give --upstream {name}=CSV)", file=sys.stderr)
            return 2
    out_dir = args.out_dir or "results"
    outputs = h.outputs(out_dir) if args.out_dir is None else {
        name: str(Path(out_dir) / Path(path).name) for name, path in h.outputs().items()}
    try:
        written = run_hypothesis(args.hyp, cells, {n: upstream[n] for n in h.needs}, outputs)
    except RecordError as exc:
        print(f"kvharness analyze: {exc}", file=sys.stderr)
        return 1
    for p in written:
        print(p)
    return 0
