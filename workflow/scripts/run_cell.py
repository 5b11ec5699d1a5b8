"""Snakemake adapter: measure one cell (kvharness.measure.cell.run_cell).

The cell's log gets everything; Snakemake's console (this job's stderr) gets what a user watches for:
waits for the machine lock, the cell's outcome line and the hypothesis's progress (kvharness.plan.estimate)."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821 (also without an install)
from kvharness.measure.cell import CellFailed, run_cell

console = sys.stderr
log_fh = open(snakemake.log[0], "a")  # noqa: F821 (snakemake is injected)
sys.stderr = log_fh
logging.basicConfig(stream=log_fh, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
to_console = logging.StreamHandler(console)
to_console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
to_console.addFilter(lambda record: getattr(record, "console", False))
logging.getLogger().addHandler(to_console)


def progress() -> None:
    from kvharness.plan.estimate import progress_line

    try:
        line = progress_line(snakemake.wildcards.hyp)  # noqa: F821
    except (OSError, ValueError, KeyError):
        line = None
    if line:
        print(f"kvharness progress: {line}", file=console, flush=True)


try:
    run_cell(
        dict(snakemake.params.spec),  # noqa: F821
        snakemake.output[0],  # noqa: F821
        uwork=snakemake.params.uwork,  # noqa: F821
    )
except CellFailed as exc:
    logging.error("%s", exc, extra={"console": True})
    progress()
    sys.exit(1)
progress()
