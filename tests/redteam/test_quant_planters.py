"""The quantization planters' own contract (the evaluation relies on it)."""

from __future__ import annotations

import numpy as np

from scanner.redteam.quant import flip_codes


def test_flip_codes_is_an_involution() -> None:
    c = np.array([1, -5, 127, 0], dtype=np.int8)
    idx = np.array([0, 1, 3])
    assert flip_codes(flip_codes(c, idx), idx).tolist() == c.tolist()
