"""Rules packs and their application: what a finding means for this deployment.

Public API: :func:`load_pack` / :func:`parse_pack` (validated :class:`Pack`),
:func:`apply_pack` (a :class:`~scanner.report.model.Report` in, a :class:`PolicyReport`
out). A pack judges a finished report; rule thresholds are read from the pack there.
"""

from __future__ import annotations

from scanner.policy.apply import PolicyReport, SuppressedFinding, apply_pack, tensor_class
from scanner.policy.pack import (
    GATE_INPUTS,
    SHIPPED_PACKS,
    Pack,
    PackError,
    RuleSettings,
    Suppression,
    TensorOverride,
    load_pack,
    parse_pack,
    parse_suppressions,
    shipped_pack_dir,
    with_suppressions,
)

__all__ = [
    "GATE_INPUTS",
    "SHIPPED_PACKS",
    "Pack",
    "PackError",
    "PolicyReport",
    "RuleSettings",
    "SuppressedFinding",
    "Suppression",
    "TensorOverride",
    "apply_pack",
    "load_pack",
    "parse_pack",
    "parse_suppressions",
    "shipped_pack_dir",
    "tensor_class",
    "with_suppressions",
]
