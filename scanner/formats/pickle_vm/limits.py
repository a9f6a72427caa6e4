"""Resource limits of one interpretation: operation, memo, stack and size caps, and a deadline."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from scanner.errors import ResourceLimitError, UsageError


@dataclass(frozen=True)
class PickleLimits:
    """Caps on one pickle stream and on one PyTorch file; exceeded caps are errors.

    Each can be set from the environment (see :meth:`from_env`), so an operator can
    widen a cap for a known-large checkpoint without code changes.
    """

    max_pickle_bytes: int = 256 << 20
    """Largest pickle stream (``data.pkl``) read into memory."""
    max_ops: int = 50_000_000
    max_memo: int = 4_000_000
    max_stack: int = 4_000_000
    max_marks: int = 100_000
    max_string_bytes: int = 16 << 20
    max_int_bytes: int = 1024
    """Longest ``LONG`` / ``LONG4`` integer; torch never writes more than 8 bytes."""
    max_depth: int = 512
    """Deepest container nesting followed when collecting tensors."""
    max_walk: int = 1_000_000
    """Most container visits when collecting tensors (shared sub-objects count again)."""
    max_inline_bytes: int = 1 << 30
    """Most bytes materialized in memory for strided / compressed / big-endian tensors."""
    time_budget_s: float = 120.0
    """Wall-clock seconds one file may take to interpret."""
    max_dims: int = 16
    max_tensors: int = 1_000_000

    ENV = {
        "max_pickle_bytes": "MODELSEAL_MAX_PICKLE_BYTES",
        "max_inline_bytes": "MODELSEAL_MAX_INLINE_BYTES",
        "time_budget_s": "MODELSEAL_TIME_BUDGET",
        "max_ops": "MODELSEAL_MAX_PICKLE_OPS",
        "max_depth": "MODELSEAL_MAX_PICKLE_DEPTH",
    }

    @classmethod
    def from_env(cls, base: Any = None, env: Mapping[str, str] | None = None) -> PickleLimits:
        """Defaults, overridden by ``base`` (a reader ``Limits``) and the environment."""
        env = os.environ if env is None else env
        limits = cls()
        if base is not None:
            limits = replace(
                limits,
                max_string_bytes=base.max_string_bytes,
                max_dims=base.max_dims,
                max_tensors=base.max_tensors,
            )
        for attr, var in cls.ENV.items():
            text = env.get(var)
            if not text:
                continue
            try:
                value: float = float(text) if attr == "time_budget_s" else int(text)
            except ValueError:
                raise UsageError(f"{var}={text!r} is not a number") from None
            if value <= 0:
                raise UsageError(f"{var}={text!r} must be positive")
            limits = replace(limits, **{attr: value})
        return limits


class Deadline:
    """A per-file time budget shared by every stream and step of one read."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self, path: Any, what: str) -> None:
        if time.monotonic() > self.end:
            raise ResourceLimitError(
                path,
                f"{what} took longer than the {self.seconds:g} s time budget "
                "(raise MODELSEAL_TIME_BUDGET for a larger file)",
            )
