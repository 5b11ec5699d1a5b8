"""Background fio noise (kvharness.stacks.bgio): the plan's job, engine fallback, fio's report, config-time checks,
and a real fio run on a temporary directory (skipped where fio is not installed)."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from kvharness.stacks import bgio
from kvharness.plan.config import ConfigError, validate_config

ROOT = Path(__file__).resolve().parents[2]
HAVE_FIO = shutil.which("fio") is not None


def config_with_bio(**bio) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())
    cfg["hypotheses"] = {"H4A": copy.deepcopy(cfg["hypotheses"]["H4A"])}
    cfg["hypotheses"]["H4A"]["load"]["concurrency"] = 4
    cfg["background_io"] = bio
    return cfg


def test_default_job_is_the_plans():
    cfg = bgio.settings({"background_io": {"enabled": True}})
    argv = bgio.job_argv(cfg, "fio", Path("/t2/bgio"), "libaio", True, 4.0, Path("/cell/fio.json"))
    for flag in ("--rw=randrw", "--rwmixread=70", "--bs=16k", "--iodepth=32", "--numjobs=4", "--direct=1",
                 "--time_based", "--runtime=4", "--ioengine=libaio", "--output-format=json", "--output=/cell/fio.json",
                 "--directory=/t2/bgio", f"--size={64 * 1024**2}"):
        assert flag in argv, flag
    layout = bgio.job_argv(cfg, "fio", Path("/t2/bgio"), "psync", False, None, None)
    assert "--create_only=1" in layout and "--time_based" not in layout and "--direct=0" in layout


def test_engine_auto_prefers_libaio_and_falls_back():
    assert bgio.pick_engine("auto", ("sync", "psync", "io_uring", "libaio"))[0] == "libaio"
    engine, why = bgio.pick_engine("auto", ("sync", "psync", "io_uring"))
    assert engine == "io_uring" and "fallback" in why
    assert bgio.pick_engine("auto", ("sync", "psync"))[0] == "psync"
    assert bgio.pick_engine("auto", ())[0] == "psync"
    with pytest.raises(ConfigError, match="not an engine of this fio"):
        bgio.pick_engine("libaio", ("sync", "psync"))


def test_fio_report_with_a_notice_before_the_json(tmp_path):
    lat = {"percentile": {"50.000000": 1_000_000, "95.000000": 5_000_000, "99.000000": 9_000_000}}
    job = {"elapsed": 4, "read": {"iops": 700.0, "bw": 11200, "clat_ns": lat},
           "write": {"iops": 300.0, "bw": 4800, "clat_ns": lat}}
    path = tmp_path / "fio.json"
    path.write_text("fio: terminating on signal 15\n" + json.dumps({"jobs": [job]}))
    s = bgio.fio_summary(bgio.read_fio_json(path))
    assert s["fio_read_iops"] == 700.0 and s["fio_write_iops"] == 300.0
    assert s["fio_read_mib_s"] == pytest.approx(11200 / 1024, abs=0.01)
    assert (s["fio_read_clat_p50_ms"], s["fio_read_clat_p95_ms"], s["fio_read_clat_p99_ms"]) == (1.0, 5.0, 9.0)
    assert bgio.fio_summary(None)["fio_read_iops"] is None
    (tmp_path / "bad.json").write_text("fio: error\n")
    assert bgio.read_fio_json(tmp_path / "bad.json") is None


def test_missing_fio_is_one_line_at_validation():
    with pytest.raises(ConfigError) as e:
        validate_config(config_with_bio(fio="kvharness-no-such-fio"))
    msg = str(e.value)
    assert "\n" not in msg and "fio binary" in msg and "H4A" in msg and "background_io" in msg


def test_missing_fio_is_fine_when_no_cell_has_noise():
    cfg = config_with_bio(fio="kvharness-no-such-fio")
    cfg["hypotheses"]["H4A"]["sweep"] = {"background_io": ["off"]}
    validate_config(cfg)


def test_background_io_config_is_checked():
    with pytest.raises(ConfigError, match="background_io"):
        validate_config(config_with_bio(numjobs=0))
    with pytest.raises(ConfigError, match="background_io"):
        validate_config(config_with_bio(bogus=1))


def test_cell_spec_carries_the_job():
    cfg = validate_config(config_with_bio(size="16MiB"))
    from kvharness.plan.config import expand_cells

    cells = {c["cell"]: c for c in expand_cells(cfg, "H4A")}
    assert bgio.enabled(cells["sim-A_bioon_rep0"]) and not bgio.enabled(cells["sim-A_biooff_rep0"])
    assert bgio.settings(cells["sim-A_bioon_rep0"])["size"] == "16MiB"


@pytest.mark.skipif(not HAVE_FIO, reason="fio is not installed")
@pytest.mark.parametrize("engine", ["auto", "psync"])
def test_real_fio_run_reports_io_and_cleans_up(tmp_path, engine):
    spec = {"background_io": {"enabled": True, "size": "4MiB", "numjobs": 2, "iodepth": 4, "ioengine": engine}}
    cell = tmp_path / "cell"
    cell.mkdir()
    noise = bgio.BackgroundIO(spec, tmp_path / "tier2", cell, runtime_s=1.0)
    info = noise.start()
    assert info["engine"] == ("libaio" if engine == "auto" and "libaio" in bgio.available_engines("fio") else info["engine"])
    assert noise.running()
    noise.proc.wait(timeout=30)
    noise.stop()
    assert not noise.running()
    summary = bgio.fio_summary(bgio.read_fio_json(cell / bgio.FIO_JSON))
    assert summary["fio_read_iops"] > 0 and summary["fio_write_iops"] > 0
    assert not (tmp_path / "tier2" / "bgio").exists()  # fio's files are not left as tier-2 bytes
    assert "--create_only=1" in (cell / bgio.FIO_LOG).read_text()
