"""A restructuring plans the same cells: every shipped config's cell ids and resolved specs equal the
fixture written from main before issue 26 (tests/plan_snapshot.py says how to regenerate it)."""
import gzip
import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _snapshot_module():
    spec = importlib.util.spec_from_file_location("plan_snapshot", HERE / "plan_snapshot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_shipped_config_plans_the_same_cells():
    snap = _snapshot_module()
    before = json.loads(gzip.decompress(snap.FIXTURE.read_bytes()))
    now = snap.snapshot()
    assert sorted(now) == sorted(before)
    for cfg in before:
        assert sorted(now[cfg]) == sorted(before[cfg]), f"{cfg}: planned cell ids changed"
        changed = [cell for cell in before[cfg] if now[cfg][cell] != before[cfg][cell]]
        assert not changed, f"{cfg}: resolved specs changed for {changed[:5]} (of {len(changed)})"
