"""`kvharness` command line: one subcommand per pipeline stage.

Each stage owns its arguments in ``kvharness.<stage>.cli`` (``add_arguments(parser)`` and
``main(args) -> int``); this module only dispatches, and imports a stage lazily so that
``kvharness sim`` does not pay for pandas and ``kvharness loadgen`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "sim": ("kvharness.sim.cli", "run a simulated serving stack (sim-A memory-only, sim-B tiered KV) as an HTTP server"),
    "loadgen": ("kvharness.loadgen.cli", "drive an OpenAI-compatible streaming endpoint and record every request"),
    "sysmon": ("kvharness.telemetry.cli", "sample host, NVMe, GPU and KV-tier metrics on one clock"),
    "scrape": ("kvharness.telemetry.scrape_cli", "scrape a Prometheus endpoint once and print the mapped KV-tier fields"),
    "cell": ("kvharness.measure.cli", "measure one cell: launch the stack, collect, load, tear down, write the cell folder"),
    "analyze": ("kvharness.analysis.cli", "turn cell folders into hypothesis summaries (U_work, knees, hero table)"),
    "proxy": ("kvharness.stacks.proxy", "LoRA adapter proxy: adapter tier-2 I/O in front of a one-model backend, streamed through"),
    "report": ("kvharness.report.cli", "plots and the HTML report from analysis outputs"),
    "plan": ("kvharness.plan.estimate", "cells per hypothesis and the expected wall time, before a run; --compare after it"),
    "export": ("kvharness.export", "every request of a hypothesis (or of all) as one Parquet / CSV file, cell parameters as columns"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvharness",
        description="Benchmark harness: memory-only vs tiered-KV LLM serving, on one clock.",
    )
    from kvharness import __version__

    parser.add_argument("--version", action="version", version=f"kvharness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
            parser.print_usage(sys.stderr)
            print(f"kvharness: unknown command {argv[0]!r}; expected one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
            return 2
        parser.parse_args(argv)  # prints help / version and exits
        parser.print_help()
        return 0
    name = argv[0]
    module_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    sp = argparse.ArgumentParser(prog=f"kvharness {name}", description=help_text)
    module.add_arguments(sp)
    args = sp.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        print(f"kvharness {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
