"""A campaign of 20 smoke cells in which 3 crash, hang or error: the other 17 complete, the 3 are marked,
and a second snakemake call reruns only those 3."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HEALTHY = list(range(1, 18))  # 17 healthy cells
FAULTS = {"crashy": ["--fault-crash-after", "2"], "hangy": ["--fault-hang"], "erroring": ["--fault-error-rate", "1.0"]}

pytestmark = pytest.mark.slow


def write_stacks(folder: Path, with_faults: bool) -> dict:
    base = yaml.safe_load((ROOT / "configs/stacks/sim-B.yaml").read_text())
    roles = {}
    for role, (name, args) in zip("CHE", FAULTS.items()):
        stack = dict(base, command=[*base["command"], *(args if with_faults else [])])
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(stack))
        roles[role] = str(path)
    return roles


def write_config(folder: Path, with_faults: bool) -> Path:
    cfg = {
        "stacks": {"A": "sim-A", **write_stacks(folder, with_faults)},
        # H901: a registered id that the default config does not define (its sections would be merged in)
        "hypothesis_modules": [str(ROOT / "tests/workflow/axes_hypotheses.py")],
        "hypotheses": {
            "H0": {"stacks": ["A"], "profile": "comfy", "sweep": {"concurrency": HEALTHY},
                   "load": {"pattern": {"kind": "closed"}, "duration_s": 0.5,
                            "workload": {"kind": "fixed_context", "context_tokens": 128, "output_tokens": 4}}},
            "H901": {"stacks": ["C", "H", "E"], "profile": "spill",
                   "load": {"concurrency": 2, "pattern": {"kind": "closed"}, "duration_s": 1.0, "request_timeout_s": 1.0,
                            "workload": {"kind": "fixed_context", "context_tokens": 128, "output_tokens": 4}}},
        },
    }
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def targets():
    return [f"results/H0/cells/sim-A_c{c}" for c in HEALTHY] + [f"results/H901/cells/{n}" for n in FAULTS]


def snakemake(workdir, config, *args):
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
                           "--configfile", str(config), "--cores", "1", *args, *targets()],
                          capture_output=True, text=True, timeout=600)


def test_three_bad_cells_do_not_poison_the_campaign(tmp_path):
    config = write_config(tmp_path, with_faults=True)
    first = snakemake(tmp_path, config, "--keep-going")
    assert first.returncode != 0  # failures are reported, not hidden
    cells = tmp_path / "results"
    complete = [p for p in cells.glob("H*/cells/*") if p.is_dir() and "." not in p.name]
    assert len(complete) == 17
    for name in FAULTS:
        kept = list(cells.glob(f"H901/cells/{name}.failed-*"))
        assert len(kept) == 1, name
        assert (kept[0] / "reason.txt").read_text().strip()

    plan = snakemake(tmp_path, config, "-n")
    planned = sorted(re.findall(r"wildcards: hyp=(\w+), cell=([\w-]+)", plan.stdout))
    assert planned == sorted(("H901", n) for n in FAULTS)

    config = write_config(tmp_path, with_faults=False)  # the faults fixed: the rerun measures only those 3
    second = snakemake(tmp_path, config)
    assert second.returncode == 0, second.stderr[-2000:]
    ran = re.findall(r"wildcards: hyp=(\w+), cell=([\w-]+)", second.stdout + second.stderr)
    assert sorted(set(ran)) == sorted(("H901", n) for n in FAULTS)
    complete = [p for p in cells.glob("H*/cells/*") if p.is_dir() and "." not in p.name]
    assert len(complete) == 20
