"""Graph analysis: structural diff of two ONNX graphs."""

from __future__ import annotations

from scanner.checks.pair import analyze_graph_shape
from scanner.diff.engine import Analyzer

ANALYZERS: list[Analyzer] = [Analyzer("graph", analyze_graph_shape)]
