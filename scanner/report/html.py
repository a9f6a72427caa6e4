"""A self-contained HTML report: one file, inline CSS and SVG, no scripts, no network.

Sections: verdict and artifacts; findings (and suppressed findings with their reasons);
a heatmap of where weights changed (rows = tensors in file order, columns = bins of
output channels, colour = relative change); the change class of every changed tensor;
the graph diff as a small diagram; the signature and attestation chain the gate checked.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from scanner import __version__
from scanner.diff.model import TensorDiff, TensorStatus
from scanner.findings import Finding, Severity
from scanner.report.model import Report, changed_tensors

BINS = 32
"""Columns of the heatmap: output channels (axis 0) grouped into this many bins."""
MAX_ROWS = 160
"""Tensors shown in the heatmap; the rest are counted (the largest changes are kept)."""

_SEV_COLOUR = {
    Severity.CRITICAL: "#7f1d1d",
    Severity.HIGH: "#b91c1c",
    Severity.MEDIUM: "#c2410c",
    Severity.LOW: "#a16207",
    Severity.INFO: "#475569",
}
_VERDICT_COLOUR = {"pass": "#15803d", "fail": "#b91c1c", "error": "#6b21a8"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#0f172a;
background:#f8fafc}
header{padding:18px 28px;background:#0f172a;color:#f8fafc}
header h1{margin:0;font-size:20px}
main{padding:8px 28px 40px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;margin:16px 0;padding:14px 18px}
h2{font-size:16px;margin:0 0 10px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e2e8f0;vertical-align:top}
th{background:#f1f5f9;font-weight:600}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
.badge{display:inline-block;padding:2px 10px;border-radius:999px;color:#fff;font-weight:700}
.sev{display:inline-block;padding:0 6px;border-radius:4px;color:#fff;font-size:12px}
.muted{color:#64748b}
.legend{display:flex;gap:6px;align-items:center;font-size:12px;margin:6px 0}
svg text{font:11px ui-monospace,SFMono-Regular,Menlo,monospace}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_html(report: Report) -> str:
    """The report as one HTML document (no external resources, no scripts)."""
    parts = [
        _header(report),
        _artifacts(report),
        _findings(report),
        _suppressed(report),
        _heatmap(report),
        _classes(report),
        _graph(report),
        _chain(report),
    ]
    title = f"modelseal {report.command}: {report.verdict}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f'<meta name="viewport" content="width=device-width"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body>"
        + "".join(p for p in parts if p)
        + "</main></body></html>\n"
    )


def _header(report: Report) -> str:
    verdict = report.verdict
    pack = getattr(report, "rules_pack", None)
    extra = f" &middot; rules pack <code>{_e(pack)}</code>" if pack else ""
    cls = (
        f" &middot; change class <b>{_e(report.classification)}</b>"
        if (report.classification)
        else ""
    )
    error = f"<p>error: {_e(report.error)}</p>" if report.error else ""
    return (
        f"<header><h1>modelseal {_e(report.command)} report "
        f'<span class="badge" id="verdict" style="background:{_VERDICT_COLOUR[verdict]}">'
        f"{_e(verdict.upper())}</span></h1>"
        f"<div>modelseal {_e(__version__)} &middot; fail on "
        f"{_e('never' if getattr(report, 'never_fail', False) else report.fail_on)}"
        f"{extra}{cls} &middot; {report.seconds:.2f} s</div>{error}</header><main>"
    )


def _artifacts(report: Report) -> str:
    if not report.artifacts:
        return ""
    rows = "".join(
        f"<tr><td>{_e(a.role)}</td><td><code>{_e(a.path)}</code></td><td>{_e(a.format)}</td>"
        f"<td>{a.files}</td><td>{a.tensors}</td><td>{a.tensor_bytes:,}</td></tr>"
        for a in report.artifacts
    )
    counts = report.summary()["tensors"]
    status = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no tensors compared"
    return (
        '<section id="artifacts"><h2>Artifacts</h2><table><tr><th>role</th><th>path</th>'
        "<th>format</th><th>files</th><th>tensors</th><th>tensor bytes</th></tr>"
        f'{rows}</table><p class="muted">Tensors: {_e(status)}</p></section>'
    )


def _sev(severity: Severity) -> str:
    return f'<span class="sev" style="background:{_SEV_COLOUR[severity]}">{severity}</span>'


def _where(f: Finding) -> str:
    out = []
    for loc in f.locations[:6]:
        bits = [
            b for b in (loc.artifact, loc.file, loc.tensor, loc.node and f"node {loc.node}") if b
        ]
        out.append(f"<code>{_e(':'.join(bits))}</code>")
    if len(f.locations) > 6:
        out.append(f'<span class="muted">+{len(f.locations) - 6} more</span>')
    return "<br>".join(out)


def _findings(report: Report) -> str:
    findings = sorted(report.findings, key=lambda f: (-f.severity, f.rule_id))
    if not findings:
        return '<section id="findings"><h2>Findings</h2><p>No findings.</p></section>'
    rows = "".join(
        f"<tr><td>{_sev(f.severity)}</td><td><code>{_e(f.rule_id)}</code></td>"
        f"<td><b>{_e(f.title)}</b><br>{_e(f.message)}{_policy_note(f)}</td>"
        f"<td>{_where(f)}</td></tr>"
        for f in findings
    )
    return (
        f'<section id="findings"><h2>Findings ({len(findings)})</h2><table><tr>'
        "<th>severity</th><th>rule</th><th>finding</th><th>where</th></tr>"
        f"{rows}</table></section>"
    )


def _policy_note(f: Finding) -> str:
    policy = f.evidence.get("policy")
    if not isinstance(policy, Mapping):
        return ""
    notes = []
    if "allowed_class" in policy:
        notes.append(f"allowed class {policy['allowed_class']} by {policy['allowed_by']}")
    if "catalogue_severity" in policy:
        notes.append(f"catalogue severity {policy['catalogue_severity']}")
    return f'<br><span class="muted">{_e("; ".join(notes))}</span>' if notes else ""


def _suppressed(report: Report) -> str:
    items = getattr(report, "suppressed", ())
    if not items:
        return ""
    rows = "".join(
        f"<tr><td><code>{_e(s.finding.rule_id)}</code></td><td>{_e(s.finding.message)}</td>"
        f"<td>{_e(s.suppression.reason)}</td>"
        f"<td>{_e(s.suppression.expires.isoformat() if s.suppression.expires else 'never')}</td>"
        f'<td class="muted">{_e(s.suppression.source)}</td></tr>'
        for s in items
    )
    return (
        f'<section id="suppressed"><h2>Suppressed findings ({len(items)})</h2><table><tr>'
        "<th>rule</th><th>finding</th><th>reason</th><th>expires</th><th>from</th></tr>"
        f"{rows}</table></section>"
    )


# ------------------------------------------------------------------------------ heatmap


def channel_bins(t: TensorDiff, bins: int = BINS) -> list[float] | None:
    """Relative change per bin of output channels, in [0, 1]-ish units of rel L2.

    A classifier may attach exact per-bin magnitudes as ``labels["channel_change"]`` (a
    list of floats); otherwise each bin gets the tensor's relative L2 change weighted by
    the fraction of its channels that changed (``where.rows``), which is exact about
    *where* and approximate about *how much*.
    """
    exact = t.labels.get("channel_change")
    if isinstance(exact, Sequence) and exact and all(isinstance(x, (int, float)) for x in exact):
        return _rebin([float(x) for x in exact], bins)
    rel = _rel(t)
    if t.status in (TensorStatus.ADDED, TensorStatus.REMOVED, TensorStatus.SHAPE_CHANGED):
        return None
    w = t.where
    shape = t.deployed_shape or t.trusted_shape or ()
    n_rows = (w.n_rows if w is not None and w.n_rows else (shape[0] if shape else 1)) or 1
    if w is None or not w.rows:
        return [rel] * bins if rel > 0 else [0.0] * bins
    counts = [0] * bins
    sizes = [0] * bins
    for i in range(n_rows):
        sizes[min(bins - 1, i * bins // n_rows)] += 1
    for r in w.rows:
        counts[min(bins - 1, r * bins // n_rows)] += 1
    return [rel * (c / s) if s else 0.0 for c, s in zip(counts, sizes, strict=True)]


def _rebin(values: list[float], bins: int) -> list[float]:
    if len(values) == bins:
        return values
    out = [0.0] * bins
    for i, v in enumerate(values):
        j = min(bins - 1, i * bins // len(values))
        out[j] = max(out[j], v)
    return out


def _rel(t: TensorDiff) -> float:
    if t.delta is None:
        return 0.0
    rel = t.delta.rel_l2
    return 1.0 if not math.isfinite(rel) else max(0.0, rel)


def _colour(value: float, top: float) -> str:
    """White -> amber -> dark red on a log scale relative to the largest change."""
    if value <= 0 or top <= 0:
        return "#f1f5f9"
    x = max(0.0, min(1.0, 1 + math.log10(value / top) / 6))  # six decades of range
    r = int(254 - x * (254 - 127))
    g = int(243 - x * (243 - 29))
    b = int(199 - x * (199 - 29))
    return f"#{r:02x}{g:02x}{b:02x}"


def _class_of(t: TensorDiff) -> str:
    label = t.labels.get("class")
    return str(label) if label else t.status.value


def _heatmap(report: Report) -> str:
    changed = changed_tensors(report)
    if not report.tensors:
        return ""
    if not changed:
        return (
            '<section id="heatmap"><h2>Where weights changed</h2>'
            "<p>No tensor changed.</p></section>"
        )
    order = {t.name: i for i, t in enumerate(report.tensors)}
    shown = sorted(changed, key=_rel, reverse=True)[:MAX_ROWS]
    shown.sort(key=lambda t: order[t.name])
    rows = [(t, channel_bins(t)) for t in shown]
    top = max((v for _, b in rows if b for v in b), default=0.0)
    label_w, cell, row_h, class_w = 330, 16, 14, 150
    width = label_w + BINS * cell + class_w + 10
    height = 24 + len(rows) * row_h + 6
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="heatmap-svg" width="{width}" '
        f'height="{height}" role="img" aria-label="per-tensor change heatmap">',
        f'<text x="{label_w}" y="14">output channels (axis 0), {BINS} bins &#8594;</text>',
        f'<text x="{label_w + BINS * cell + 8}" y="14">change class</text>',
    ]
    for i, (t, bins) in enumerate(rows):
        y = 22 + i * row_h
        name = t.name if len(t.name) <= 46 else "\u2026" + t.name[-45:]
        svg.append(f'<text x="4" y="{y + 11}"><title>{_e(t.name)}</title>{_e(name)}</text>')
        if bins is None:
            svg.append(
                f'<rect x="{label_w}" y="{y}" width="{BINS * cell}" '
                f'height="{row_h - 2}" fill="#cbd5e1"><title>{_e(t.name)}: '
                f"{_e(t.status.value)} (no per-channel comparison)</title></rect>"
            )
        else:
            for j, v in enumerate(bins):
                svg.append(
                    f'<rect class="cell" x="{label_w + j * cell}" y="{y}" '
                    f'width="{cell - 1}" height="{row_h - 2}" fill="{_colour(v, top)}">'
                    f"<title>{_e(t.name)} bin {j}: relative change {v:.3g}</title></rect>"
                )
        svg.append(f'<text x="{label_w + BINS * cell + 8}" y="{y + 11}">{_e(_class_of(t))}</text>')
    svg.append("</svg>")
    legend = "".join(
        f'<span style="display:inline-block;width:18px;height:12px;background:'
        f'{_colour(top * 10**-k, top)}"></span>'
        for k in range(6, -1, -1)
    )
    hidden = len(changed) - len(shown)
    more = f" {hidden} smaller changes not shown." if hidden > 0 else ""
    return (
        '<section id="heatmap"><h2>Where weights changed</h2>'
        f'<div class="legend">relative change: 0 {legend} {top:.3g} (log scale; grey: '
        f'added, removed or reshaped)</div><div style="overflow-x:auto">{"".join(svg)}</div>'
        f'<p class="muted">{len(changed)} of {len(report.tensors)} tensors changed.{more}'
        "</p></section>"
    )


def _classes(report: Report) -> str:
    changed = changed_tensors(report)
    if not changed:
        return ""
    rows = "".join(
        f"<tr><td><code>{_e(t.name)}</code></td><td>{_e(t.status.value)}</td>"
        f"<td><b>{_e(_class_of(t))}</b></td>"
        f"<td>{'' if t.delta is None else f'{_rel(t):.3g}'}</td>"
        f"<td>{_e(t.where.describe() if t.where else '')}</td></tr>"
        for t in changed[:500]
    )
    return (
        '<section id="classes"><h2>Change class per tensor</h2><table><tr><th>tensor</th>'
        "<th>status</th><th>class</th><th>rel. L2</th><th>where</th></tr>"
        f"{rows}</table></section>"
    )


# ------------------------------------------------------------------------- graph diff


def _graph_changes(report: Report) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """(node or op, kind, status) boxes and edges from the graph analysis evidence,
    falling back to the operator counts of the graph-structure finding."""
    graph = report.evidence.get("graph")
    nodes: list[tuple[str, str, str]] = []
    edges: list[tuple[str, str]] = []
    if isinstance(graph, Mapping):
        for n in graph.get("nodes", ()) or ():
            if isinstance(n, Mapping) and "name" in n:
                nodes.append(
                    (str(n["name"]), str(n.get("op_type", "")), str(n.get("status", "added")))
                )
        for e in graph.get("edges", ()) or ():
            if isinstance(e, Sequence) and len(e) == 2:
                edges.append((str(e[0]), str(e[1])))
    if not nodes:
        for f in report.findings:
            if f.rule_id != "MS209":
                continue
            for op, n in dict(f.evidence.get("added_ops", {})).items():
                nodes.append((f"+{n} {op.split('::')[-1]}", op, "added"))
            for op, n in dict(f.evidence.get("removed_ops", {})).items():
                nodes.append((f"-{n} {op.split('::')[-1]}", op, "removed"))
    return nodes[:40], edges


def _graph(report: Report) -> str:
    nodes, edges = _graph_changes(report)
    if not nodes:
        return ""
    colour = {
        "added": ("#dcfce7", "#15803d"),
        "removed": ("#fee2e2", "#b91c1c"),
        "changed": ("#fef9c3", "#a16207"),
    }
    box_w, box_h, gap, per_row = 170, 34, 24, 5
    pos = {}
    svg_parts = []
    for i, (name, op, status) in enumerate(nodes):
        x = 10 + (i % per_row) * (box_w + gap)
        y = 10 + (i // per_row) * (box_h + gap)
        pos[name] = (x, y)
        fill, stroke = colour.get(status, colour["changed"])
        label = name if len(name) <= 22 else name[:21] + "\u2026"
        svg_parts.append(
            f'<g class="node"><rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" '
            f'rx="6" fill="{fill}" stroke="{stroke}"/><text x="{x + 8}" y="{y + 14}">'
            f'{_e(label)}</text><text x="{x + 8}" y="{y + 28}" fill="{stroke}">'
            f"{_e(status)} {_e(op.split('::')[-1])}</text><title>{_e(name)} ({_e(op)}, "
            f"{_e(status)})</title></g>"
        )
    lines = []
    for a, b in edges:
        if a in pos and b in pos:
            (x1, y1), (x2, y2) = pos[a], pos[b]
            lines.append(
                f'<line x1="{x1 + box_w}" y1="{y1 + box_h / 2}" x2="{x2}" '
                f'y2="{y2 + box_h / 2}" stroke="#334155" '
                'marker-end="url(#arrow)"/>'
            )
    rows = (len(nodes) + per_row - 1) // per_row
    width = 20 + min(len(nodes), per_row) * (box_w + gap)
    height = 20 + rows * (box_h + gap)
    marker = (
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 '
        'L0,10 z" fill="#334155"/></marker></defs>'
    )
    return (
        '<section id="graph"><h2>Graph diff</h2>'
        f'<svg xmlns="http://www.w3.org/2000/svg" id="graph-svg" width="{width}" '
        f'height="{height}" role="img" aria-label="graph diff">{marker}'
        f"{''.join(lines)}{''.join(svg_parts)}</svg></section>"
    )


# ------------------------------------------------------------------- attestation chain


def _chain(report: Report) -> str:
    gate = report.evidence.get("gate")
    if not isinstance(gate, Mapping):
        return ""
    parts = ['<section id="chain"><h2>Signature and attestation chain</h2>']
    sig = gate.get("signature")
    if isinstance(sig, Mapping):
        ok = sig.get("verified")
        parts.append(
            f"<p>Signature <code>{_e(sig.get('path', ''))}</code>: "
            f'<b style="color:{"#15803d" if ok else "#b91c1c"}">'
            f"{'verified' if ok else 'NOT verified'}</b>"
            f"{' &middot; signed by ' + _e(sig['signer']) if sig.get('signer') else ''}"
            f"{' &middot; ' + _e(sig['error']) if sig.get('error') else ''}</p>"
        )
    chain = gate.get("chain")
    if isinstance(chain, Mapping):
        parts.append(_chain_svg(chain))
        problems = chain.get("problems") or []
        if problems:
            items = "".join(
                f"<li><code>{_e(p.get('rule'))}</code> {_e(p.get('message'))}</li>"
                for p in problems
                if isinstance(p, Mapping)
            )
            parts.append(f"<ul>{items}</ul>")
    elif sig is None:
        return ""
    parts.append("</section>")
    return "".join(parts)


def _short(digest: Any) -> str:
    text = str(digest)
    return text.split(":")[-1][:12]


def _chain_svg(chain: Mapping[str, Any]) -> str:
    steps = [s for s in chain.get("steps", []) if isinstance(s, Mapping)]
    roots = [str(r) for r in chain.get("roots", [])]
    box_w, box_h, gap = 190, 58, 40
    items: list[tuple[str, str, str, str]] = [
        ("trusted root", _short(r), "", "#e0f2fe") for r in roots[:1]
    ]
    for s in steps:
        recheck = s.get("recheck", {}) if isinstance(s.get("recheck"), Mapping) else {}
        status = str(recheck.get("status", ""))
        fill = (
            "#dcfce7"
            if status == "pass"
            else ("#fef9c3" if status == "declared-only" else "#fee2e2")
        )
        items.append(
            (
                f"{s.get('kind', '?')} by {s.get('signer', '?')}",
                f"-> {_short(s.get('output', ''))}",
                f"re-check: {status}",
                fill,
            )
        )
    deployed = chain.get("deployed", {})
    if isinstance(deployed, Mapping):
        ok = chain.get("passed")
        items.append(
            (
                "deployed",
                _short(deployed.get("digest", "")),
                "chain PASS" if ok else "chain FAIL",
                "#dcfce7" if ok else "#fee2e2",
            )
        )
    width = 20 + len(items) * (box_w + gap)
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="chain-svg" width="{width}" '
        f'height="{box_h + 20}" role="img" aria-label="attestation chain">'
        '<defs><marker id="carrow" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#334155"/></marker></defs>'
    ]
    for i, (title, line2, line3, fill) in enumerate(items):
        x = 10 + i * (box_w + gap)
        svg.append(
            f'<g class="step"><rect x="{x}" y="10" width="{box_w}" '
            f'height="{box_h}" rx="6" fill="{fill}" stroke="#334155"/>'
            f'<text x="{x + 8}" y="27">{_e(title[:28])}</text>'
            f'<text x="{x + 8}" y="43">{_e(line2)}</text>'
            f'<text x="{x + 8}" y="59">{_e(line3)}</text></g>'
        )
        if i:
            svg.append(
                f'<line x1="{x - gap}" y1="{10 + box_h / 2}" x2="{x - 2}" '
                f'y2="{10 + box_h / 2}" stroke="#334155" '
                'marker-end="url(#carrow)"/>'
            )
    svg.append("</svg>")
    return f'<div style="overflow-x:auto">{"".join(svg)}</div>'
