"""A single-page HTML report of every hypothesis table and figure under a results folder.

Every value goes through Jinja2 autoescaping: a model name like ``<script>`` renders as text.
"""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

from jinja2 import Environment, select_autoescape

from kvharness.provenance import utc_now

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kvharness report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; font-size: 0.85rem; margin-bottom: 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.warn { color: #a00; }
img { max-width: 100%; border: 1px solid #ddd; }
</style></head><body>
<h1>kvharness report</h1>
<p>Generated {{ generated }} from <code>{{ root }}</code>.</p>
{% for section in sections %}
<h2>{{ section.hyp }}</h2>
{% if section.verdict %}<p><strong>{{ section.verdict.question }}</strong> {{ section.verdict.verdict }}</p>{% endif %}
{% if section.verdict and section.verdict.mixed_code %}<p class="warn">Warning: these cells were measured by different code
({{ section.verdict.code_fingerprints | length }} code fingerprints): {% for fp, cells in section.verdict.code_fingerprints.items() %}<code>{{ fp }}</code> ({{ cells | length }} cells) {% endfor %}</p>{% endif %}
{% for table in section.tables %}
<h3>{{ table.name }}</h3>
<table><tr>{% for c in table.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in table.rows %}<tr>{% for c in table.columns %}<td>{{ row[c] }}</td>{% endfor %}</tr>{% endfor %}
</table>
{% endfor %}
{% for fig in section.figures %}<figure><img alt="{{ fig.name }}" src="data:image/png;base64,{{ fig.data }}"><figcaption>{{ fig.name }}</figcaption></figure>{% endfor %}
{% endfor %}
</body></html>
"""


def build_report(results_dir: str | Path, out_html: str | Path) -> Path:
    root = Path(results_dir)
    sections = []
    for hyp_dir in sorted(p for p in root.glob("H*") if p.is_dir()):
        tables = []
        for csv_path in sorted(hyp_dir.glob("*.csv")):
            with csv_path.open() as fh:
                reader = csv.DictReader(fh)
                rows = list(reader)
                tables.append({"name": csv_path.name, "columns": reader.fieldnames or [], "rows": rows})
        figures = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in sorted(hyp_dir.glob("*.png"))]
        verdict = None
        if (hyp_dir / "verdict.json").is_file():
            verdict = json.loads((hyp_dir / "verdict.json").read_text())
        if tables or figures:
            sections.append({"hyp": hyp_dir.name, "tables": tables, "figures": figures, "verdict": verdict})
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    html = env.from_string(TEMPLATE).render(sections=sections, generated=utc_now(), root=str(root))
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html)
    return out
