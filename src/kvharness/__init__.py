"""kvharness: when does storage start to decide LLM inference latency?

Pipeline: sim -> stacks -> loadgen + telemetry -> analysis -> report.
"""

from pathlib import Path

__version__ = "0.1.0"

#: the checkout (src/kvharness/ -> the repository root); configs/ and the git history live here
REPO_ROOT = Path(__file__).resolve().parents[2]
