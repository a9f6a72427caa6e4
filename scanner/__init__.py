"""modelseal's scanner: read model artifacts, digest them, diff trusted against deployed.

Public API::

    from scanner import open_artifact, build_manifest, diff_artifacts, scan_artifact
"""

__version__ = "0.1.0"

from scanner.api import build_manifest, diff_artifacts, open_artifact, scan_artifact

__all__ = ["__version__", "build_manifest", "diff_artifacts", "open_artifact", "scan_artifact"]
