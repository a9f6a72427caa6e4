"""Weight-change analysis: localize and classify changes between trusted and deployed."""

from __future__ import annotations

from scanner.diff.engine import Analyzer

ANALYZERS: list[Analyzer] = []
