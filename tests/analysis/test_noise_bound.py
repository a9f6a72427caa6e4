"""The storage-noise bound is per element, in ulps of the stored dtype at its magnitude."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from scanner.analysis.noise import ULP_BOUND, storage_noise


@pytest.mark.parametrize(
    ("dtype", "np_dtype"),
    [("F32", np.float32), ("F16", np.float16), ("BF16", ml_dtypes.bfloat16)],
)
def test_two_ulps_are_noise_three_are_not(dtype, np_dtype, minilm_weights):
    w = minilm_weights["encoder.layer.0.attention.self.query.weight"].astype(np_dtype)
    a = w.astype(np.float32)
    for steps, within in ((1, True), (int(ULP_BOUND), True), (int(ULP_BOUND) + 1, False)):
        b = w.copy()
        for _ in range(steps):
            b[5, 7] = _away(b[5, 7])
        bf = b.astype(np.float32)
        changed = a != bf
        result = storage_noise(a, bf, changed, dtype)
        assert result.within is within, (dtype, steps)
        assert result.beyond == (0 if within else 1)


def _away(x):
    """The next representable value away from zero in ``x``'s own dtype (one ulp)."""
    arr = np.array([x])
    bits = arr.view(np.dtype(f"u{arr.itemsize}"))
    bits += 1  # sign-magnitude: one more in the low bits is one ulp larger in magnitude
    return bits.view(arr.dtype)[0]


def test_round_trip_through_bf16_is_noise_but_one_edit_inside_it_is_not(minilm_weights):
    a = minilm_weights["encoder.layer.0.attention.self.query.weight"]
    b = a.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert storage_noise(a, b, a != b, "F32").kind == "round trip through BF16"
    b[3, 3] = a[3, 3] * 1.01
    assert not storage_noise(a, b, a != b, "F32").within


def test_integer_codes_are_never_storage_noise():
    """Storing or copying integer codes never rounds them; a new code needs a claim
    (re-quantization) to explain it."""
    a = np.arange(-60, 60, dtype=np.int8).astype(np.float32).reshape(8, 15)
    b = a.copy()
    assert storage_noise(a, b, a != b, "I8").within  # nothing changed
    b[0, 0] += 1
    result = storage_noise(a, b, a != b, "I8")
    assert not result.within and result.beyond == 1
