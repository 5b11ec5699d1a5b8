"""kvharness: when does storage start to decide LLM inference latency?

Pipeline: sim -> stacks -> loadgen + telemetry -> plan -> cell (measure) -> analysis -> report; the layers
and the rule that holds them are in docs/architecture.md.
"""

from pathlib import Path

__version__ = "0.1.0"

#: the checkout (src/kvharness/ -> the repository root); configs/ and the git history live here
REPO_ROOT = Path(__file__).resolve().parents[2]
#: the shipped configuration: config.yaml, the schema, models.yaml, stacks/<name>.yaml
CONFIG_DIR = REPO_ROOT / "configs"
STACK_DIR = CONFIG_DIR / "stacks"
