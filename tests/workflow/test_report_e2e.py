"""Both reports after a real (tiny) run: results/report.html in headless Chromium, and Snakemake's own
report.zip, with a planted script as the model name (slow: real processes, real load)."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kvharness.report import browser

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("report.yaml")
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), f"--configfile={CONFIG}"]
# Snakemake merges the config over configs/config.yaml, so `all` would run every default hypothesis:
# the test runs H0 and H8 and builds the page from what they wrote (kvharness report, as the rule does).
TARGETS = ["results/H0/verdict.json", "results/H8/verdict.json"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("report-run")
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *TARGETS],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (workdir / "console.txt").write_text(proc.stdout + proc.stderr)
    proc = subprocess.run([sys.executable, "-m", "kvharness", "report", "--results", str(workdir / "results"),
                           "--out", str(workdir / "results/report.html")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_the_console_shows_each_cell_and_progress(run):
    """What Snakemake's console shows per cell job: the cell's outcome line and its hypothesis's progress."""
    console = (run / "console.txt").read_text()
    cells = sorted(p.name for p in (run / "results/H0/cells").iterdir())
    for cell in cells:
        assert f"cell H0/{cell} " in console and "requests " in console
    assert f"H0: {len(cells)}/{len(cells)} cells done, ~0m00s left" in console
    assert "kvharness progress: H0: 1/" in console and "kvharness progress: H8: " in console


def test_reps_give_points_with_intervals_and_common_gates(run):
    verdict = json.loads((run / "results/H0/verdict.json").read_text())
    names = {g["name"]: g for g in verdict["gates"]}
    assert names["CoV of p99 TTFT across reps"]["passed"] is not None  # 2 reps: evaluated, with a value
    assert names["CoV of p99 TTFT across reps"]["value"] is not None
    assert "enough samples for p99" in names and verdict["gate_status"] in ("pass", "fail", "incomplete")
    points = (run / "results/H0/points.csv").read_text().splitlines()
    assert len(points) == 1 + 4 and "ttft_ms_p99_ci_low" in points[0]  # 2 stacks x 2 concurrencies
    assert verdict["provenance"]["models"][0]["served_model_name"] == browser.CANARY


@pytest.mark.skipif(browser.find_chromium() is None, reason="no Chromium installed (Debian: apt-get install chromium; .ci/run installs it)")
def test_report_html_in_chromium(run, tmp_path):
    probe = browser.inspect(run / "results/report.html", tmp_path / "report.png")
    assert browser.problems(probe, ["H0", "H8"]) == []
    assert probe["images"] >= 2 and probe["canary"] is False


def test_snakemake_report_zip_has_every_figure_and_escapes_the_model(run, tmp_path):
    zip_path = tmp_path / "report.zip"
    # no targets: the report follows what was run (H0, H8), not every hypothesis the defaults define
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(run), "--report", str(zip_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        html = z.read(next(n for n in names if n.endswith("report.html"))).decode()
    assert any(n.endswith("latency.png") for n in names) and any(n.endswith("hero.png") for n in names)
    assert not any("/H1/" in n or "H9" in n for n in names)
    assert "window.__kvharness_canary=1</script>" not in html  # the caption carries the model name, escaped
    assert "&lt;script&gt;window.__kvharness_canary=1" in html
