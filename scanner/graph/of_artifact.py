"""The canonical graph of an open artifact, computed once per artifact."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from scanner.artifact import Artifact
from scanner.graph.canonical import CanonicalGraph, canonicalize

_CACHE: weakref.WeakKeyDictionary[Artifact, CanonicalGraph | None] = weakref.WeakKeyDictionary()


def _loader(artifact: Artifact) -> Any:
    def load(key: str) -> np.ndarray | None:
        if key not in artifact.tensors:
            return None
        try:
            return np.array(artifact.array(key))
        except Exception:  # an unreadable tensor only costs the numeric verification
            return None

    return load


def canonical_of(artifact: Artifact) -> CanonicalGraph | None:
    """The canonical form of ``artifact``'s graph (``None`` without one). Several
    analyzers read it; it is built once and dropped with the artifact."""
    if artifact.graph is None or artifact.graph.model is None:
        return None
    if artifact not in _CACHE:
        _CACHE[artifact] = canonicalize(artifact.graph.model, _loader(artifact))
    return _CACHE[artifact]


_DIFFS: weakref.WeakKeyDictionary[Artifact, tuple[weakref.ref[Artifact], Any]] = (
    weakref.WeakKeyDictionary()
)


def graph_diff_of(trusted: Artifact, deployed: Artifact) -> Any:
    """The graph diff of a pair (``None`` unless both have a graph), computed once."""
    from scanner.graph.diff import diff_graphs

    kept = _DIFFS.get(trusted)
    if kept is not None and kept[0]() is deployed:
        return kept[1]
    t, d = canonical_of(trusted), canonical_of(deployed)
    gd = diff_graphs(t, d) if t is not None and d is not None else None
    _DIFFS[trusted] = (weakref.ref(deployed), gd)
    return gd
