"""Snakemake adapter: measure one cell (kvharness.cell.run_cell)."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821 (also without an install)
from kvharness.cell import CellFailed, run_cell

log_fh = open(snakemake.log[0], "a")  # noqa: F821 (snakemake is injected)
sys.stderr = log_fh
logging.basicConfig(stream=log_fh, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

try:
    run_cell(
        dict(snakemake.params.spec),  # noqa: F821
        snakemake.output[0],  # noqa: F821
        uwork=snakemake.params.uwork,  # noqa: F821
    )
except CellFailed as exc:
    logging.error("%s", exc)
    sys.exit(1)
