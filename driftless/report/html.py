"""Render the report data as one HTML page: inline CSS, inline SVG charts, no external assets.

Templates are Jinja2 (autoescaped); the two chart kinds are small SVG builders written here,
because a plotting library would add a large dependency (or JavaScript) for two simple charts.
"""

from __future__ import annotations

from html import escape
from typing import Any

from jinja2 import Environment, select_autoescape
from markupsafe import Markup

from driftless.status import Check, Run

# Badge colours of the statuses (driftless.status): green agrees, amber warns, red failed, purple could not run,
# grey not checked.
COLORS: dict[str, str] = {
          Check.PASS: "#2e7d32", Run.SUCCESS: "#2e7d32", Run.REPLAY: "#2e7d32", Check.REPAIRED: "#1565c0",
          Check.WARN: "#ef6c00", Check.FAIL: "#c62828", Run.FAILED: "#c62828", Check.ERROR: "#6a1b9a",
          Run.CHECKS_FAILED: "#6a1b9a", Check.SKIP: "#78909c"}


def bar_chart(runs: list[dict[str, Any]], width: int = 560, height: int = 170) -> Markup:
    """Rows loaded per run (bars, red when the run failed), with the extracted count as a tick."""
    if not runs:
        return Markup('<p class="muted">no runs yet</p>')
    pad_l, pad_b, pad_t = 48, 22, 10
    plot_w, plot_h = width - pad_l - 8, height - pad_b - pad_t
    top = max(max(r["extracted"], r["loaded"]) for r in runs) or 1
    step = plot_w / len(runs)
    bar_w = min(max(2.0, step * 0.7), 36.0)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="rows per run">']
    for frac in (0, 0.5, 1):
        y = pad_t + plot_h * (1 - frac)
        parts.append(f'<line x1="{pad_l}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{pad_l - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{int(top * frac):,}</text>')
    for i, r in enumerate(runs):
        x = pad_l + i * step + (step - bar_w) / 2
        h = plot_h * r["loaded"] / top
        color = COLORS.get(r["status"], "#607d8b") if r["status"] != "success" else "#4a90d9"
        title = escape(f"{r['window_start']} .. {r['window_end']}: {r['status']}, extracted {r['extracted']:,}, "
                       f"loaded {r['loaded']:,}, quarantined {r['quarantined']:,}")
        parts.append(f'<rect x="{x:.1f}" y="{pad_t + plot_h - h:.1f}" width="{bar_w:.1f}" height="{max(h, 1):.1f}" '
                     f'fill="{color}"><title>{title}</title></rect>')
        ey = pad_t + plot_h * (1 - r["extracted"] / top)
        parts.append(f'<line x1="{x:.1f}" x2="{x + bar_w:.1f}" y1="{ey:.1f}" y2="{ey:.1f}" class="tick"/>')
    parts.append(f'<text x="{pad_l}" y="{height - 6}" class="axis">oldest</text>'
                 f'<text x="{width - 8}" y="{height - 6}" class="axis" text-anchor="end">latest run</text></svg>')
    return Markup("".join(parts))


def line_chart(runs: list[dict[str, Any]], width: int = 560, height: int = 170) -> Markup:
    """Reject ratio (quarantined / extracted) per run, as a line with points."""
    if not runs:
        return Markup('<p class="muted">no runs yet</p>')
    ratios = [(r["quarantined"] / r["extracted"]) if r["extracted"] else 0.0 for r in runs]
    pad_l, pad_b, pad_t = 48, 22, 10
    plot_w, plot_h = width - pad_l - 8, height - pad_b - pad_t
    top = max(max(ratios), 0.01)
    step = plot_w / max(len(runs) - 1, 1)
    pts = [(pad_l + i * step if len(runs) > 1 else pad_l + plot_w / 2, pad_t + plot_h * (1 - v / top))
           for i, v in enumerate(ratios)]
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="reject ratio per run">']
    for frac in (0, 0.5, 1):
        y = pad_t + plot_h * (1 - frac)
        parts.append(f'<line x1="{pad_l}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{pad_l - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{top * frac:.1%}</text>')
    parts.append('<polyline fill="none" stroke="#8e24aa" stroke-width="2" points="'
                 + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
    for (x, y), v, r in zip(pts, ratios, runs, strict=True):
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#8e24aa"><title>'
                     f'{escape(r["window_start"])}: {v:.2%} rejected</title></circle>')
    parts.append(f'<text x="{pad_l}" y="{height - 6}" class="axis">oldest</text>'
                 f'<text x="{width - 8}" y="{height - 6}" class="axis" text-anchor="end">latest run</text></svg>')
    return Markup("".join(parts))


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f6f8;color:#1d2733}
header{background:#1d2733;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c4d0}main{padding:20px 32px;max-width:1300px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 20px;margin:0 0 20px}
h2{margin:0 0 8px;font-size:18px}h3{margin:14px 0 6px;font-size:14px;color:#455a64}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:5px 8px;
border-bottom:1px solid #e3e8ee;vertical-align:top}th{background:#f0f3f6;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
.muted{color:#78909c}.grid2{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.kpis{display:flex;gap:12px;flex-wrap:wrap;margin:8px 0}.kpi{background:#f0f3f6;border-radius:6px;padding:8px 14px}
.kpi b{display:block;font-size:18px}.chart .grid{stroke:#e3e8ee}.chart .axis{font-size:10px;fill:#78909c}
.chart .tick{stroke:#1d2733;stroke-width:1.5}code{background:#f0f3f6;padding:0 4px;border-radius:3px}
.err{background:#ffebee;color:#b71c1c;padding:8px 12px;border-radius:6px}
.src{color:#2e7d32}.tgt{color:#c62828}
"""

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>driftless data-consistency report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{{ css }}</style></head>
<body><header><h1>driftless &middot; data-consistency report</h1>
<p>generated {{ data.generated_at }} &middot; {{ data.pipelines|length }} pipeline(s)</p></header><main>
<section><h2>Integration catalog</h2>
<table><tr><th>pipeline</th><th>source</th><th>target</th><th>schedule</th><th>last run</th>
<th>window checks</th><th>deep diff</th><th>watermark</th>
<th title="now minus the newest cursor value loaded into the target">freshness lag</th></tr>
{% for p in data.pipelines %}<tr><td><a href="#{{ p.pipeline }}">{{ p.pipeline }}</a></td>
<td>{{ p.source.type }}: <code>{{ p.source.connection }}</code> {{ p.source.table }}</td>
<td><code>{{ p.target.connection }}</code> {{ p.target.table }}</td><td><code>{{ p.schedule }}</code></td>
<td>{{ badge(p.last_status or 'none') }}</td><td>{{ badge(p.window_status or 'none') }}</td>
<td>{{ badge(p.deep_status or 'none') }}</td>
<td>{{ p.state.watermark if p.state else '-' }}</td><td>{{ p.state.freshness_lag if p.state else '-' }}</td></tr>
{% endfor %}</table>
<p class="muted">Watermark: where the next scheduled window starts. Freshness lag: now minus the newest cursor value
(e.g. <code>updated_at</code>) loaded into the target, so it measures how old the newest synced row is, not when the
last run happened: a source with no recent changes shows a large lag beside a current watermark.</p></section>
{% for p in data.pipelines %}<section id="{{ p.pipeline }}"><h2>{{ p.pipeline }}</h2>
<p class="muted">{{ p.description }} &middot; key {{ p.source.primary_key|join(', ') }}, cursor {{ p.source.cursor }}
{% if p.target.database %} &middot; target {{ p.target.database }}{% endif %}</p>
<p class="muted">checked per window: {{ p.checked.window|join('; ') }}{% for n in p.checked.not_checked %}<br>
not checked: {{ n }}{% endfor %}</p>
{% if p.error %}<p class="err">{{ p.error }}</p>{% else %}
{% set last = p.runs[-1] if p.runs else None %}
<div class="kpis"><div class="kpi">runs shown<b>{{ p.runs|length }}</b></div>
<div class="kpi">last extracted<b>{{ '{:,}'.format(last.extracted) if last else '-' }}</b></div>
<div class="kpi">last loaded<b>{{ '{:,}'.format(last.loaded) if last else '-' }}</b></div>
<div class="kpi">last quarantined<b>{{ '{:,}'.format(last.quarantined) if last else '-' }}</b></div>
<div class="kpi" title="now minus the newest cursor value loaded into the target">
freshness lag<b>{{ p.state.freshness_lag if p.state else '-' }}</b></div>
<div class="kpi">reconciliation<b>{{ badge(p.reconciliation_status) }}</b></div></div>
{% if not (p.runs or p.checks) %}<p class="muted">never run: the target holds no runs, checks or diffs of this
pipeline yet</p>{% else %}
<div class="grid2"><div><h3>Rows per run (bars: loaded; ticks: extracted)</h3>{{ bar_chart(p.runs) }}</div>
<div><h3>Reject ratio per run (quarantined / extracted)</h3>{{ line_chart(p.runs) }}</div></div>
<h3>Latest runs</h3><table><tr><th>window</th><th>status</th><th class="num">extracted</th>
<th class="num">loaded</th><th class="num">quarantined</th><th class="num">written</th><th class="num">seconds</th>
<th>finished</th></tr>
{% for r in p.runs[-10:]|reverse %}<tr><td>{{ r.window_start }} &rarr; {{ r.window_end }}</td><td>{{ badge(r.status) }}
{% if r.message %}<div class="muted">{{ r.message[:200] }}</div>{% endif %}</td>
<td class="num">{{ '{:,}'.format(r.extracted) }}</td><td class="num">{{ '{:,}'.format(r.loaded) }}</td>
<td class="num">{{ '{:,}'.format(r.quarantined) }}</td><td class="num">{{ '{:,}'.format(r.written) }}</td>
<td class="num">{{ '%.2f'|format(r.duration_s or 0) }}</td><td>{{ r.finished_at }}</td></tr>{% endfor %}</table>
<h3>Reconciliation checks (latest first)</h3><table><tr><th>checked</th><th>kind</th><th>check</th><th>status</th>
<th class="num">source</th><th class="num">target</th><th class="num">difference</th><th>note</th></tr>
{% for c in p.checks[:12] %}<tr><td>{{ c.checked_at }}</td><td>{{ c.kind }}</td><td>{{ c.check }}</td>
<td>{{ badge(c.status) }}</td><td class="num">{{ c.source if c.source is not none else '' }}</td>
<td class="num">{{ c.target if c.target is not none else '' }}</td>
<td class="num">{{ c.difference if c.difference is not none else '' }}</td>
<td class="muted">{{ (c.message or '')[:300] }}</td></tr>
{% else %}<tr><td colspan="8" class="muted">no checks recorded</td></tr>{% endfor %}</table>
<h3>Latest diff of the whole table</h3>
{% set d = p.latest_diff %}{% if not d and not p.checked.deep_diff %}<p>{{ badge('SKIP') }}
{{ p.checked.not_checked|join('; ') }}</p>{% elif not d %}<p class="muted">no diff yet: run
<code>etl reconcile {{ p.pipeline }} --deep</code></p>
{% elif d.status in ('SKIP', 'ERROR') %}<p>{{ badge(d.status) }} {{ d.message }}
<span class="muted">({{ d.checked_at }})</span></p>
{% else %}<div class="kpis"><div class="kpi">status<b>{{ badge(d.status) }}</b></div>
<div class="kpi">rows source<b>{{ d.rows_source }}</b></div><div class="kpi">rows target<b>{{ d.rows_target }}</b></div>
<div class="kpi">missing in target<b>{{ d.missing_in_target if d.missing_in_target is not none else '?' }}</b></div>
<div class="kpi">extra in target<b>{{ d.extra_in_target if d.extra_in_target is not none else '?' }}</b></div>
<div class="kpi">changed<b>{{ d.changed if d.changed is not none else '?' }}</b></div>
<div class="kpi">seconds<b>{{ d.duration_s }}</b></div></div>
<p class="muted">checked {{ d.checked_at }} ({{ d.check }}){% if d.row_digest %}; stored row digest read on
source: {{ 'yes' if d.row_digest.source else 'no' }}, target: {{ 'yes' if d.row_digest.target else 'no' }}
{%- endif %}{% if d.changed_columns %}; changed columns:
{% for k, v in d.changed_columns.items() %}{{ k }} ({{ v }}){% if not loop.last %}, {% endif %}{% endfor %}{% endif %}
{% if d.repair %}; repair upserted {{ d.repair.upserted }}, deleted {{ d.repair.deleted }},
after repair: {{ d.repair.after.status }}{% endif %}</p>
{% if d.samples and (d.samples.missing_in_target or d.samples.extra_in_target
 or d.samples.changed) %}<table><tr><th>difference</th><th>key</th><th>source</th><th>target</th></tr>
{% for s in d.samples.missing_in_target %}<tr><td>missing in target</td><td>{{ fmt(s.key) }}</td>
<td class="src">{{ fmt(s.source) }}</td><td class="muted">(no row)</td></tr>{% endfor %}
{% for s in d.samples.extra_in_target %}<tr><td>extra in target</td><td>{{ fmt(s.key) }}</td>
<td class="muted">(no row)</td><td class="tgt">{{ fmt(s.target) }}</td></tr>{% endfor %}
{% for s in d.samples.changed %}<tr><td>changed</td><td>{{ fmt(s.key) }}</td>
<td class="src">{% for k, v in s.columns.items() %}{{ k }} = {{ show(v.source) }}<br>{% endfor %}</td>
<td class="tgt">{% for k, v in s.columns.items() %}{{ k }} = {{ show(v.target) }}<br>{% endfor %}</td></tr>{% endfor %}
</table>{% endif %}{% endif %}{% endif %}{% endif %}</section>{% endfor %}
<p class="muted">Canonical values: timestamps UTC to the microsecond, decimals at the declared scale, NULL shown
as <code>NULL</code> (distinct from the empty string <code>''</code>), booleans 0/1.</p>
</main></body></html>
"""


def _show(value: Any) -> str:
    if value is None:
        return "NULL"
    if value == "":
        return "''"
    return str(value)


def _fmt(mapping: dict[str, Any] | None) -> str:
    if not mapping:
        return ""
    return ", ".join(f"{k} = {_show(v)}" for k, v in mapping.items())


def _badge(status: str) -> Markup:
    color = COLORS.get(status, "#78909c")
    return Markup(f'<span class="badge" style="background:{color}">{escape(str(status))}</span>')


def render_html(data: dict[str, Any]) -> str:
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    template = env.from_string(TEMPLATE)
    return template.render(data=data, css=Markup(CSS), badge=_badge, bar_chart=bar_chart, line_chart=line_chart,
                           fmt=_fmt, show=_show)
