"""Trusted-vs-deployed diff: pairing, comparison, localization, pluggable analyses.

The engine runs the analyzers it is handed; ``scanner.api.diff_artifacts`` and
``scanner.api.diff_open`` run it with the product's analyzers.
"""

from scanner.diff.engine import (
    Analysis,
    Analyzer,
    DiffResult,
    FileChange,
    PairAnalyzer,
    PairContext,
)
from scanner.diff.model import CHANGE_CLASSES, Localization, TensorDiff, TensorStatus, ValueDelta
from scanner.diff.options import DiffOptions

__all__ = [
    "CHANGE_CLASSES",
    "Analysis",
    "Analyzer",
    "DiffOptions",
    "DiffResult",
    "FileChange",
    "Localization",
    "PairAnalyzer",
    "PairContext",
    "TensorDiff",
    "TensorStatus",
    "ValueDelta",
]
