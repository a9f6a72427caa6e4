"""The library's front door (re-exported by :mod:`scanner`)."""

from __future__ import annotations

from scanner.formats import open_artifact
from scanner.manifest import build_manifest


def diff_artifacts(*args, **kwargs):  # type: ignore[no-untyped-def]
    from scanner.diff import diff_artifacts as impl

    return impl(*args, **kwargs)


def scan_artifact(*args, **kwargs):  # type: ignore[no-untyped-def]
    from scanner.checks.single import scan_artifact as impl

    return impl(*args, **kwargs)


__all__ = ["build_manifest", "diff_artifacts", "open_artifact", "scan_artifact"]
