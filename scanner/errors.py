"""Errors raised by the scanner; all are :class:`signing.errors.ModelsealError`."""

from __future__ import annotations

from pathlib import Path

from signing.errors import ModelsealError


class UsageError(ModelsealError):
    """The command was called with arguments that cannot work."""


class ArtifactError(ModelsealError):
    """An artifact could not be opened or read."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsupportedFormatError(ArtifactError):
    """The content is not a format modelseal reads."""


class MalformedArtifactError(ArtifactError):
    """The artifact claims to be a known format but breaks its rules.

    A malformed artifact is never reported as clean: commands exit 2.
    """


class UnsafePathError(MalformedArtifactError):
    """A reference inside an artifact points outside the artifact's folder."""


class ResourceLimitError(MalformedArtifactError):
    """The artifact asks for more memory or work than the configured limits allow."""
