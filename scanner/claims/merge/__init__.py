"""``merge``: re-derive a model merge made by mergekit from its YAML and input models.

Modules: :mod:`~scanner.claims.merge.config` (the YAML as untrusted input, parameter
resolution), :mod:`~scanner.claims.merge.methods` (linear, task arithmetic, TIES,
SLERP in float64 with a rounding bound), :mod:`~scanner.claims.merge.dare` (DARE masks
recovered and tested for chance), :mod:`~scanner.claims.merge.check` (the claim).
"""

from __future__ import annotations

from scanner.claims.merge.check import check_merge

__all__ = ["check_merge"]
