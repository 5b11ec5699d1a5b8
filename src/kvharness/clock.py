"""One clock for thresholds: every latency limit is stated in the stack's own time.

SLOs (TTFT, TPOT, E2E) and SPEC's 1000 ms collapse limit describe the served system. A simulated stack
runs its model ``speedup`` times faster than real time (``sim.speedup``: every modelled duration is
divided by it), so what the harness measures there is wall time = modelled time / speedup. Before a
limit is compared with a measured latency it is converted with :func:`wall_ms`; a real stack has
speedup 1 and its limits are compared as stated. Tables and verdicts that use a limit show both figures
(:func:`describe`): "1000 ms stack time (50 ms wall at speedup 20)".

docs/definitions.md "One clock for thresholds" is the reader's version of this.
"""

from __future__ import annotations

from typing import Mapping


def _runs_at_sim_speedup(stack: Mapping) -> bool:
    """A stack whose argv passes ``{speedup}`` (e.g. Dynamo's mocker: ``--speedup-ratio {speedup}``) runs
    its model at the simulator's speedup, whatever its kind."""
    argvs = [stack.get("command") or []] + [c.get("argv") or [] for c in stack.get("pre_commands") or []]
    return any("{speedup}" in str(a) for argv in argvs for a in argv)


def speedup_of(spec: Mapping) -> float:
    """The speedup a cell's stack ran at: ``sim.speedup`` for a simulated stack or one that passes
    ``{speedup}`` to its engine (the mocker), 1 for anything else."""
    stack = spec.get("stack") or {}
    if stack.get("kind") != "sim" and not _runs_at_sim_speedup(stack):
        return 1.0
    value = (spec.get("sim") or {}).get("speedup")
    return float(value) if value else 1.0


def wall_ms(stack_ms: float | None, speedup: float | None = 1.0) -> float | None:
    """Wall-clock equivalent (ms) of a limit stated in the stack's own time: ``stack_ms / speedup``."""
    if stack_ms is None:
        return None
    return float(stack_ms) / float(speedup or 1.0)


def wall_slo(slo: Mapping[str, float | None] | None, speedup: float | None = 1.0) -> dict:
    """Every limit of an SLO mapping (``ttft_ms``, ``tpot_ms``, ``e2e_ms``; stack time) in wall ms."""
    return {k: wall_ms(v, speedup) for k, v in (slo or {}).items()}


def describe(stack_ms: float, speedup: float | None = 1.0) -> str:
    """'1000 ms stack time (50 ms wall at speedup 20)'; just '1000 ms' at speedup 1."""
    s = float(speedup or 1.0)
    if s == 1.0:
        return f"{stack_ms:g} ms"
    return f"{stack_ms:g} ms stack time ({wall_ms(stack_ms, s):.4g} ms wall at speedup {s:g})"
