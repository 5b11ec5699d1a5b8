from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # tm_fakeserver


@pytest.fixture
def fixture_text():
    def read(name: str) -> str:
        return (HERE / "fixtures" / name).read_text()
    return read
