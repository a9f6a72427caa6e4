"""The deployment gate: every check that applies to a deployed artifact (signature,
attested chain, diff against the trusted artifact, single-artifact audit) judged by one
rules pack (``run``), and the repository's gate configuration that names the inputs
(``config``: ``modelseal.toml`` or ``[tool.modelseal]``)."""

from scanner.gate.run import GateRequest, check_signature, run_gate

__all__ = ["GateRequest", "check_signature", "run_gate"]
