"""Claimed transformations: re-derive what DEPLOYED should be from TRUSTED and compare."""

from __future__ import annotations

from scanner.diff.engine import Analyzer

ANALYZERS: list[Analyzer] = []
