"""Checks, one module per family. Each module defines its rules (``scanner.rulebook``)."""
