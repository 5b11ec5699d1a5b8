"""Suite-wide settings."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _private_benchmark_lock(tmp_path_factory):
    """Cells run by the tests take a lock of this test session, not the machine-wide benchmark lock
    (``$KVHARNESS_LOCK``): a test run must not wait hours behind a real benchmark on the same box, nor
    two engineers' test runs behind each other. Tests of the lock itself set their own path."""
    old = os.environ.get("KVHARNESS_LOCK")
    os.environ["KVHARNESS_LOCK"] = str(tmp_path_factory.mktemp("lock") / "benchmark.lock")
    yield
    if old is None:
        os.environ.pop("KVHARNESS_LOCK", None)
    else:
        os.environ["KVHARNESS_LOCK"] = old


@pytest.fixture(scope="session")
def snakemake_workdir(tmp_path_factory):
    """``run(name, configfile, targets, cores=1, timeout=600)``: the workflow run to its targets in a fresh
    working directory (a finished run, asserted); returns that directory. The known-truth tests read the
    tables it produced."""

    def run(name: str, configfile, targets: list[str], cores: int = 1, timeout: float = 600) -> Path:
        workdir = tmp_path_factory.mktemp(name)
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                               str(workdir), "--configfile", str(configfile), "--cores", str(cores), *targets],
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return workdir

    return run
