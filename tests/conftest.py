"""Suite-wide settings."""

import os

import pytest


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
