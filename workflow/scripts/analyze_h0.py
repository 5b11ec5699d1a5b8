"""Snakemake adapter: H0 cells -> summary.csv and uwork.csv."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821 (also without an install)
from kvharness.analysis.run import analyze_h0

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
analyze_h0(snakemake.input.cells, snakemake.output.summary, snakemake.output.uwork)  # noqa: F821
