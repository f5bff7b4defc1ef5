"""The dashboard's pages, rendered on the server: pure functions from a ``View`` to HTML (charts and
the job graph as inline SVG). No front-end build step: the page's only script fetches the live part
(``/fragment``) once a second and puts it in place, keeping open what the reader opened.

A ``View`` is what one page shows; ``view_of`` builds it from a history (the events of a running
job's observer, or of a checkpoint directory on disk) and, for a running job, the task counters and
their rates.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowstate.observe.counters import TaskCounters
from flowstate.observe.doctor import Finding, diagnose, facts_of
from flowstate.observe.history import CheckpointRecord, Event, RestartRecord, RestoreRecord, StartRecord

HISTORY_ROWS = 100
"""Checkpoints the history table shows, newest first."""


@dataclass(frozen=True, slots=True)
class TaskView:
    counters: TaskCounters
    records_per_second: float | None = None
    backpressure_ratio: float | None = None
    """Share of the last interval the task waited on a full output channel."""


@dataclass(frozen=True, slots=True)
class View:
    job: str
    state: str
    """``running``, ``restarting``, ``ended``, … or ``stopped`` (a directory on disk)."""
    live: bool
    settings: Mapping[str, Any]
    vertices: Sequence[Mapping[str, Any]]
    checkpoints: Sequence[CheckpointRecord]
    """Oldest first."""
    restores: Sequence[RestoreRecord]
    restarts: Sequence[RestartRecord]
    findings: Sequence[Finding]
    tasks: Mapping[str, TaskView] = field(default_factory=dict)
    can_trigger: bool = False
    """Whether the page offers "checkpoint now" (a running job with a control token)."""


def view_of(events: Sequence[Event], *, job: str | None = None, state: str, live: bool,
            tasks: Mapping[str, TaskView] | None = None, can_trigger: bool = False) -> View:
    starts = [e for e in events if isinstance(e, StartRecord)]
    start = starts[-1] if starts else None
    return View(
        job=job or (start.job if start else "?"), state=state, live=live,
        settings=start.settings if start else {}, vertices=start.vertices if start else (),
        checkpoints=[e for e in events if isinstance(e, CheckpointRecord)],
        restores=[e for e in events if isinstance(e, RestoreRecord)],
        restarts=[e for e in events if isinstance(e, RestartRecord)],
        findings=diagnose(facts_of(events)), tasks=tasks or {}, can_trigger=can_trigger,
    )


def rates(before: Mapping[str, TaskCounters], after: Mapping[str, TaskCounters], seconds: float) -> dict[str, TaskView]:
    """Each task's counters with its rates over ``seconds`` between two samples."""
    out = {}
    for task, c in after.items():
        b = before.get(task)
        if b is None or seconds <= 0 or c.records_in < b.records_in:
            out[task] = TaskView(c)
        else:
            out[task] = TaskView(c, (c.records_in - b.records_in) / seconds,
                                 min(1.0, max(0.0, (c.backpressure_seconds - b.backpressure_seconds) / seconds)))
    return out


# ---- pages -----------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f4f6f9}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:baseline}
header h1{font-size:18px;margin:0} header .state{padding:2px 8px;border-radius:4px;background:#3b7a57}
header .state.ended,header .state.stopped{background:#666} header .state.restarting{background:#b35c00}
main{padding:12px 20px} section{background:#fff;border-radius:6px;padding:10px 14px;margin-bottom:12px;
box-shadow:0 1px 2px #0002} h2{font-size:15px;margin:2px 0 8px}
table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #e3e6ea;
font-variant-numeric:tabular-nums} th{font-weight:600;color:#555} td.num,th.num{text-align:right}
.failed{color:#b00020} .completed{color:#2e7d32} details summary{cursor:pointer}
.finding{border-left:4px solid #e0a800;padding:4px 10px;margin:6px 0} .finding.critical{border-color:#b00020}
.finding .suggestion{color:#444} .charts{display:flex;gap:12px;flex-wrap:wrap} .muted{color:#777}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:12px} section{overflow-x:auto} td.num,td:first-child{white-space:nowrap}
tr.subtasks-row{display:none} tr:has(details[open]) + tr.subtasks-row{display:table-row}
tr.subtasks-row>td{background:#f7f9fc;padding:4px 8px 10px 28px} details>summary{list-style-position:inside}
"""

_SCRIPT = """
const live = document.getElementById('live');
async function refresh() {
  if (!live.dataset.live) return;
  const open = [...live.querySelectorAll('details[open]')].map(d => d.id);
  try {
    const r = await fetch('fragment', {cache: 'no-store'});
    if (r.ok) { live.innerHTML = await r.text();
      for (const id of open) { const d = document.getElementById(id); if (d) d.open = true; } }
  } catch (e) {}
}
setInterval(refresh, 1000);
async function checkpointNow() {
  const token = document.getElementById('token').value;
  const out = document.getElementById('trigger-result');
  out.textContent = 'checkpoint requested…';
  const r = await fetch('api/checkpoint', {method: 'POST', headers: {'Authorization': 'Bearer ' + token}});
  const body = await r.json();
  out.textContent = r.ok ? 'checkpoint ' + body.checkpoint_id + ' completed' : 'refused: ' + body.error;
}
"""


def page(view: View) -> str:
    trigger = ""
    if view.can_trigger:
        trigger = ('<span><input id="token" type="password" placeholder="control token" size="14"> '
                   '<button onclick="checkpointNow()">Checkpoint now</button> <span id="trigger-result"></span></span>')
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>flowstate · {_e(view.job)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>flowstate · {_e(view.job)}</h1><span>{_e(view.settings.get('mode', ''))}</span>{trigger}</header>"
        f"<main id='live' {'data-live=1' if view.live else ''}>{fragment(view)}</main>"
        f"<script>{_SCRIPT}</script></body></html>"
    )


def fragment(view: View) -> str:
    """The part of the page that refreshes."""
    return "".join([
        _summary(view),
        _section("Job graph", _graph(view), "graph"),
        _section("Checkpoint doctor", _findings(view.findings), "doctor"),
        "<div class='charts'>",
        _section("Checkpoint duration", _chart([(c.checkpoint_id, c.duration) for c in _done(view)], _seconds), "chart-duration"),
        _section("Checkpoint size", _chart([(c.checkpoint_id, float(c.size)) for c in _done(view)], _size), "chart-size"),
        "</div>",
        _section("Checkpoint history", _history(view), "history"),
        "<div class='cols'>",
        _section("Restores and restarts", _restores(view), "restores"),
        _section("Configuration", _configuration(view), "configuration"),
        "</div>",
    ])


def _done(view: View) -> list[CheckpointRecord]:
    return [c for c in view.checkpoints if c.completed and not c.savepoint][-HISTORY_ROWS:]


def _summary(view: View) -> str:
    completed = sum(1 for c in view.checkpoints if c.completed)
    failed = len(view.checkpoints) - completed
    records = sum(t.counters.records_in for name, t in view.tasks.items() if _is_source(view, name))
    parts = [f"<span class='state {_e(view.state)}' data-testid='state'>{_e(view.state)}</span>",
             f"<span data-testid='completed'>checkpoints completed: {completed}</span>",
             f"<span data-testid='failed'>failed: {failed}</span>",
             f"<span>restarts: {len(view.restarts)}</span>"]
    if view.tasks:
        parts.append(f"<span>records read: {records:,}</span>")
    return f"<section style='display:flex;gap:18px'>{''.join(parts)}</section>"


def _is_source(view: View, task: str) -> bool:
    vertex = task.rpartition("#")[0]
    return any(v.get("name") == vertex and str(v.get("chain", "")).startswith("source(") for v in view.vertices)


def _section(title: str, body: str, testid: str) -> str:
    return f"<section data-testid='{testid}'><h2>{_e(title)}</h2>{body}</section>"


def _graph(view: View) -> str:
    """The job graph: one box per vertex, columns by depth, edges with their partitioning."""
    vertices = list(view.vertices)
    if not vertices:
        return "<p class='muted'>No job graph recorded.</p>"
    depth: dict[str, int] = {}
    for v in vertices:
        depth[v["name"]] = 1 + max((depth.get(src, 0) for src, _ in v.get("inputs", [])), default=-1)
    columns: dict[int, list[Mapping[str, Any]]] = {}
    for v in vertices:
        columns.setdefault(depth[v["name"]], []).append(v)
    box_w, box_h, gap_x, gap_y = 250, 92, 90, 24
    pos = {}
    for d, vs in columns.items():
        for k, v in enumerate(vs):
            pos[v["name"]] = (10 + d * (box_w + gap_x), 10 + k * (box_h + gap_y))
    width = 20 + (max(columns) + 1) * (box_w + gap_x) - gap_x
    height = 20 + max(len(vs) for vs in columns.values()) * (box_h + gap_y) - gap_y
    out = [f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' aria-label='job graph'>",
           "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7' markerHeight='7' "
           "orient='auto'><path d='M0,0L10,5L0,10z' fill='#667'/></marker></defs>"]
    for v in vertices:
        x2, y2 = pos[v["name"]]
        for src, partition in v.get("inputs", []):
            if src not in pos:
                continue
            x1, y1 = pos[src]
            ax, ay, bx, by = x1 + box_w, y1 + box_h / 2, x2, y2 + box_h / 2
            out.append(f"<line x1='{ax}' y1='{ay}' x2='{bx}' y2='{by}' stroke='#667' stroke-width='1.5' marker-end='url(#arrow)'/>")
            out.append(f"<text x='{(ax + bx) / 2}' y='{(ay + by) / 2 - 6}' font-size='11' text-anchor='middle' "
                       f"fill='#555'>{_e(partition)}</text>")
    for v in vertices:
        x, y = pos[v["name"]]
        name, p = v["name"], int(v.get("parallelism", 1))
        tasks = [view.tasks.get(f"{name}#{i}") for i in range(p)]
        known = [t for t in tasks if t is not None]
        rate = sum(t.records_per_second or 0.0 for t in known)
        ratios = [t.backpressure_ratio for t in known if t.backpressure_ratio is not None]
        bp = max(ratios) if ratios else None
        fill = "#eef3fb" if bp is None or bp < 0.1 else ("#fff4d6" if bp < 0.5 else "#fde0e0")
        out.append(f"<g data-testid='vertex' data-name='{_e(name)}'>"
                   f"<rect x='{x}' y='{y}' width='{box_w}' height='{box_h}' rx='6' fill='{fill}' stroke='#8899aa'/>"
                   f"<text x='{x + 10}' y='{y + 20}' font-weight='600' font-size='13'>{_e(name)} ×{p}</text>"
                   f"<text x='{x + 10}' y='{y + 38}' font-size='11' fill='#555'>{_e(_short(str(v.get('chain', '')), 40))}</text>")
        if known:
            records = sum(t.counters.records_in for t in known)
            out.append(f"<text x='{x + 10}' y='{y + 58}' font-size='12'>{rate:,.0f} rec/s in · {records:,} total</text>")
            out.append(f"<text x='{x + 10}' y='{y + 76}' font-size='12'>back-pressure "
                       f"{'—' if bp is None else f'{bp:.0%}'}</text>")
        out.append("</g>")
    out.append("</svg>")
    if view.tasks:
        rows = "".join(
            f"<tr><td>{_e(t)}</td><td class='num'>{v.counters.records_in:,}</td><td class='num'>{v.counters.records_out:,}</td>"
            f"<td class='num'>{'' if v.records_per_second is None else f'{v.records_per_second:,.0f}'}</td>"
            f"<td class='num'>{'' if v.backpressure_ratio is None else f'{v.backpressure_ratio:.0%}'}</td>"
            f"<td class='num'>{v.counters.state_entries:,}</td></tr>"
            for t, v in sorted(view.tasks.items()))
        out.append("<details id='subtasks'><summary>Subtasks</summary><table><tr><th>subtask</th><th class='num'>records in</th>"
                   "<th class='num'>records out</th><th class='num'>rec/s</th><th class='num'>back-pressure</th>"
                   f"<th class='num'>state entries</th></tr>{rows}</table></details>")
    return "".join(out)


def _findings(findings: Sequence[Finding]) -> str:
    if not findings:
        return "<p class='muted' data-testid='healthy'>No problem found in the recent checkpoints.</p>"
    return "".join(f"<div class='finding {f.severity.value}' data-rule='{f.rule.value}'><b>{_e(f.rule.value)}</b>: "
                   f"{_e(f.sentence)}<div class='suggestion'>→ {_e(f.suggestion)}</div></div>" for f in findings)


def _chart(points: Sequence[tuple[int, float]], label: Any) -> str:
    """A line chart of ``(checkpoint id, value)``, with the largest value and the id range marked."""
    if len(points) < 2:
        return "<p class='muted'>Not enough completed checkpoints yet.</p>"
    w, h, pad = 460, 150, 36
    xs = [p[0] for p in points]
    top = max(p[1] for p in points) or 1.0
    x0, x1 = min(xs), max(xs)

    def sx(x: float) -> float:
        return pad + (x - x0) / max(x1 - x0, 1) * (w - pad - 8)

    def sy(y: float) -> float:
        return h - 20 - y / top * (h - 34)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    dots = "".join(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2.5' fill='#2a6fdb'><title>#{x}: {_e(label(y))}</title></circle>"
                   for x, y in points)
    return (f"<svg width='{w}' height='{h}' viewBox='0 0 {w} {h}' role='img'>"
            f"<line x1='{pad}' y1='{h - 20}' x2='{w - 8}' y2='{h - 20}' stroke='#aab'/>"
            f"<line x1='{pad}' y1='14' x2='{pad}' y2='{h - 20}' stroke='#aab'/>"
            f"<text x='2' y='18' font-size='10' fill='#555'>{_e(label(top))}</text>"
            f"<text x='{pad}' y='{h - 6}' font-size='10' fill='#555'>#{x0}</text>"
            f"<text x='{w - 8}' y='{h - 6}' font-size='10' fill='#555' text-anchor='end'>#{x1}</text>"
            f"<polyline points='{line}' fill='none' stroke='#2a6fdb' stroke-width='1.5'/>{dots}</svg>")


def _history(view: View) -> str:
    rows = list(reversed(view.checkpoints))[:HISTORY_ROWS]
    if not rows:
        return "<p class='muted'>No checkpoint yet.</p>"
    head = ("<tr><th>id</th><th>status</th><th>triggered</th><th class='num'>duration</th><th class='num'>size</th>"
            "<th class='num'>written</th><th class='num'>in-flight</th><th class='num'>sync (max)</th>"
            "<th class='num'>async (max)</th><th class='num'>alignment (max)</th><th>failure</th></tr>")
    body = []
    for c in rows:
        kind = " (savepoint)" if c.savepoint else (" (final)" if c.final else "")
        failure = ""
        if not c.completed:
            failure = _e(c.reason_text or c.reason or "")
            if c.declines:
                failure += "".join(f"<br><span class='decline'>{_e(d.task)} declined: {_e(d.detail or d.reason)}</span>"
                                   for d in c.declines[:4])
            if c.missing:
                failure += f"<br><span class='muted'>no acknowledgement from {_e(', '.join(c.missing[:6]))}</span>"
        body.append(
            f"<tr data-testid='checkpoint' data-id='{c.checkpoint_id}' data-status='{c.status}'>"
            f"<td>{_details(c)}</td><td class='{c.status}'>{c.status}{kind}</td><td>{_clock(c.trigger_time)}</td>"
            f"<td class='num'>{_seconds(c.duration)}</td><td class='num'>{_size(c.size) if c.completed else ''}</td>"
            f"<td class='num'>{_size(c.bytes_written) if c.completed else ''}</td>"
            f"<td class='num'>{_size(c.channel_bytes) if c.channel_bytes else ''}</td>"
            f"<td class='num'>{_seconds(c.max_sync) if c.completed else ''}</td>"
            f"<td class='num'>{_seconds(c.max_async) if c.completed else ''}</td>"
            f"<td class='num'>{_seconds(c.max_alignment) if c.completed else ''}</td>"
            f"<td class='failure'>{failure}</td></tr>{_subtasks(c)}")
    return f"<table>{head}{''.join(body)}</table>"


def _details(c: CheckpointRecord) -> str:
    """The id, which opens the row of the checkpoint's subtasks below (CSS ``:has``)."""
    if not c.subtasks:
        return str(c.checkpoint_id)
    return f"<details id='chk-{c.checkpoint_id}'><summary>{c.checkpoint_id}</summary></details>"


def _subtasks(c: CheckpointRecord) -> str:
    if not c.subtasks:
        return ""
    rows = "".join(
        f"<tr><td>{_e(s.task)}</td><td class='num'>{'' if s.ack_seconds is None else _seconds(s.ack_seconds)}</td>"
        f"<td class='num'>{_seconds(s.alignment_seconds)}</td><td class='num'>{_seconds(s.sync_seconds)}</td>"
        f"<td class='num'>{_seconds(s.async_seconds)}</td><td class='num'>{_size(s.channel_bytes)}</td>"
        f"<td class='num'>{_size(s.bytes_written)}</td><td class='num'>{_size(s.full_size)}</td></tr>"
        for s in c.subtasks)
    return (f"<tr class='subtasks-row' id='sub-{c.checkpoint_id}'><td colspan='11'><table class='subtasks'>"
            "<tr><th>subtask</th><th class='num'>acknowledged</th><th class='num'>alignment</th><th class='num'>sync</th>"
            "<th class='num'>async</th><th class='num'>in-flight</th><th class='num'>written</th><th class='num'>state</th></tr>"
            f"{rows}</table></td></tr>")


def _restores(view: View) -> str:
    items: list[tuple[float, str]] = []
    for r in view.restores:
        what = f"checkpoint {r.checkpoint_id}" if r.checkpoint_id is not None else "scratch"
        if r.savepoint:
            what = f"savepoint {r.savepoint}"
        items.append((r.time, f"<tr><td>{_clock(r.time)}</td><td>attempt {r.attempt} restored from {_e(what)}</td>"
                              f"<td class='num'>{_seconds(r.seconds)}</td></tr>"))
    for restart in view.restarts:
        items.append((restart.time, f"<tr><td>{_clock(restart.time)}</td><td class='failed'>restart: {_e(_short(restart.reason, 160))}</td>"
                              "<td></td></tr>"))
    if not items:
        return "<p class='muted'>None.</p>"
    rows = "".join(text for _, text in sorted(items, reverse=True)[:50])
    return f"<table><tr><th>time</th><th>what</th><th class='num'>took</th></tr>{rows}</table>"


def _configuration(view: View) -> str:
    if not view.settings:
        return "<p class='muted'>Not recorded.</p>"
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e('' if v is None else v)}</td></tr>" for k, v in sorted(view.settings.items()))
    return f"<table>{rows}</table>"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _seconds(v: float) -> str:
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def _size(v: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return ""
