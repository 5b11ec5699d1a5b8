"""Toy hypotheses H900.. (one per axis/pattern/workload case of test_axes_workflow.py): a cell table only."""

from kvharness.analysis.registry import Hypothesis, Result, Table, register


def analyze(ctx):
    return Result(tables={"summary": [{"cell": r["cell"]} for r in ctx.rows]})


for i in range(900, 940):
    register(Hypothesis(id=f"H{i}", question="planning test", analyze=analyze, tables=(Table("summary", ["cell"]),)))
