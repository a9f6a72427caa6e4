"""The evaluation protocol: plant every attack and benign twin, run the gate, score it.

Public API: :func:`evaluate` (a model in, an :class:`Evaluation` out; suites catalogue,
tamper, sweep, combination, adaptive), and the renderers :func:`render_table`,
:func:`to_json` and :func:`plot_detection` (matplotlib, optional). The protocol is
documented in docs/evaluation.md, which benchmarks/run_evaluation.py regenerates.
"""

from scanner.evaluate.protocol import Case, Evaluation, Summary, evaluate, gate_case
from scanner.evaluate.render import plot_detection, render_table, to_json

__all__ = [
    "Case",
    "Evaluation",
    "Summary",
    "evaluate",
    "gate_case",
    "plot_detection",
    "render_table",
    "to_json",
]
