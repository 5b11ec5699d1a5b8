"""The resolved cell spec, typed: what ``config.expand_cells`` produces for one cell, every default filled.

A first step of issue 26's typed spec: the plan checks every cell it makes against these classes
(``CellSpec.from_dict``: a missing key, an unknown key or a wrong type is a ConfigError naming it), and
``to_dict`` gives back exactly the plain builtins Snakemake fingerprints (a test round-trips every cell of
every shipped config). ``Engine`` and ``Sim`` take their fields from ``kvharness.defaults`` (one source; a
test holds them equal). What is still a plain mapping here: the stack (``config.load_stack``), the load (the
load generator's spec table checks it), telemetry, quality, background I/O and the sweep values. The
downstream readers (cell runner, load generator, simulator) still read the dict form.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kvharness.errors import ConfigError

_NUMBER = (int, float)


@dataclass(frozen=True)
class Tiers:
    tier0_bytes: int
    tier1_bytes: int
    tier2_bytes: int
    memory_budget_bytes: int


@dataclass(frozen=True)
class Engine:
    tokens_per_block: int
    max_batch_size: int
    max_num_tokens: int
    eviction_policy: str
    max_loras: int
    max_cpu_loras: int
    lora_adapter_bytes: int


@dataclass(frozen=True)
class Sim:
    speedup: float
    block_bytes_scale: float
    seed: int


@dataclass(frozen=True)
class CellSpec:
    hyp: str
    cell: str
    role: str
    rep: int
    sweep: dict
    stack: dict
    profile: str
    model: str
    model_path: str
    served_model_name: str
    precision: str
    hardware: str
    host: str
    tiers: Tiers
    engine: Engine
    sim: Sim
    load: dict
    telemetry: dict
    quality: dict
    background_io: dict
    tier2_root: str
    keep_tier2_files: bool
    remote_machine: bool = False   # present in the dict only when true (absent by default: no re-measure)

    @classmethod
    def from_dict(cls, d: dict) -> "CellSpec":
        where = f"cell {d.get('hyp')}/{d.get('cell')}"
        values = _typed(cls, d, where)
        for name, sub in (("tiers", Tiers), ("engine", Engine), ("sim", Sim)):
            values[name] = sub(**_typed(sub, values[name], f"{where}: {name}"))
        return cls(**values)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("tiers", "engine", "sim"):
            out[name] = dataclasses.asdict(out[name])
        if not out["remote_machine"]:
            del out["remote_machine"]
        return out


_TYPES = {"int": (int,), "float": _NUMBER, "str": (str,), "bool": (bool,), "dict": (dict,)}


def _typed(cls, d: Any, where: str) -> dict:
    """``d``'s values for the fields of ``cls``: every required field present, no other key, each of its type."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    out = {}
    for name, f in fields.items():
        if name not in d:
            if f.default is dataclasses.MISSING:
                raise ConfigError(f"{where}: {name} is missing")
            continue
        value = d[name]
        want = _TYPES.get(f.type)
        if want is not None and (not isinstance(value, want) or (bool not in want and isinstance(value, bool))):
            raise ConfigError(f"{where}: {name}: expected {f.type}, got {value!r}")
        out[name] = value
    return out
