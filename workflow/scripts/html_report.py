"""Snakemake adapter: the analysed hypotheses' verdict.json files -> results/report.html."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821 (also without an install)
from kvharness.report.html import build_report

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
verdicts = [p for p in snakemake.input if Path(p).name == "verdict.json"]  # noqa: F821
build_report("results", snakemake.output[0], verdicts)  # noqa: F821
