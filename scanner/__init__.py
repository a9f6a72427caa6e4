"""modelseal's scanner: read model artifacts, digest them, diff trusted against deployed.

Public API::

    from scanner import open_artifact, build_manifest, diff_artifacts, scan_artifact
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("build_manifest", "diff_artifacts", "open_artifact", "scan_artifact")


def __getattr__(name: str) -> Any:
    # Imported on first use, so `modelseal --help` does not load numpy and the readers.
    if name in _API:
        from scanner import api

        return getattr(api, name)
    raise AttributeError(f"module 'scanner' has no attribute {name!r}")


__all__ = ["__version__", "build_manifest", "diff_artifacts", "open_artifact", "scan_artifact"]
