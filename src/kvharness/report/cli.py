"""`kvharness report`: one HTML page with every hypothesis table and figure under a results folder."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--out", default="results/report.html", help="HTML file to write (default: results/report.html)")


def main(args: argparse.Namespace) -> int:
    from kvharness.report.html import build_report

    print(build_report(args.results, args.out))
    return 0
