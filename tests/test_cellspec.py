"""The typed resolved cell spec (kvharness.plan.spec): every cell every shipped config plans is one, and
converts back to exactly the dict the workflow fingerprints; Engine and Sim have the fields of
kvharness.defaults, so a new default is a new typed field."""
import dataclasses
import gzip
import json
from pathlib import Path

import pytest

from kvharness import defaults
from kvharness.plan.spec import CellSpec, Engine, Sim
from kvharness.errors import ConfigError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "planned_cells.json.gz"


def test_every_planned_cell_is_a_typed_spec_and_converts_back_exactly():
    planned = json.loads(gzip.decompress(FIXTURE.read_bytes()))
    n = 0
    for cells in planned.values():
        for spec in cells.values():
            assert CellSpec.from_dict(spec).to_dict() == spec
            n += 1
    assert n > 1000


def test_engine_and_sim_fields_are_the_defaults_keys():
    assert {f.name for f in dataclasses.fields(Engine)} == set(defaults.ENGINE)
    assert {f.name for f in dataclasses.fields(Sim)} == set(defaults.SIM)


def test_a_malformed_spec_is_one_line_naming_the_key():
    spec = next(iter(next(iter(json.loads(gzip.decompress(FIXTURE.read_bytes())).values())).values()))
    with pytest.raises(ConfigError, match=r"engine: unknown key 'max_lora'"):
        CellSpec.from_dict({**spec, "engine": {**spec["engine"], "max_lora": 2}})
    with pytest.raises(ConfigError, match=r"sim: speedup: expected float, got 'fast'"):
        CellSpec.from_dict({**spec, "sim": {**spec["sim"], "speedup": "fast"}})
    with pytest.raises(ConfigError, match=r"tiers is missing"):
        CellSpec.from_dict({k: v for k, v in spec.items() if k != "tiers"})
