"""Trusted-vs-deployed diff: pairing, comparison, localization, pluggable analyses."""

from scanner.diff.engine import (
    Analysis,
    Analyzer,
    DiffResult,
    FileChange,
    PairAnalyzer,
    PairContext,
    diff_artifacts,
    diff_open,
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
    "diff_artifacts",
    "diff_open",
]
