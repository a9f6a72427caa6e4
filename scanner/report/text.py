"""Terminal report: verdict, a table of changed tensors, and the findings."""

from __future__ import annotations

import io
from collections.abc import Mapping

from rich.console import Console
from rich.table import Table
from rich.text import Text

from scanner.diff.model import TensorDiff, TensorStatus
from scanner.findings import Severity
from scanner.policy.apply import PolicyReport
from scanner.report.model import Report, changed_tensors

_SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.HIGH: "bold red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}
_VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "error": "bold magenta"}
MAX_TABLE_ROWS = 40


def render_text(report: Report, *, color: bool = False, width: int = 120) -> str:
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=color,
        no_color=not color,
        color_system="standard" if color else None,
        highlight=False,
        soft_wrap=False,
    )
    _header(console, report)
    if report.error is not None:
        console.print(Text(f"error: {report.error}", style="bold magenta"))
        return buffer.getvalue()
    _gate(console, report)
    changed = changed_tensors(report)
    if report.tensors:
        _tensor_table(console, report, changed)
    _findings(console, report)
    _notes(console, report)
    return buffer.getvalue()


def _gate(console: Console, report: Report) -> None:
    """The gate's evidence: what it checked (signer, chain) and what it did not."""
    gate = report.evidence.get("gate")
    if not isinstance(gate, Mapping):
        return
    for label, items in (
        ("checked", gate.get("checked")),
        ("not checked", gate.get("not_checked")),
    ):
        for item in items or ():
            console.print(Text(f"  {label:12} {item}"))


def _notes(console: Console, report: Report) -> None:
    for note in report.evidence.get("notes", ()) or ():
        console.print(Text(f"  note: {note}"))


def _header(console: Console, report: Report) -> None:
    line = Text("modelseal ", style="bold")
    line.append(report.command)
    line.append("  verdict: ")
    line.append(report.verdict.upper(), style=_VERDICT_STYLE[report.verdict])
    if report.classification:
        line.append(f"  change: {report.classification}")
    console.print(line)
    for a in report.artifacts:
        console.print(
            Text(
                f"  {a.role:9} {a.path}  ({a.format}, {a.tensors} tensors, "
                f"{a.tensor_bytes / 1e6:,.1f} MB)"
            )
        )


def _tensor_table(console: Console, report: Report, changed: list[TensorDiff]) -> None:
    counts = report.summary()["tensors"]
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    console.print(Text(f"  {len(report.tensors)} tensors compared: {parts}"))
    if not changed:
        return
    table = Table(title=None, show_lines=False, pad_edge=False, expand=False)
    for col, kw in (
        ("tensor", {"overflow": "fold", "max_width": 44}),
        ("status", {}),
        ("dtype", {}),
        ("changed", {"justify": "right"}),
        ("max |d|", {"justify": "right"}),
        ("rel L2", {"justify": "right"}),
        ("where", {"overflow": "fold", "max_width": 40}),
    ):
        table.add_column(col, **kw)
    for t in changed[:MAX_TABLE_ROWS]:
        dtype = t.trusted_dtype or ""
        if t.deployed_dtype and t.deployed_dtype != t.trusted_dtype:
            dtype = f"{t.trusted_dtype or '-'}->{t.deployed_dtype}"
        d = t.delta if t.status is not TensorStatus.CAST else None
        label = t.labels.get("class") if t.labels else None
        status = t.status.value + (f" ({label})" if label else "")
        table.add_row(
            t.name if not t.deployed_name else f"{t.name} -> {t.deployed_name}",
            status,
            dtype,
            f"{d.n_changed:,} ({d.fraction_changed:.2%})" if d else "",
            f"{d.max_abs:.3g}" if d else "",
            f"{d.rel_l2:.3g}" if d else "",
            _where(t),
        )
    console.print(table)
    if len(changed) > MAX_TABLE_ROWS:
        more = len(changed) - MAX_TABLE_ROWS
        console.print(f"  ... and {more} more changed tensors (see --format json)")


def _where(t: TensorDiff) -> str:
    if t.status is TensorStatus.CAST and t.cast is not None:
        if t.cast.exact:
            return "exact round-to-nearest-even"
        return f"{t.cast.n_mismatched:,} elements not RNE, all within rounding"
    return t.where.describe() if t.where else ""


def _findings(console: Console, report: Report) -> None:
    if not report.findings:
        console.print("  no findings")
        return
    console.print(f"  findings (fail on {report.fail_on} and above):")
    ordered = sorted(report.findings, key=lambda f: -f.severity)
    for f in ordered:
        line = Text("  ")
        line.append(f"{str(f.severity).upper():8}", style=_SEVERITY_STYLE[f.severity])
        line.append(f" {f.rule_id} {f.title}: ", style="bold")
        line.append(f.message)
        console.print(line)
        tree = f.evidence.get("tree") if isinstance(f.evidence, dict) else None
        if isinstance(tree, str) and tree:
            for tree_line in tree.splitlines():
                console.print(Text(f"      {tree_line}"))


def policy_text(report: Report) -> str:
    """Lines appended to the text report: the pack and every suppressed finding."""
    if not isinstance(report, PolicyReport):
        return ""
    lines = [
        f"\nrules pack: {report.rules_pack}"
        + ("  (audit: findings never fail)" if report.never_fail else "")
    ]
    if report.suppressed:
        lines.append(f"suppressed findings ({len(report.suppressed)}):")
        for s in report.suppressed:
            until = s.suppression.expires.isoformat() if s.suppression.expires else "no expiry"
            lines.append(f"  {s.finding.rule_id}  {s.finding.message}")
            lines.append(
                f"      reason: {s.suppression.reason}  (until {until}; {s.suppression.source})"
            )
    return "\n".join(lines) + "\n"
