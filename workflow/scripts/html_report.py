"""Snakemake adapter: results/ -> results/report.html."""

import sys

from kvharness.report.html import build_report

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
build_report("results", snakemake.output[0])  # noqa: F821
