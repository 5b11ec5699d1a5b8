"""`kvharness cell`: measure one cell from a cell spec (JSON, as the workflow resolves it)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from kvharness.measure.cell import CellFailed, run_cell
from kvharness.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", help="cell spec JSON (as written to a cell's cell.json)")
    p.add_argument("--config", default="configs/config.yaml", help="workflow config (with --hyp/--cell)")
    p.add_argument("--hyp", help="hypothesis id, e.g. H0 (with --config)")
    p.add_argument("--cell", help="cell id, e.g. sim-A_c16 (with --config); omit to list the cells")
    p.add_argument("--uwork", help="H0 uwork.csv, for cells whose concurrency is `uwork`")
    p.add_argument("--out", help="cell folder to write (default results/<hyp>/cells/<cell>)")
    p.add_argument("--show", action="store_true",
                   help="print what the cell(s) would run (argv, container args, env with secrets redacted, "
                        "readiness, cold start, engine YAML) and exit; with --hyp and no --cell: every cell")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.spec:
            with open(args.spec) as fh:
                spec = json.load(fh)
        else:
            from kvharness.plan.config import expand_cells, load_config_file

            cfg = load_config_file(args.config)
            if not args.hyp:
                print("kvharness cell: give --spec, or --hyp (and --cell) with --config", file=sys.stderr)
                return 2
            cells = {c["cell"]: c for c in expand_cells(cfg, args.hyp)}
            if args.show and not args.cell:
                from kvharness.stacks.show import describe_cell

                print("\n\n".join(describe_cell(c) for c in cells.values()))
                return 0
            if not args.cell:
                print("\n".join(cells))
                return 0
            if args.cell not in cells:
                print(f"kvharness cell: --cell: unknown cell {args.cell!r} for {args.hyp} (known: {', '.join(cells)})", file=sys.stderr)
                return 2
            spec = cells[args.cell]
        if args.show:
            from kvharness.stacks.show import describe_cell

            print(describe_cell(spec))
            return 0
        out = args.out or f"results/{spec['hyp']}/cells/{spec['cell']}"
        summary = run_cell(spec, out, uwork_csv=args.uwork)
    except ConfigError as exc:
        print(f"kvharness cell: {exc}", file=sys.stderr)
        return 2
    except CellFailed as exc:
        print(f"kvharness cell: {exc}", file=sys.stderr)
        return 1
    req = summary["requests"]
    def ms(v):
        return "-" if v is None else f"{v:.1f}"

    print(f"{spec['hyp']}/{spec['cell']}: {summary['status']}; {req['n_ok']} ok, {req['n_errors']} errors, "
          f"TTFT p50 {ms(req['ttft_ms_p50'])} ms p99 {ms(req['ttft_ms_p99'])} ms -> {out}", flush=True)
    return 0
