"""Lifecycle model and risk analysis: which catalogued threats apply to each step of a
pipeline and which configured evidence covers them (docs/lifecycle.md)."""

from scanner.lifecycle.coverage import (
    CoverageReport,
    StepAttestation,
    check_lifecycle,
    read_attestations,
    render_text,
)
from scanner.lifecycle.model import Lifecycle, LifecycleError, Step, load_lifecycle, parse_lifecycle
from scanner.lifecycle.threats import CATALOGUE, Threat

__all__ = [
    "CATALOGUE",
    "CoverageReport",
    "Lifecycle",
    "LifecycleError",
    "Step",
    "StepAttestation",
    "Threat",
    "check_lifecycle",
    "load_lifecycle",
    "parse_lifecycle",
    "read_attestations",
    "render_text",
]
