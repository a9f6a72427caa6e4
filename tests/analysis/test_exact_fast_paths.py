"""The fast paths of the change statistics compute exactly what the plain ones do."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from scanner.analysis import outliers
from scanner.analysis.noise import bound_levels, element_ulp, noise_bound, round_to_bfloat16
from tests.analysis.weights_io import tensor_pair

STORAGE = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}


def _stored(dtype: str, x: np.ndarray) -> np.ndarray:
    return x.astype(STORAGE[dtype]).astype(np.float32)


def _sparse_edits(rng: np.random.Generator, m: int, n: int) -> list[np.ndarray]:
    """Deltas touching few elements (under 5% of the larger shapes), in shapes a line
    median can see."""
    block = np.zeros((m, n), np.float32)
    block[3:19, 5:37] = 0.3
    row_and_col = np.zeros((m, n), np.float32)
    row_and_col[7] = 0.01
    row_and_col[:, 2] = -0.02
    scattered = np.zeros((m, n), np.float32)
    scattered.reshape(-1)[rng.choice(m * n, 40, replace=False)] = rng.normal(0, 1, 40)
    return [block, row_and_col, scattered]


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("shape", [(200, 300), (40, 12), (12, 40)])
def test_sparse_scales_equal_the_dense_computation(
    dtype: str, shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    a = _stored(dtype, rng.normal(0, 0.05, shape))
    a[0, 0] = 0.0  # the floor's smallest level
    for delta in _sparse_edits(rng, *shape):
        b = _stored(dtype, a + delta)
        changed = a.view(np.uint32) != b.view(np.uint32)
        fast = outliers._scales(a, b, dtype, changed)
        monkeypatch.setattr(outliers, "_sparse_scales", lambda *_: None)
        monkeypatch.setattr(outliers, "bound_levels", lambda *_: None)
        plain = outliers._scales(a, b, dtype, changed)
        monkeypatch.undo()
        for name in ("ratio", "row_scale", "col_scale", "row_floor", "col_floor"):
            assert np.array_equal(getattr(fast, name), getattr(plain, name)), name
        # and the plain line medians of a sparse change are numpy's own
        absd = np.abs(b - a, dtype=np.float32)
        if shape[1] >= outliers.MIN_SIDE and changed.mean() < outliers.SPARSE_UPDATE:
            assert np.array_equal(plain.row_scale, np.median(absd, axis=1))
            assert np.array_equal(plain.row_floor, np.median(noise_bound(a, b, dtype), axis=1))


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_bound_levels_name_the_noise_bound(dtype: str) -> None:
    rng = np.random.default_rng(3)
    every_half = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)
    a = np.concatenate([every_half[np.isfinite(every_half)], rng.normal(0, 3, 5000)])
    a = _stored(dtype, a)
    b = a[::-1].copy()
    a, b = a[np.isfinite(a) & np.isfinite(b)], b[np.isfinite(a) & np.isfinite(b)]
    levels, values = bound_levels(a, b, dtype)
    assert np.array_equal(values[levels], noise_bound(a, b, dtype))
    # read off the storage words, the levels are the same
    words = tuple(
        x.astype(STORAGE[dtype]).view(np.uint32 if dtype == "F32" else np.uint16) for x in (a, b)
    )
    from_words, _ = bound_levels(a, b, dtype, words)
    assert np.array_equal(from_words, levels)
    assert bound_levels(np.array([np.inf], np.float32), np.zeros(1, np.float32), dtype) is None


def test_ulp_is_numpys_spacing_below_the_largest_finite_value() -> None:
    halves = np.arange(2**15, dtype=np.uint16).view(np.float16)
    halves = halves[np.isfinite(halves) & (halves < np.float16(65504))]
    assert np.array_equal(
        element_ulp(halves.astype(np.float32), halves.astype(np.float32), "F16"),
        np.spacing(halves).astype(np.float32),
    )
    rng = np.random.default_rng(5)
    singles = rng.integers(0, 0x7F7FFFFF, 100_000, dtype=np.uint32).view(np.float32)
    assert np.array_equal(element_ulp(singles, singles, "F32"), np.spacing(singles))
    # the largest finite value has a spacing (np.spacing says inf: the next value is)
    assert element_ulp(np.float16([65504]), np.float16([0]), "F16")[0] == 32.0


def test_bfloat16_rounding_on_bits_equals_ml_dtypes() -> None:
    rng = np.random.default_rng(11)
    words = rng.integers(0, 2**32, 500_000, dtype=np.uint64).astype(np.uint32)
    ties = (np.arange(2**16, dtype=np.uint32) << np.uint32(16)) | np.uint32(0x8000)
    with np.errstate(invalid="ignore"):
        x = np.concatenate([words, ties]).view(np.float32).astype(np.float64)
    x = np.concatenate([x[np.isfinite(x)], [np.inf, -np.inf, 0.0, -0.0, 0.1]])
    assert np.array_equal(round_to_bfloat16(x), x.astype(ml_dtypes.bfloat16).astype(np.float64))


def test_fp16_rounding_on_bits_equals_numpys_cast() -> None:
    """Every class of float32 input: random bit patterns over the whole range (fp16
    subnormals, overflow to infinity), exact ties between neighbouring fp16 values,
    the edges of the subnormal and finite ranges, signed zeros and infinities."""
    from scanner.claims.gap import fp16_round

    rng = np.random.default_rng(12)
    words = rng.integers(0, 2**32, 500_000, dtype=np.uint64).astype(np.uint32)
    halves = np.arange(2**16, dtype=np.uint16)
    lower = halves.view(np.float16).astype(np.float32)
    upper = np.nextafter(halves.view(np.float16), np.float16(np.inf)).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        ties = ((lower.astype(np.float64) + upper) / 2).astype(np.float32)
        x = np.concatenate([words.view(np.float32), ties])
    edges = [65504, 65519.99, 65520, 2**-14, 2**-14 * 0.99, 2**-24, 2**-25, 3 * 2**-25]
    x = np.concatenate([x[np.isfinite(x)], np.float32([0.0, -0.0, np.inf, -np.inf])])
    x = np.concatenate([x, np.float32(edges), -np.float32(edges)])
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    assert np.array_equal(fp16_round(x).view(np.uint32), want.view(np.uint32))


def test_magnitude_order_is_numpys_stable_argsort() -> None:
    from scanner.analysis.pruning import _ascending

    rng = np.random.default_rng(13)
    for shape, axis in (((5000,), 0), ((120, 64), 1), ((120, 16, 4), 2)):
        mag = np.abs(rng.standard_normal(shape).astype(np.float32))
        mag.reshape(-1)[::5] = 0.0  # ties, as pruned weights make
        mag.reshape(-1)[::9] = 0.25
        assert np.array_equal(_ascending(mag, axis), np.argsort(mag, axis=axis, kind="stable"))


def test_first_occurrences_match_a_stable_sort() -> None:
    from scanner.claims.gap import first_occurrences

    rng = np.random.default_rng(19)
    w = rng.standard_normal((50, 300)).astype(np.float32)
    w[:, ::3] = np.round(w[:, ::3], 1)  # repeated values, negative ones included
    w[0, :5] = [0.0, -0.0, np.nan, np.nan, 0.0]
    order = np.argsort(w, axis=1, kind="stable")
    srt = np.take_along_axis(w, order, axis=1)
    first_sorted = np.ones(w.shape, dtype=bool)
    first_sorted[:, 1:] = srt[:, 1:] != srt[:, :-1]
    expected = np.empty(w.shape, dtype=bool)
    np.put_along_axis(expected, order, first_sorted, axis=1)
    assert np.array_equal(first_occurrences(w), expected)


def _wall_counts_by_band(q: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The definition: per row and band, valid elements closer than the band to the
    inner wall (towards zero) and to the outer wall of their bin, in float64."""
    from scanner.claims.gap import BANDS

    q = q.astype(np.float64)
    r = q - np.rint(q)
    distance = 0.5 - np.abs(r)
    inner_side = (r < 0) ^ (q < 0)
    inner = np.stack([((distance < b) & inner_side & valid).sum(1) for b in BANDS], 1)
    outer = np.stack([((distance < b) & ~inner_side & valid).sum(1) for b in BANDS], 1)
    return inner, outer


@pytest.mark.parametrize("spread", [0.7, 3.0, 40.0])
def test_wall_counts_and_shifted_grids_match_the_definition(spread: float) -> None:
    """One histogram gives the counts of the grid and of every shifted control grid;
    they equal counting each band on ``q + offset`` directly. Values sit mid-cell (a
    whole number of cells plus a small jitter), away from the cell edges where float32
    rounding decides either way; coordinates in [-1, 0) are included on purpose, as
    their inner wall changes side when shifted."""
    from scanner.claims.gap import _CELLS, _OFFSET_CELLS, CONTROL_OFFSETS, _wall_counts

    rng = np.random.default_rng(int(spread * 10))
    rows, cols = 37, 300
    whole = np.rint(rng.normal(0, spread, (rows, cols)) * _CELLS)
    jitter = rng.uniform(0.3, 0.7, (rows, cols))
    q = ((whole + jitter) / _CELLS).astype(np.float32)
    q[0, :_CELLS] = (np.arange(-_CELLS, 0) + 0.5) / _CELLS
    valid = rng.random((rows, cols)) < 0.9
    got = _wall_counts(q, valid, tuple(_OFFSET_CELLS))
    assert len(got) == 1 + len(CONTROL_OFFSETS)
    for (inner, outer), off in zip(got, (0.0, *CONTROL_OFFSETS), strict=True):
        want_inner, want_outer = _wall_counts_by_band(q.astype(np.float64) + off, valid)
        np.testing.assert_array_equal(inner, want_inner, err_msg=f"offset {off}")
        np.testing.assert_array_equal(outer, want_outer, err_msg=f"offset {off}")


@pytest.mark.parametrize("shape", [(200, 300), (67, 45), (40, 12)])
def test_sparse_outlier_profile_equals_the_dense_one(
    shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sparse change's elements and tiles, found at the changed elements, are those
    the whole-ratio computation finds: same rows, columns, tiles, elements and mask, and
    tile statistics equal to float32 rounding. Edits: a block, a row and a column, lone
    elements among a light scattered change, and a block at the ragged edge."""
    rng = np.random.default_rng(11)
    a = rng.normal(0, 0.05, shape).astype(np.float32)
    m, n = shape
    edits = []
    block = a.copy()
    block[3:19, 5:21] += 0.2
    edits.append(block)
    lines = a.copy()
    lines[7] += 0.01
    lines[:, 2] -= 0.02
    edits.append(lines)
    scattered = a.copy()
    at = rng.choice(m * n, max(8, m * n // 60), replace=False)
    scattered.reshape(-1)[at] += rng.normal(0, 1e-3, at.size).astype(np.float32)
    scattered.reshape(-1)[at[:3]] += 5.0
    edits.append(scattered)
    edge = a.copy()
    edge[m - 5 :, n - 7 :] += 0.3
    edits.append(edge)
    for b in edits:
        pair = tensor_pair("w", a, b)
        fast = outliers.outlier_profile(pair)
        monkeypatch.setattr(outliers, "_sparse_scales", lambda *_: None)
        plain = outliers.outlier_profile(pair)
        monkeypatch.undo()
        for field in ("rows", "cols", "tiles", "elements", "n_elements", "box"):
            assert getattr(fast, field) == getattr(plain, field), field
        assert np.array_equal(fast.mask, plain.mask)
        assert fast.stats.keys() == plain.stats.keys()
        for key, value in plain.stats.items():
            assert fast.stats[key] == pytest.approx(value, rel=1e-6), key
