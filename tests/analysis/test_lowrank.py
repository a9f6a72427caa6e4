"""The rank of a float32 delta far above its rounding noise: the residual after the rank-r
fit is a few ulps of energy while the delta carries ~1e15 times more, beyond what
``energy - sum(sigma^2)`` resolves in float64, so the verdict must not hang on how the
sums were ordered (BLAS threads, chunking)."""

from __future__ import annotations

import numpy as np
import pytest

from scanner.analysis.lowrank import rank_profile


def _merge(shape: tuple[int, int], rank: int, scale: float, seed: int) -> np.ndarray:
    """A weight-like float32 matrix and its float32 merge with a rank-``rank`` update."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * 0.04).astype(np.float32)
    left = rng.standard_normal((shape[0], rank)).astype(np.float32)
    right = rng.standard_normal((rank, shape[1])).astype(np.float32)
    update = (left @ right) * np.float32(scale)
    return w, (w + update).astype(np.float32)


@pytest.mark.parametrize(
    ("shape", "rank", "scale"),
    [((384, 384), 4, 0.02), ((300, 1100), 1, 0.5), ((1024, 257), 7, 0.003), ((96, 96), 2, 3.0)],
)
def test_a_loud_float32_merge_has_its_own_rank(shape, rank, scale) -> None:
    for seed in range(3):
        w, merged = _merge(shape, rank, scale, seed)
        prof = rank_profile(w, merged, "F32")
        assert prof.snr > 1e9, prof.summary()
        assert (prof.status, prof.rank) == ("low-rank", rank), prof.summary()


@pytest.mark.parametrize("where", ["element", "row", "column"])
def test_an_edit_on_top_of_a_loud_merge_raises_the_rank(where) -> None:
    w, merged = _merge((384, 512), 3, 0.05, seed=11)
    edited = merged.copy()
    if where == "element":
        edited[17, 301] += np.float32(0.01)
    elif where == "row":
        edited[200] += np.float32(0.002) * np.sign(edited[200])
    else:
        edited[:, 5] *= np.float32(1.01)
    prof = rank_profile(w, edited, "F32")
    assert prof.rank is None or prof.rank > 3, prof.summary()
