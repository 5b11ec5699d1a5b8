"""Snakemake adapter: H7 cells -> collector overhead and p99 impact per cadence."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821 (also without an install)
from kvharness.analysis.run import analyze_h7

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
analyze_h7(snakemake.input.cells, snakemake.output.summary)  # noqa: F821
