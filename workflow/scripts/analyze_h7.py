"""Snakemake adapter: H7 cells -> collector overhead and p99 impact per cadence."""

import logging
import sys

from kvharness.analysis.run import analyze_h7

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
analyze_h7(snakemake.input.cells, snakemake.output.summary)  # noqa: F821
