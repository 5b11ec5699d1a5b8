"""Snakemake adapter of every generated analysis rule: kvharness.analysis.run.run_hypothesis."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821 (also without an install)
from kvharness.analysis import registry
from kvharness.records import RecordError
from kvharness.analysis.run import run_hypothesis
from kvharness.errors import ConfigError

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
registry.load(snakemake.params.modules)  # noqa: F821
hyp = snakemake.params.hyp  # noqa: F821
outputs = {name: snakemake.output[name] for name in registry.get(hyp).outputs()}  # noqa: F821
upstream = {name: snakemake.input[f"up_{name}"] for name in snakemake.params.needs}  # noqa: F821
try:
    run_hypothesis(hyp, list(snakemake.input.cells), upstream, outputs, snakemake.params.config)  # noqa: F821
except (RecordError, ConfigError) as exc:  # a bad record or upstream value: one line naming file and line
    logging.error("%s: %s", hyp, exc)
    sys.__stderr__.write(f"{hyp}: {exc}\n")
    sys.exit(1)
