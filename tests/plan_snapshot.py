"""The cells every shipped config plans, as (hyp, cell id) -> resolved spec: the fixture
tests/fixtures/planned_cells.json.gz was written by this from main before issue 26's restructuring, and
tests/test_planned_cells.py compares today's plan with it (a refactor must plan the same cells).

Regenerate only when a change is meant to alter the plan: `python tests/plan_snapshot.py`.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the tree whose plan is taken (code and configs): this one, or another checkout, e.g. `python
#: tests/plan_snapshot.py /work/main` writes the "before" fixture from main into this tree
CONFIGS = ["configs/config.yaml", "configs/paper.yaml", "configs/smoke.yaml", "configs/mocker.yaml",
           "tests/workflow/tiny.yaml", "tests/workflow/mocker-tiny.yaml"]
FIXTURE = ROOT / "tests" / "fixtures" / "planned_cells.json.gz"


def snapshot(root: Path = ROOT) -> dict:
    sys.path.insert(0, str(root / "src"))
    from kvharness.plan.config import cell_index
    from kvharness.plan.estimate import load_config

    out = {}
    for cfg in CONFIGS:
        extra = [] if cfg == "configs/config.yaml" else [str(root / cfg)]
        cells = cell_index(load_config(extra))
        out[cfg] = {f"{h}/{c}": spec for (h, c), spec in cells.items()}
    return json.loads(json.dumps(out, sort_keys=True, default=str))


if __name__ == "__main__":
    text = json.dumps(snapshot(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT), indent=1, sort_keys=True) + "\n"
    FIXTURE.write_bytes(gzip.compress(text.encode(), compresslevel=9, mtime=0))
    print(f"wrote {FIXTURE}")
