"""The HTML report, read generically from verdict.json: index, sections, escaping, and the page in Chromium."""

import json
import struct
import zlib

import pytest

from kvharness.report import browser
from kvharness.report.html import build_report

EVIL = "<script>document.body.dataset.pwned='1'</script>"


def _png(path, w=4, h=3):
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * w for _ in range(h))
    chunk = lambda tag, data: struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _hyp(root, hyp, verdict, figures=("fig",), model=EVIL, rows=3):
    d = root / hyp
    d.mkdir(parents=True)
    for f in figures:
        _png(d / f"{f}.png")
    (d / "summary.csv").write_text("stack,concurrency,ttft_ms_p99,wide\n" + "".join(
        f"sim-A,{i},{10.0 + i / 3},{EVIL}\n" for i in range(rows)))
    (d / "points.csv").write_text("stack,n_reps,ttft_ms_p99_mean\nsim-A,2,12.5\n")
    (d / "verdict.json").write_text(json.dumps({
        "hyp": hyp, "question": f"question of {hyp}?", "verdict": verdict, "how_to_read": "read it so",
        "gates": [{"name": "CoV of p99 TTFT across reps", "passed": True, "value": 3.1, "limit": "< 10 %", "note": "", "scope": "common"},
                  {"name": "enough samples for p99", "passed": False, "value": 120, "limit": ">= 500 ok requests per cell", "note": "", "scope": "common"}],
        "gate_status": "fail", "notes": [], "cell_status": {"ok": 3, "degraded": 1}, "n_cells": 4,
        "code_fingerprints": {"abc123": ["c1", "c2", "c3", "c4"]}, "mixed_code": False,
        "provenance": {"stacks": {"sim-A": {"role": "A", "kind": "sim", "tiered": False}},
                       "models": [{"model": "llama-3.1-8b", "served_model_name": model, "precision": "fp8", "hardware": "gb10"}],
                       "measured_from_utc": "2026-12-01T08:00:00Z", "measured_to_utc": "2026-12-01T08:05:00Z", "git_shas": ["deadbeef"]},
        "tables": {"summary": "summary.csv", "points": "points.csv"},
        "key_columns": {"summary": ["stack", "concurrency", "ttft_ms_p99"], "points": ["stack", "n_reps", "ttft_ms_p99_mean"]},
        "figures": {f: {"file": f"{f}.png", "caption": f"caption of {f} (ms)"} for f in figures},
        "analysed_utc": "2026-12-01T08:06:00Z",
    }))


@pytest.fixture()
def results(tmp_path):
    root = tmp_path / "results"
    _hyp(root, "H0", "U_work: sim-A 4.")
    _hyp(root, "H10", "Something else entirely.", figures=("a", "b"))
    _hyp(root, "H2B", "The storage knee is at 2048 tokens.", rows=60)
    return root


def test_report_has_an_index_line_and_a_section_per_hypothesis_in_order(results):
    html = build_report(results, results / "report.html").read_text()
    assert html.index('id="hyp-H0"') < html.index('id="hyp-H2B"') < html.index('id="hyp-H10"')
    assert html.count('class="index-row"') == 3 and html.count('<p class="verdict"') == 3
    assert html.count("data:image/png;base64,") == 4
    assert 'href="H2B/summary.csv"' in html and "20 more rows" in html  # compact table, full CSV linked
    assert "wide" not in html.split('id="hyp-H0"')[1].split("</section>")[0]  # only the key columns
    assert "10.33" in html  # numbers shortened on the page
    assert "<span class=\"fail\">fail</span>" in html and "measured" in html and "&gt;= 500 ok requests per cell" in html
    assert "3 ok" in html and "1 degraded" in html and "abc123" in html and "2026-12-01T08:05:00Z" in html


def test_a_script_model_name_renders_as_text(results):
    html = build_report(results, results / "report.html").read_text()
    assert "<script" not in html
    assert "&lt;script&gt;document.body.dataset.pwned=" in html


def test_missing_figure_is_shown_not_hidden(results):
    (results / "H0" / "fig.png").unlink()
    html = build_report(results, results / "report.html").read_text()
    assert 'class="missing"' in html and "fig.png" in html


@pytest.mark.skipif(browser.find_chromium() is None, reason="no Chromium installed (Debian: apt-get install chromium; .ci/run installs it)")
def test_the_page_in_headless_chromium(results, tmp_path):
    out = build_report(results, results / "report.html")
    probe = browser.inspect(out, tmp_path / "shot.png")
    assert browser.problems(probe, ["H0", "H2B", "H10"]) == []
    assert probe["images"] == 4 and probe["scripts"] == 0
    assert (tmp_path / "shot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (results / "H0" / "fig.png").write_bytes(b"not a png")  # a figure that does not decode is caught
    bad = browser.inspect(build_report(results, results / "report.html"))
    assert any("broken image" in p for p in browser.problems(bad))


def test_points_show_key_columns_without_empty_ones_and_link_the_full_file(tmp_path):
    root = tmp_path / "results"
    _hyp(root, "H0", "v")
    cols = ["stack", "concurrency", "n_reps", "ttft_ms_p99_mean", "ttft_ms_p99_ci_low", "ttft_ms_p99_ci_high",
            *[f"extra_{i}" for i in range(30)]]
    (root / "H0" / "points.csv").write_text(",".join(cols) + "\n" + "sim-A,4,1,12.5,,," + ",".join("1" * 30) + "\n")
    v = json.loads((root / "H0" / "verdict.json").read_text())
    v["key_columns"]["points"] = cols[:6]
    (root / "H0" / "verdict.json").write_text(json.dumps(v))
    html = build_report(root, root / "report.html").read_text()
    points = html.split("<h3>points")[1].split("<h3>")[0]
    assert "<th>ttft_ms_p99_mean</th>" in points and "ttft_ms_p99_ci_low</th>" not in points
    assert "extra_0</th>" not in points and f"all {len(cols)} in <a href=\"H0/points.csv\">points.csv</a>" in points
    assert "not shown: ttft_ms_p99_ci_low, ttft_ms_p99_ci_high" in points


def test_invalid_cells_are_listed_with_their_reason(results):
    path = results / "H0" / "verdict.json"
    verdict = json.loads(path.read_text())
    verdict["cell_status"] = {"ok": 3, "invalid": 1}
    verdict["invalid_cells"] = {"sim-A_c100000": "the load generator could not keep up (client CPU 97 % of a core)"}
    path.write_text(json.dumps(verdict))
    section = build_report(results, results / "report.html").read_text().split('id="hyp-H0"')[1].split("</section>")[0]
    assert "1 invalid" in section and 'class="invalid-cell"' in section
    assert "<code>sim-A_c100000</code>: the load generator could not keep up (client CPU 97 % of a core)" in section
