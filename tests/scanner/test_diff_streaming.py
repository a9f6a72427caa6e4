"""The diff's streaming machinery gives the answers of the plain computation.

* the bit-level exact-cast scan (``scanner.diff.castbits``) agrees with numpy /
  ml_dtypes ``astype`` on every 16-bit pattern, with deployed elements tampered in
  independent ways (one ulp, sign, zero, NaN, infinity, random bits);
* ``cast_check`` settled by that scan returns exactly what the element-by-element path
  returns, on the real fixture model's tensors;
* the chunked byte compare agrees with a whole-tensor compare;
* walking a tensor releases its pages: resident memory does not grow with the model.
"""

from __future__ import annotations

import resource
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from scanner.diff import compare as compare_module
from scanner.diff.castbits import CastScan, bits, cast_mismatches
from scanner.diff.compare import bytes_equal, cast_check, iter_flat_pairs
from scanner.formats import open_artifact

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)


def _reference(source: np.ndarray, deployed: np.ndarray, target: np.dtype) -> np.ndarray:
    expected = source.astype(target)
    differ = bits(expected) != bits(deployed)
    both_nan = np.isnan(expected.astype(np.float32)) & np.isnan(deployed.astype(np.float32))
    return np.flatnonzero(differ & ~both_nan)


def _every_pattern(dtype: np.dtype) -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype)


def _tamper(deployed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Independent edits of the correctly cast bits: +1 ulp, sign flips, zeros, NaN,
    infinity and random patterns, each at its own random positions."""
    out = deployed.view(np.uint16).copy()
    n = out.size
    for edit in ("ulp", "sign", "zero", "nan", "inf", "random"):
        at = rng.choice(n, size=200, replace=False)
        if edit == "ulp":
            out[at] += np.uint16(1)
        elif edit == "sign":
            out[at] ^= np.uint16(0x8000)
        elif edit == "zero":
            out[at] = 0
        elif edit == "nan":
            out[at] = 0x7FC0 if deployed.dtype == BF16 else 0x7E00
        elif edit == "inf":
            out[at] = 0x7F80 if deployed.dtype == BF16 else 0x7C00
        else:
            out[at] = rng.integers(0, 1 << 16, size=at.size, dtype=np.uint16)
    return out.view(deployed.dtype)


@pytest.mark.parametrize(("source", "target"), [(F16, BF16), (BF16, F16)])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_cast_scan_matches_astype_on_every_pattern(source, target, seed) -> None:
    rng = np.random.default_rng(seed)
    src = _every_pattern(source)
    with np.errstate(over="ignore", invalid="ignore"):
        exact = src.astype(target)
        assert cast_mismatches(src, exact, target).size == 0
        tampered = _tamper(exact, rng)
        want = _reference(src, tampered, target)
        got = cast_mismatches(src, tampered, target)
    assert want.size > 0
    np.testing.assert_array_equal(got, want)


def _shortcut(src: np.ndarray, target: np.dtype) -> np.ndarray:
    """What the 16-bit arithmetic alone gives, special values included (wrong there)."""
    a = src.view(np.uint16).astype(np.int64)
    x, sign = a & 0x7FFF, a & 0x8000
    if target == BF16:
        y = ((x + 3 + ((x >> 3) & 1)) >> 3) + (112 << 7)
    else:
        y = (x - (113 << 7) + (1 << 7)) << 3
    return ((y & 0xFFFF) | sign).astype(np.uint16).view(target)


@pytest.mark.parametrize(("source", "target"), [(F16, BF16), (BF16, F16)])
def test_the_arithmetic_shortcut_is_never_trusted_where_it_is_wrong(source, target) -> None:
    """Deployed values equal to the shortcut's own result: right for ordinary numbers,
    wrong for zeros, subnormals, infinities, NaN and out-of-range exponents."""
    src = _every_pattern(source)
    deployed = _shortcut(src, target)
    with np.errstate(over="ignore", invalid="ignore"):
        want = _reference(src, deployed, target)
        got = cast_mismatches(src, deployed, target)
    assert want.size > 1000  # the special values
    np.testing.assert_array_equal(got, want)


def test_scan_reuses_buffers_across_chunks_of_any_length() -> None:
    rng = np.random.default_rng(3)
    src = (rng.standard_normal(10_000) * 0.02).astype(np.float16)
    dst = _tamper(src.astype(BF16), rng)
    scan = CastScan(F16, BF16, 4096)
    got = [
        scan.mismatches(src[i : i + 4096], dst[i : i + 4096]) + i for i in range(0, src.size, 4096)
    ]
    np.testing.assert_array_equal(np.concatenate(got), _reference(src, dst, BF16))


def test_generic_pair_uses_astype() -> None:
    rng = np.random.default_rng(4)
    src = rng.standard_normal(5000).astype(np.float32)
    with np.errstate(over="ignore"):
        dst = _tamper(src.astype(F16), rng)
        np.testing.assert_array_equal(cast_mismatches(src, dst, F16), _reference(src, dst, F16))


@pytest.fixture(scope="module")
def cast_pair(minilm: Path, tmp_path_factory) -> tuple[Path, Path, Path]:
    """MiniLM in fp16, its exact bf16 cast, and that cast with three elements of one
    tensor nudged by one bf16 ulp."""
    folder = tmp_path_factory.mktemp("cast")
    weights = {k: v.astype(np.float16) for k, v in load_file(str(minilm)).items()}
    cast = {k: v.astype(BF16) for k, v in weights.items()}
    trusted, exact, nudged = (folder / n for n in ("f16.st", "bf16.st", "bf16-nudged.st"))
    save_file(weights, str(trusted))
    save_file(cast, str(exact))
    name = "encoder.layer.2.attention.self.query.weight"
    edited = dict(cast)
    flat = edited[name].copy().reshape(-1).view(np.uint16)
    flat[[5, 777, 40_000]] += np.uint16(1)
    edited[name] = flat.view(BF16).reshape(cast[name].shape)
    save_file(edited, str(nudged))
    return trusted, exact, nudged


@pytest.mark.parametrize("deployed", ["exact", "nudged"])
def test_cast_check_equals_the_element_by_element_path(cast_pair, deployed, monkeypatch) -> None:
    trusted_path, exact_path, nudged_path = cast_pair
    path = exact_path if deployed == "exact" else nudged_path
    with open_artifact(trusted_path) as t, open_artifact(path) as d:
        names = [n for n in t.tensors if t.tensors[n].n_elements > 1000][:8]
        fast = {n: cast_check(t, n, d, n) for n in names}
        # The reference: the bit-level scan disabled, every tensor walks the full path.
        monkeypatch.setattr(compare_module, "exact_cast_mismatches", lambda *a: 1)
        slow = {n: cast_check(t, n, d, n) for n in names}
    assert fast == slow
    exact = [n for n in names if fast[n][0].exact]
    if deployed == "exact":
        assert exact == names
    else:
        assert "encoder.layer.2.attention.self.query.weight" not in exact


def test_chunked_byte_compare_agrees_with_whole_tensors(minilm: Path, tmp_path: Path) -> None:
    weights = load_file(str(minilm))
    edited = dict(weights)
    name = "encoder.layer.5.intermediate.dense.weight"
    w = weights[name].copy()
    w[-1, -1] = np.nextafter(w[-1, -1], np.float32(1))  # the very last element
    edited[name] = w
    other = tmp_path / "edited.safetensors"
    save_file(edited, str(other))
    with open_artifact(minilm) as a, open_artifact(other) as b:
        for n in a.tensors:
            want = np.array_equal(bits(a.array(n)), bits(b.array(n)))
            assert bytes_equal(a, n, b, n) is want, n
        assert not bytes_equal(a, name, b, name)


def test_walking_tensors_releases_their_pages(tmp_path: Path) -> None:
    """A 128 MiB tensor walked with iter_flat_pairs leaves the resident set well below
    its size (the pages are unmapped as the walk goes)."""
    path = tmp_path / "big.safetensors"
    n = 32 << 20  # float32 elements: 128 MiB
    rng = np.random.default_rng(5)
    save_file({"a": rng.standard_normal(n, dtype=np.float32)}, str(path))
    del rng
    before = _rss_now()
    with open_artifact(path) as art:
        info = art.tensors["a"]
        peak = 0
        for x, y in iter_flat_pairs(art, info, art, info, 1 << 20):
            assert x.size == y.size
            float(x[::1024].sum())  # touch every page of the chunk
            peak = max(peak, _rss_now() - before)
    assert peak < 100 << 20, peak


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
