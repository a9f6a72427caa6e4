"""Evaluation output: a text table, JSON and detection-vs-strength plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scanner.evaluate.protocol import Evaluation

SCHEMA = "modelseal/evaluation/v1"


def to_dict(ev: Evaluation) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "model": ev.model,
        "format": ev.format,
        "seeds": ev.seeds,
        "gate": ev.gate,
        "seconds": round(ev.seconds, 3),
        "totals": ev.totals(),
        "summaries": [s.to_dict() for s in ev.summaries()],
        "cases": [c.to_dict() for c in ev.cases],
        "not_applicable": dict(ev.not_applicable),
    }


def to_json(ev: Evaluation) -> str:
    return json.dumps(to_dict(ev), indent=2, sort_keys=True) + "\n"


def render_table(ev: Evaluation, *, markdown: bool = False) -> str:
    """One row per entry and strength. For benign twins the "flagged" column is the
    false-alarm rate; for attacks it is the detection rate."""
    head = ["kind", "name", "family", "strength", "n", "flagged", "localized", "s/case"]
    rows = []
    for s in ev.summaries():
        rows.append(
            [
                s.kind,
                s.entry,
                s.family,
                f"{s.strength:g}",
                str(s.n),
                f"{s.detection_rate:.0%}",
                f"{s.localization_rate:.0%}" if s.kind == "attack" else "-",
                f"{s.mean_seconds:.2f}",
            ]
        )
    t = ev.totals()
    foot = (
        f"attacks: {t['detection_rate']:.0%} detected, {t['localization_rate']:.0%} "
        f"localized over {t['attack_cases']} cases; benign twins: "
        f"{t['false_alarm_rate']:.0%} false alarms over {t['benign_cases']} cases "
        f"({ev.gate}, {ev.seeds} seeds, {ev.seconds:.0f} s)"
    )
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        text = "\n".join(lines) + f"\n\n{foot}\n"
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=False)]
        fmt = "  ".join(f"{{:{w}}}" for w in widths)
        text = "\n".join([fmt.format(*head), *(fmt.format(*r) for r in rows)]) + f"\n{foot}\n"
    if ev.not_applicable:
        text += (
            "not applicable: "
            + "; ".join(f"{k} ({v})" for k, v in sorted(ev.not_applicable.items()))
            + "\n"
        )
    return text


def plot_detection(ev: Evaluation, out: Path) -> Path:
    """Detection (attacks) and false-alarm (twins) rate against strength, one line per
    entry with a strength sweep; needs the ``plots`` extra (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the extra
        from scanner.errors import UsageError

        raise UsageError("plots need matplotlib: pip install 'modelseal[plots]'") from exc
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for s in ev.summaries():
        series.setdefault((s.kind, s.entry), []).append((s.strength, s.detection_rate))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for (kind, name), pts in sorted(series.items()):
        if len(pts) < 2:
            continue
        ax = axes[0] if kind == "attack" else axes[1]
        xs, ys = zip(*sorted(pts), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    for ax, title in zip(
        axes, ("attacks: detection rate", "benign twins: false-alarm rate"), strict=True
    ):
        ax.set_xscale("log")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("strength (entry's own parameter)")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{Path(ev.model).name}: {ev.gate}, {ev.seeds} seeds")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
