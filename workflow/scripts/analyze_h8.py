"""Snakemake adapter: H8 cells -> the hero table (summary.csv) and hero.png."""

import logging
import sys

from kvharness.analysis.run import analyze_h8

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
analyze_h8(snakemake.input.cells, snakemake.output.summary, snakemake.output.hero, snakemake.input.uwork)  # noqa: F821
