"""kvharness: when does storage start to decide LLM inference latency?

Pipeline: sim -> stacks -> loadgen + telemetry -> analysis -> report.
"""

__version__ = "0.1.0"
