"""Snakemake adapter of every generated analysis rule: kvharness.analysis.run.run_hypothesis."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821 (also without an install)
from kvharness.analysis import registry
from kvharness.analysis.run import run_hypothesis

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
registry.load(snakemake.params.modules)  # noqa: F821
hyp = snakemake.params.hyp  # noqa: F821
outputs = {name: snakemake.output[name] for name in registry.get(hyp).outputs()}  # noqa: F821
upstream = {name: snakemake.input[f"up_{name}"] for name in snakemake.params.needs}  # noqa: F821
run_hypothesis(hyp, list(snakemake.input.cells), upstream, outputs, snakemake.params.config)  # noqa: F821
