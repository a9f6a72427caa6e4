"""Evaluation output: tables per suite (with 95% Wilson intervals), JSON, the
minimal-detectable-change table and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scanner.evaluate.protocol import Evaluation, Summary
from scanner.evaluate.stats import fmt_rate, wilson

SCHEMA = "modelseal/evaluation/v2"


def to_dict(ev: Evaluation) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "model": ev.model,
        "format": ev.format,
        "seeds": ev.seeds,
        "gate": ev.gate,
        "seconds": round(ev.seconds, 3),
        "totals": {suite: ev.totals(suite) for suite in ev.suites()},
        "minimal_detectable_change": [
            {"tensor_kind": k, "region": r, "magnitude": v}
            for (k, r), v in sorted(minimal_detectable(ev).items())
        ],
        "evasions": [s.to_dict() for s in evasions(ev)],
        "summaries": [s.to_dict() for s in ev.summaries()],
        "cases": [c.to_dict() for c in ev.cases],
        "not_applicable": dict(ev.not_applicable),
    }


def to_json(ev: Evaluation) -> str:
    return json.dumps(to_dict(ev), indent=2, sort_keys=True) + "\n"


def _table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=False)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*r) for r in rows)]) + "\n"


def _rate(s: Summary) -> str:
    return fmt_rate(s.detected, s.n)


def _params(s: Summary) -> str:
    return " ".join(f"{k}={v}" for k, v in s.params) or "-"


def _title(text: str, markdown: bool) -> str:
    return f"\n#### {text}\n\n" if markdown else f"\n== {text}\n"


def render_table(ev: Evaluation, *, markdown: bool = False) -> str:
    """One table per suite run. Rates are ``rate [95% Wilson interval] (k/n)``; for
    benign twins the rate is the false-alarm rate, for attacks the detection rate."""
    parts: list[str] = []
    for suite in ev.suites():
        parts.append(RENDERERS[suite](ev, markdown))
    t = ev.totals()
    foot = (
        f"catalogue attacks: {fmt_rate(t['detected'], t['attack_cases'])} detected, "
        f"{t['localization_rate']:.0%} localized; benign twins: "
        f"{fmt_rate(t['false_alarms'], t['benign_cases'])} false alarms "
        f"({ev.gate}, {ev.seeds} seeds per row, {ev.seconds:.0f} s)"
    )
    text = "".join(parts) + f"\n{foot}\n"
    if ev.not_applicable:
        text += (
            "\nnot applicable: "
            + "; ".join(f"{k} ({v})" for k, v in sorted(ev.not_applicable.items()))
            + "\n"
        )
    return text


def _catalogue(ev: Evaluation, markdown: bool) -> str:
    head = ["kind", "name", "family", "strength", "flagged [95% CI] (k/n)", "localized", "s/case"]
    rows = [
        [
            s.kind,
            s.entry,
            s.family,
            f"{s.strength:g}",
            _rate(s),
            f"{s.localization_rate:.0%}" if s.kind == "attack" else "-",
            f"{s.mean_seconds:.2f}",
        ]
        for s in ev.summaries("catalogue")
    ]
    return _title("Catalogue: each attack and benign twin at each strength", markdown) + _table(
        head, rows, markdown
    )


def minimal_detectable(ev: Evaluation) -> dict[tuple[str, str], str]:
    """(tensor kind, region shape) -> the smallest tamper magnitude (x the tensor's std)
    from which every larger magnitude run was detected on every seed; ``> MAX`` when the
    largest was not, ``absorbed`` when no change survived storage."""
    curves: dict[tuple[str, str], list[Summary]] = {}
    for s in ev.summaries("tamper"):
        kind = dict(s.params).get("kind", "")
        curves.setdefault((kind, s.entry.removeprefix("tamper-")), []).append(s)
    out = {}
    for key, rows in curves.items():
        rows.sort(key=lambda r: r.strength)
        scored = [r for r in rows if r.n]
        if not scored:
            out[key] = "absorbed"
            continue
        mdc = None
        for r in reversed(scored):
            if r.detected < r.n:
                break
            mdc = r.strength
        out[key] = f"{mdc:g}" if mdc is not None else f"> {scored[-1].strength:g}"
    return out


def _tamper(ev: Evaluation, markdown: bool) -> str:
    from scanner.redteam.tamper import SHAPES

    mdc = minimal_detectable(ev)
    kinds = sorted({k for k, _ in mdc})
    shapes = [sh for sh in SHAPES if any((k, sh) in mdc for k in kinds)]
    head = ["tensor kind", *shapes]
    rows = [[k, *(mdc.get((k, sh), "-") for sh in shapes)] for k in kinds]
    text = _title(
        "Minimal detectable change (x the tensor's std; every larger magnitude detected "
        "on every seed)",
        markdown,
    ) + _table(head, rows, markdown)
    head = ["tensor kind", "region", "magnitude", "detected [95% CI] (k/n)", "absorbed"]
    rows = [
        [
            dict(s.params).get("kind", ""),
            s.entry.removeprefix("tamper-"),
            f"{s.strength:g}",
            _rate(s),
            str(s.absorbed),
        ]
        for s in sorted(ev.summaries("tamper"), key=lambda s: (s.params, s.entry, s.strength))
    ]
    return (
        text
        + _title("Generic tamper: detection by magnitude", markdown)
        + _table(head, rows, markdown)
    )


def _sweep(ev: Evaluation, markdown: bool) -> str:
    head = ["attack", "parameters", "strength", "detected [95% CI] (k/n)", "localized"]
    rows = [
        [s.entry, _params(s), f"{s.strength:g}", _rate(s), f"{s.localization_rate:.0%}"]
        for s in ev.summaries("sweep")
    ]
    return _title("Sweeps of attacker-controlled parameters", markdown) + _table(
        head, rows, markdown
    )


def _combination(ev: Evaluation, markdown: bool) -> str:
    head = ["attack", "benign twin", "order", "detected [95% CI] (k/n)", "localized"]
    rows = [
        [s.entry, s.twin, s.order, _rate(s), f"{s.localization_rate:.0%}"]
        for s in ev.summaries("combination")
    ]
    return _title(
        "Combinations: attack and benign twin in one copy (the gate configured for the twin)",
        markdown,
    ) + _table(head, rows, markdown)


FULL_SUCCESS = 0.95
"""Mean measured success from which an undetected adaptive row counts as an evasion."""


def _evades(s: Summary) -> bool:
    return bool(s.n and s.detected == 0 and s.success is not None and s.success >= FULL_SUCCESS)


def evasions(ev: Evaluation) -> list[Summary]:
    """Adaptive rows never detected while the attack worked (mean success at least
    :data:`FULL_SUCCESS`): limits to fix or document."""
    return [s for s in ev.summaries("adaptive") if _evades(s)]


def _adaptive(ev: Evaluation, markdown: bool) -> str:
    head = ["attack", "cover", "parameters", "scale", "detected [95% CI] (k/n)", "success", ""]
    rows = []
    for s in ev.summaries("adaptive"):
        params = " ".join(f"{k}={v}" for k, v in s.params if k != "cover") or "-"
        flag = "EVADES" if _evades(s) else ""
        rows.append(
            [
                s.entry,
                dict(s.params).get("cover", ""),
                params,
                f"{s.strength:g}",
                _rate(s),
                "-" if s.success is None else f"{s.success:.0%}",
                flag,
            ]
        )
    return _title(
        "Adaptive attacks: detection vs measured attack success (scale = edit size as a "
        "multiple of the smallest that works)",
        markdown,
    ) + _table(head, rows, markdown)


RENDERERS = {
    "catalogue": _catalogue,
    "tamper": _tamper,
    "sweep": _sweep,
    "combination": _combination,
    "adaptive": _adaptive,
}


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the extra
        from scanner.errors import UsageError

        raise UsageError("plots need matplotlib: pip install 'modelseal[plots]'") from exc
    return plt


def _errbar(
    ax: Any, xs: list[float], rows: list[Summary], label: str, *, joined: bool = True
) -> None:
    ys = [r.detection_rate for r in rows]
    lo = [r.detection_rate - r.ci_low for r in rows]
    hi = [r.ci_high - r.detection_rate for r in rows]
    style = "-" if joined else "none"
    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, linestyle=style, label=label)


def plot_detection(ev: Evaluation, out: Path) -> Path:
    """Detection against strength (catalogue attacks; false alarms of twins), against
    tamper magnitude (per region shape) and against measured attack success (adaptive),
    with 95% Wilson intervals; needs the ``plots`` extra (matplotlib)."""
    plt = _pyplot()
    panels = [p for p in ("catalogue", "tamper", "adaptive") if p in ev.suites()] or ["catalogue"]
    fig, axes = plt.subplots(1, len(panels) + (1 if "catalogue" in panels else 0), squeeze=False)
    fig.set_size_inches(5.2 * axes.shape[1], 4.2)
    col = 0
    if "catalogue" in panels:
        series: dict[tuple[str, str], list[Summary]] = {}
        for s in ev.summaries("catalogue"):
            series.setdefault((s.kind, s.entry), []).append(s)
        for (kind, name), rows in sorted(series.items()):
            if len(rows) < 2:
                continue
            rows.sort(key=lambda r: r.strength)
            ax = axes[0][0] if kind == "attack" else axes[0][1]
            _errbar(ax, [r.strength for r in rows], rows, name)
        for ax, title in zip(
            axes[0][:2],
            ("attacks: detection vs strength", "benign twins: false alarms vs strength"),
            strict=True,
        ):
            ax.set_xscale("log")
            ax.set_xlabel("strength (entry's own parameter)")
            ax.set_title(title, fontsize=9)
        col = 2
    if "tamper" in panels:
        ax = axes[0][col]
        series = {}
        for s in ev.summaries("tamper"):
            series.setdefault(s.entry.removeprefix("tamper-"), []).append(s)
        for shape, rows in sorted(series.items()):
            # Pooled over tensor kinds: one curve per region shape.
            by: dict[float, list[Summary]] = {}
            for r in rows:
                by.setdefault(r.strength, []).append(r)
            xs = sorted(by)
            pooled = []
            for x in xs:
                k = sum(r.detected for r in by[x])
                n = sum(r.n for r in by[x])
                lo, hi = wilson(k, n)
                pooled.append(
                    Summary(shape, "attack", "", x, n, k / n if n else 0.0, 0, 0, k, lo, hi)
                )
            _errbar(ax, xs, pooled, shape)
        ax.set_xscale("log")
        ax.set_xlabel("tamper magnitude (x tensor std)")
        ax.set_title("generic tamper: detection vs magnitude", fontsize=9)
        col += 1
    if "adaptive" in panels:
        ax = axes[0][col]
        series = {}
        for s in ev.summaries("adaptive"):
            if s.success is None:
                continue
            label = f"{s.entry} ({dict(s.params).get('cover', '')})"
            series.setdefault(label, []).append(s)
        for label, rows in sorted(series.items()):
            rows.sort(key=lambda r: r.strength)
            # Points, not a curve: success is not monotone in the edit size (a large
            # backdoor edit fires but moves clean predictions, which success counts).
            _errbar(ax, [r.success or 0.0 for r in rows], rows, label, joined=False)
            for r in rows:
                ax.annotate(
                    f"x{r.strength:g}",
                    (r.success or 0.0, r.detection_rate),
                    fontsize=5,
                    xytext=(2, 2),
                    textcoords="offset points",
                )
        ax.set_xlabel("measured attack success")
        ax.set_title("adaptive: detection vs attack success", fontsize=9)
    for ax in axes[0]:
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("flagged (95% Wilson CI)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle(f"{Path(ev.model).name}: {ev.gate}, {ev.seeds} seeds per point", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
