"""The one-page report (``results/report.html``): every analysed hypothesis, read generically.

Each hypothesis is read from its ``verdict.json`` (written by :mod:`kvharness.analysis.run` for every
registered hypothesis) and the files it names, so a newly registered hypothesis appears without any
change here. The page is self-contained (figures embedded as data URIs; the full CSVs are linked next
to it) and every value goes through Jinja2 autoescaping: a model name like ``<script>`` renders as text.

Layout: an index with one line per hypothesis (question, computed verdict, gate status), then one
section each: figures, compact tables (the declared key columns; full CSVs linked), verdict, gates
with measured value and limit, cell status counts, notes, provenance and "how to read this".
"""

from __future__ import annotations

import base64
import csv
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from jinja2 import Environment, select_autoescape

from kvharness.provenance import utc_now

MAX_ROWS = 40  # rows of a compact table; the linked CSV has them all

GENERAL_HOW_TO_READ = (
    "Every point (stack x swept values) is measured in reps independent launches, rep by rep (every "
    "point's rep 0 before any point's rep 1), so a point's reps are spread over the run. points.csv gives per point the mean over reps and the 95 % "
    "Student-t confidence interval (undefined with one rep), and the CoV of p99 TTFT across reps. "
    "Goodput is requests/s meeting every SLO of the load (TTFT, TPOT, E2E); good fraction = good / all "
    "requests, errors counting against it. A gate shows what was measured against what limit; n/a means "
    "it does not apply here or there is no data (e.g. one rep: no CoV)."
)

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kvharness report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 80rem; padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2rem; } h2 { border-top: 2px solid #333; padding-top: 0.8rem; margin-top: 2.5rem; }
table { border-collapse: collapse; font-size: 0.8rem; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.15rem 0.45rem; text-align: right; vertical-align: top; }
th { background: #f3f3f3; text-align: left; } td:first-child, td.text { text-align: left; }
.scroll { overflow-x: auto; max-width: 100%; }
img { max-width: 100%; border: 1px solid #ddd; }
figure { margin: 0.5rem 0 1rem; } figcaption { font-size: 0.85rem; color: #444; max-width: 60rem; }
.verdict { font-size: 1.05rem; background: #eef4ff; border-left: 4px solid #3867d6; padding: 0.5rem 0.8rem; }
.pass { color: #1e7b34; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; } .na { color: #777; }
.warn { background: #fff4e5; border-left: 4px solid #e8a33d; padding: 0.3rem 0.6rem; }
.missing { background: #fde8e8; border: 2px dashed #b3261e; padding: 1rem; }
.howto { font-size: 0.9rem; color: #333; background: #f7f7f7; padding: 0.5rem 0.8rem; }
code { font-size: 0.85em; }
</style></head><body>
<h1>kvharness report</h1>
<p>Generated {{ generated }} from <code>{{ root }}</code>: {{ sections|length }} hypothes{{ 'is' if sections|length == 1 else 'es' }}.</p>

<h2 id="index">Index</h2>
<table class="index">
<tr><th>hypothesis</th><th>question</th><th>verdict</th><th>gates</th><th>cells</th></tr>
{% for s in sections %}
<tr class="index-row" data-hyp="{{ s.hyp }}">
<td class="text"><a href="#{{ s.anchor }}">{{ s.hyp }}</a></td>
<td class="text">{{ s.question }}</td>
<td class="text verdict-line">{{ s.verdict or "(no verdict)" }}</td>
<td class="text"><span class="{{ s.gate_class }}">{{ s.gate_status }}</span> {{ s.gate_counts }}</td>
<td class="text">{{ s.status_line }}</td>
</tr>
{% endfor %}
</table>

{% for s in sections %}
<section id="{{ s.anchor }}" data-hyp="{{ s.hyp }}">
<h2>{{ s.hyp }} — {{ s.question }}</h2>
<p class="verdict" data-hyp="{{ s.hyp }}"><strong>Verdict:</strong> {{ s.verdict or "(no verdict)" }}</p>
{% for note in s.notes %}<p class="warn">{{ note }}</p>{% endfor %}

{% for fig in s.figures %}
{% if fig.data %}<figure><img class="figure" alt="{{ s.hyp }} {{ fig.name }}" src="data:image/png;base64,{{ fig.data }}"><figcaption><strong>{{ fig.name }}.</strong> {{ fig.caption }}</figcaption></figure>
{% else %}<p class="missing">Figure {{ fig.name }} ({{ fig.file }}) is missing.</p>{% endif %}
{% endfor %}

<h3>Gates</h3>
{% if s.gates %}
<table><tr><th>gate</th><th>scope</th><th>result</th><th>measured</th><th>limit</th><th>note</th></tr>
{% for g in s.gates %}<tr><td class="text">{{ g.name }}</td><td class="text">{{ g.scope }}</td><td class="text"><span class="{{ g.cls }}">{{ g.result }}</span></td><td>{{ g.value }}</td><td class="text">{{ g.limit }}</td><td class="text">{{ g.note }}</td></tr>
{% endfor %}</table>
{% else %}<p class="na">No gate applies.</p>{% endif %}

{% for t in s.tables %}
<h3>{{ t.name }} <small>(<a href="{{ t.href }}">{{ t.file }}</a>, {{ t.n_rows }} row{{ '' if t.n_rows == 1 else 's' }}, {{ t.n_columns }} columns)</small></h3>
{% if t.missing %}<p class="missing">{{ t.file }} is missing.</p>{% else %}
{% if t.columns|length < t.n_columns %}<p class="na table-note">Key columns shown; all {{ t.n_columns }} in <a href="{{ t.href }}">{{ t.file }}</a>{% if t.empty %}; empty in every row, not shown: {{ t.empty|join(", ") }}{% endif %}.</p>{% endif %}
<div class="scroll"><table><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr>{% for c in t.columns %}<td>{{ row[c] }}</td>{% endfor %}</tr>{% endfor %}
</table></div>
{% if t.more %}<p class="na">… {{ t.more }} more rows in <a href="{{ t.href }}">{{ t.file }}</a>.</p>{% endif %}
{% endif %}
{% endfor %}

<h3>Cells and provenance</h3>
<table>
<tr><th>cells</th><td class="text">{{ s.status_line }}</td></tr>
{% for name, why in s.invalid %}<tr class="invalid-cell"><th>invalid, not analysed</th><td class="text"><code>{{ name }}</code>: {{ why }}</td></tr>
{% endfor %}
<tr><th>stacks</th><td class="text">{% for name, st in s.stacks %}{{ name }} (role {{ st.role }}, {{ st.kind }}{{ ', tiered' if st.tiered else '' }}){{ "; " if not loop.last }}{% endfor %}</td></tr>
<tr><th>model</th><td class="text">{% for m in s.models %}{{ m.served_model_name }} ({{ m.model }}, {{ m.precision }}, {{ m.hardware }}){{ "; " if not loop.last }}{% endfor %}</td></tr>
<tr><th>code fingerprint</th><td class="text">{% for fp, n in s.fingerprints %}<code>{{ fp }}</code> ({{ n }} cell{{ '' if n == 1 else 's' }}){{ "; " if not loop.last }}{% endfor %}</td></tr>
<tr><th>git</th><td class="text">{{ s.git }}</td></tr>
<tr><th>measured (UTC)</th><td class="text">{{ s.measured }}</td></tr>
<tr><th>analysed (UTC)</th><td class="text">{{ s.analysed }}</td></tr>
</table>

<h3>How to read this</h3>
<div class="howto">{% if s.how_to_read %}<p>{{ s.how_to_read }}</p>{% endif %}<p>{{ general }}</p></div>
</section>
{% endfor %}
</body></html>
"""


def _fmt(value: str) -> str:
    """Compact number formatting for the page (the CSV keeps full precision)."""
    if value in (None, ""):
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number.is_integer() and abs(number) < 1e15 and "." not in str(value) and "e" not in str(value).lower():
        return str(int(number))
    return f"{number:.4g}"


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _gate_view(g: dict) -> dict:
    passed = g.get("passed")
    result, cls = ("pass", "pass") if passed is True else (("fail", "fail") if passed is False else ("n/a", "na"))
    value = g.get("value")
    if isinstance(value, float):
        value = f"{value:.4g}"
    return {**g, "result": result, "cls": cls, "value": "" if value is None else value,
            "limit": "" if g.get("limit") is None else g.get("limit"), "scope": g.get("scope", "")}


def _section(verdict_path: Path, out_dir: Path) -> dict:
    v = json.loads(verdict_path.read_text())
    hyp_dir = verdict_path.parent
    hyp = str(v.get("hyp") or hyp_dir.name)
    gates = [_gate_view(g) for g in v.get("gates") or []]
    n_pass = sum(1 for g in gates if g["result"] == "pass")
    n_fail = sum(1 for g in gates if g["result"] == "fail")
    status = v.get("gate_status") or ("fail" if n_fail else ("pass" if n_pass else "n/a"))
    status_counts = v.get("cell_status") or {}
    figures = []
    for name, fig in (v.get("figures") or {}).items():
        path = hyp_dir / fig["file"]
        data = base64.b64encode(path.read_bytes()).decode() if path.is_file() and path.stat().st_size else None
        figures.append({"name": name, "file": fig["file"], "caption": fig.get("caption", ""), "data": data})
    tables = []
    key_columns = v.get("key_columns") or {}
    for name, file in (v.get("tables") or {}).items():
        path = hyp_dir / file
        href = os.path.relpath(path.resolve(), out_dir)
        if not path.is_file():
            tables.append({"name": name, "file": file, "href": href, "missing": True, "n_rows": 0, "n_columns": 0})
            continue
        columns, rows = _read_csv(path)
        keys = [c for c in (key_columns.get(name) or columns[:10]) if c in columns] or columns[:10]
        empty = [c for c in keys if rows and all(r.get(c) in (None, "") for r in rows)]  # e.g. CIs of one rep
        keys = [c for c in keys if c not in empty] or keys
        shown = [{c: _fmt(r.get(c)) for c in keys} for r in rows[:MAX_ROWS]]
        tables.append({"name": name, "file": file, "href": href, "missing": False, "columns": keys, "rows": shown,
                       "n_rows": len(rows), "n_columns": len(columns), "more": max(0, len(rows) - MAX_ROWS),
                       "empty": empty})
    prov = v.get("provenance") or {}
    fingerprints = sorted(((fp, len(cells)) for fp, cells in (v.get("code_fingerprints") or {}).items()), key=lambda x: -x[1])
    measured = " → ".join(x for x in (prov.get("measured_from_utc"), prov.get("measured_to_utc")) if x) or "unknown"
    return {
        "hyp": hyp, "anchor": f"hyp-{hyp}", "question": v.get("question", ""), "verdict": v.get("verdict", ""),
        "gates": gates, "gate_status": status, "gate_class": {"pass": "pass", "fail": "fail"}.get(status, "na"),
        "gate_counts": f"({n_pass} pass, {n_fail} fail, {len(gates) - n_pass - n_fail} n/a)",
        "status_line": ", ".join(f"{n} {k}" for k, n in sorted(status_counts.items())) + f" of {v.get('n_cells', '?')} cells"
        if status_counts else f"{v.get('n_cells', 0)} cells",
        "invalid": sorted((v.get("invalid_cells") or {}).items()),
        "notes": v.get("notes") or [], "mixed_code": bool(v.get("mixed_code")), "figures": figures, "tables": tables,
        "stacks": sorted((prov.get("stacks") or {}).items()), "models": prov.get("models") or [],
        "fingerprints": fingerprints, "git": ", ".join(prov.get("git_shas") or []) or "unknown",
        "measured": measured, "analysed": v.get("analysed_utc", ""), "how_to_read": v.get("how_to_read", ""),
    }


def _order(hyp: str):
    digits = "".join(ch for ch in hyp[1:] if ch.isdigit())
    return (int(digits or 0), hyp)


def build_report(results_dir: str | Path, out_html: str | Path, verdicts: Iterable[str | Path] | None = None) -> Path:
    """Write the report of the hypotheses whose ``verdict.json`` is given (default: every one under
    ``results_dir/H*/``)."""
    root = Path(results_dir)
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths: Sequence[Path] = [Path(p) for p in verdicts] if verdicts is not None else sorted(root.glob("H*/verdict.json"))
    sections = sorted((_section(p, out.parent.resolve()) for p in paths),
                      key=lambda s: _order(s["hyp"]))
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    html = env.from_string(TEMPLATE).render(sections=sections, generated=utc_now(), root=str(root),
                                            general=GENERAL_HOW_TO_READ)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html)
    os.replace(tmp, out)
    return out
