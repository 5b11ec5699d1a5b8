"""Nothing let in, nothing leaked: loopback listeners, no shell, validated adapter ids, redacted secrets,
an HTML report that escapes every value."""

import json
import re
from pathlib import Path

import httpx
import psutil

from kvharness.measure.cell import run_cell
from kvharness.stacks.names import template_names
from kvharness.provenance import REDACTED, redact_env, scrub
from kvharness.report.html import build_report
from kvharness.stacks.launcher import RunningStack, plan_launch

ROOT = Path(__file__).resolve().parents[2]
PLANTED = "hf_PLANTEDsecret0123456789"


def test_simulator_listens_on_loopback_only(make_cell, tmp_path):
    spec = make_cell(role="B")
    (tmp_path / "t2").mkdir()
    plan = plan_launch(spec["stack"], template_names(spec, tmp_path / "t2"), tmp_path)
    with RunningStack(plan) as stack:
        listening = [c.laddr for c in psutil.Process(stack.pids[0]).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert len(listening) == 2  # the OpenAI server and the KVBM metrics server
    assert all(addr.ip == "127.0.0.1" for addr in listening), listening


def test_no_shell_and_no_string_commands_in_our_code():
    offenders = []
    for path in [*ROOT.joinpath("src").rglob("*.py"), *ROOT.joinpath("workflow").rglob("*.py")]:
        text = path.read_text()
        for pattern in (r"shell\s*=\s*True", r"os\.system\(", r"os\.popen\(", r"subprocess\.getoutput\("):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert not offenders


def test_adapter_ids_are_validated_against_path_traversal(make_cell, tmp_path):
    spec = make_cell(role="B", fault_args=["--max-loras", "2"])
    t2 = tmp_path / "t2"
    t2.mkdir()
    plan = plan_launch(spec["stack"], template_names(spec, t2), tmp_path)
    with RunningStack(plan):
        for bad in ("../../etc/passwd", "..", "a/b", "x" * 200):
            resp = httpx.post(f"{plan.base_url}/v1/completions", json={"model": spec["served_model_name"], "adapter_id": bad,
                                                                     "prompt": "hi there", "max_tokens": 2}, timeout=10)
            assert resp.status_code == 400, bad
            assert "invalid adapter id" in resp.text
    assert not list(tmp_path.parent.glob("etc"))


def test_secrets_are_redacted_everywhere(make_cell, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", PLANTED)
    monkeypatch.setenv("MY_SERVICE_API_KEY", PLANTED + "-key")
    assert redact_env({"HF_TOKEN": "x", "PATH": "/bin"}) == {"HF_TOKEN": REDACTED, "PATH": "/bin"}
    assert PLANTED not in scrub(f"token={PLANTED}")
    spec = make_cell(role="B", duration_s=1.0)
    # The stack echoes its environment into its log, as a careless real server might.
    spec["stack"]["pre_commands"] = [["{python}", "-c", "import os, time; print(dict(os.environ), flush=True); time.sleep(120)"]]
    out = tmp_path / "cells" / "secret"
    run_cell(spec, out)
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()]
    assert not leaks
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["env"]["HF_TOKEN"] == REDACTED


def test_html_report_escapes_every_value(tmp_path):
    (tmp_path / "H8").mkdir()
    (tmp_path / "H8" / "summary.csv").write_text("stack,model\nsim-B,<script>alert(1)</script>\n")
    (tmp_path / "H8" / "verdict.json").write_text(json.dumps({  # the report reads what verdict.json names
        "hyp": "H8", "question": "<script>q</script>", "verdict": "<b>v</b>", "tables": {"summary": "summary.csv"},
        "key_columns": {"summary": ["stack", "model"]}}))
    html = build_report(tmp_path, tmp_path / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
