from kvharness.report.html import build_report


def test_report_escapes_every_value(tmp_path):
    (tmp_path / "H8").mkdir()
    (tmp_path / "H8" / "summary.csv").write_text("stack,model\nsim-B,<script>alert(1)</script>\n")
    out = build_report(tmp_path, tmp_path / "report.html")
    html = out.read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<h2>H8</h2>" in html
