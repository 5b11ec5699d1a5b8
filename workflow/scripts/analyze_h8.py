"""Snakemake adapter: H8 cells -> the hero table (summary.csv) and hero.png."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821 (also without an install)
from kvharness.analysis.run import analyze_h8

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
analyze_h8(snakemake.input.cells, snakemake.output.summary, snakemake.output.hero, snakemake.input.uwork)  # noqa: F821
