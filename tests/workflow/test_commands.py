"""Every snakemake command the README shows plans cleanly (dry run), from a fresh working directory."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_snakemake_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if "snakemake" not in line:
                continue
            line = line.split("&&")[-1].strip()
            argv = shlex.split(line)
            if Path(argv[0]).name == "snakemake":
                cmds.append(argv[1:])
    return cmds


COMMANDS = readme_snakemake_commands()


def test_the_readme_shows_snakemake_commands():
    assert len(COMMANDS) >= 5


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a) for a in COMMANDS])
def test_readme_command_plans(args, tmp_path):
    if "--report" in args:
        pytest.skip("--report builds from a finished run (tests/workflow/test_report_e2e.py), it has no dry run")
    args = [a for a in args if a not in ("-n",)]
    # relative config paths in the README are relative to the repository
    args = [f"--configfile={ROOT / a.split('=', 1)[1]}" if a.startswith("--configfile=") else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "-n", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "This was a dry-run" in out or "Nothing to be done" in out
    targets = [a for a in args if a.startswith("results/")]
    for t in targets:  # the target was planned, not swallowed by a multi-value option
        assert t in out, f"{t} not planned"


def test_only_runs_and_reports_a_subset(tmp_path):
    """`only:` keeps the named hypotheses (and H0 that H8's U_work load needs) out of the defaults that
    Snakemake merges in: the plan holds their cells, their analyses and the page, nothing else."""
    import yaml

    from kvharness.plan.config import expand_cells, validate_config

    raw = yaml.safe_load((ROOT / "tests/workflow/tiny.yaml").read_text())
    cfg_path = tmp_path / "subset.yaml"
    cfg_path.write_text(yaml.safe_dump({**raw, "only": ["H8"]}))
    merged = validate_config({**yaml.safe_load((ROOT / "configs/config.yaml").read_text()), **raw, "only": ["H8"]})
    assert list(merged["hypotheses"]) == ["H0", "H8"]
    n_cells = len(expand_cells(merged, "H0")) + len(expand_cells(merged, "H8"))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "-n", "results/report.html", f"--configfile={cfg_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    total = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, flags=re.M)
    assert total and int(total.group(1)) == n_cells + 2 + 1  # cells, two analyses, the page
    bad = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                          str(tmp_path), "-n", f"--configfile={cfg_path}", "--config", "only=[H99]"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "only: unknown hypothesis 'H99'" in bad.stderr
