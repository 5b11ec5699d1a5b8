"""Config gone bad (issue 25): non-UTF-8 bytes, bad values in a user's file and a pool larger than the
machine are each one line naming the file (and the field), never a traceback."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvharness.plan.config import ConfigError, check_config_file, name_the_file, validate_config
from kvharness.stacks.sizing import check_memory_pools

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())
GiB = 1024**3


def test_non_utf8_bytes_in_a_comment_name_the_file_and_line(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_bytes(b"sim: {seed: 1}\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: not UTF-8 text \(byte 0xe9\)"):
        check_config_file(path)


@pytest.mark.parametrize("text, field, value, line", [
    ("profiles:\n  spill: {tier0: -2GiB, tier1: 4GiB, tier2: 64GiB}\n", "profiles.spill.tier0", "-2GiB", 2),
    ("telemetry:\n  interval_ms: 1\n", "telemetry.interval_ms", 1, 2),
    ("hypotheses:\n  H0:\n    reps: 0\n", "hypotheses.H0.reps", 0, 3),
])
def test_a_bad_value_names_the_file_that_set_it(tmp_path, text, field, value, line):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    cfg = copy.deepcopy(BASE)
    *parents, leaf = field.split(".")
    node = cfg
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    message = str(name_the_file(info.value, [ROOT / "configs" / "config.yaml", path]))
    assert message.startswith(f"{path}:{line}: {field}: ")


def test_snakemake_names_the_file_of_an_unknown_hypothesis(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("hypotheses:\n  H77: {stacks: [A], profile: comfy, load: {}}\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(path), "-n", "results/H0/summary.csv"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"{path}:2: hypotheses.H77" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def spec(kind="sim", tier0=8 * GiB, **extra):
    return {"stack": {"kind": kind, "name": "sim-A"}, "profile": "huge", "tiers": {"tier0_bytes": tier0, "tier1_bytes": 0},
            **extra}


def test_a_pool_larger_than_the_machine_is_refused_for_a_launched_stack():
    with pytest.raises(ConfigError, match=r"profiles.huge.tier0: 500 GiB is larger than this machine's memory \(64 GiB\)"):
        check_memory_pools(spec(tier0=500 * GiB), total=64 * GiB)
    check_memory_pools(spec(tier0=500 * GiB, remote_machine=True), total=64 * GiB)  # the flag: it runs elsewhere
    check_memory_pools(spec(kind="external", tier0=500 * GiB), total=64 * GiB)  # not ours to size
    check_memory_pools(spec(tier0=8 * GiB), total=64 * GiB)


def test_snakemake_names_a_non_utf8_configfile_in_one_line(tmp_path):
    """Snakemake reads --configfile before the Snakefile runs; setup.sh's hook (kvharness.snakemake_guard)
    turns its UnicodeDecodeError traceback into the same one line as every other bad config."""
    import sysconfig
    assert (Path(sysconfig.get_paths()["purelib"]) / "kvharness_snakemake_guard.pth").is_file(), \
        "run ./setup.sh: it installs the hook that names a non-UTF-8 --configfile"
    path = tmp_path / "mine.yaml"
    path.write_bytes(b"hypotheses:\n  H8:\n    reps: 2  # caf\xe9\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                           f"--configfile={path}", "-n", "results/H8/summary.csv"],
                          capture_output=True, text=True, timeout=120)
    said = proc.stdout + proc.stderr  # Snakemake logs an error raised before its logger is set up to stdout
    assert proc.returncode != 0
    assert f"{path}:3: not UTF-8 text (byte 0xe9); save the file as UTF-8" in said, said[-2000:]
    assert "Traceback" not in said and "UnicodeDecodeError" not in said, said[-2000:]


def test_the_guard_leaves_good_files_and_missing_files_to_snakemake(tmp_path):
    from kvharness.snakemake_guard import check_utf8

    class Module:
        class WorkflowError(Exception):
            pass

    seen = []
    load = check_utf8(Module, lambda p, *a, **k: seen.append(p) or {"ok": 1})
    good = tmp_path / "good.yaml"
    good.write_text("a: 1  # café\n")
    assert load(str(good)) == {"ok": 1}
    assert load(tmp_path / "missing.yaml") == {"ok": 1}  # Snakemake says 'not found' itself
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: 1\n\xff\n")
    with pytest.raises(Module.WorkflowError, match=rf"^{bad}:2: not UTF-8 text \(byte 0xff\)"):
        load(str(bad))
    assert len(seen) == 2
