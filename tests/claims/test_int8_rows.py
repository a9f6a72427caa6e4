"""int8 codes judged per row and block: plain code tampering on real models, written here
(tests/tamper/regions.py), never with the scanner's planters; faithful onnxruntime
quantizations never alarm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.numpy import save_file

from scanner.api import diff_artifacts
from scanner.claims import check_claim
from tests.tamper.regions import REGIONS, region_mask

pytestmark = pytest.mark.long_file(24)

SHIFTS = ("+1", "+3", "rail")


def _rtn(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8, written out here from the textbook formula."""
    s = (np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127.0).astype(np.float32)
    s = np.where(s > 0, s, 1).astype(np.float32)
    shape = (-1,) + (1,) * (w.ndim - 1)
    return np.clip(np.rint(w / s.reshape(shape)), -127, 127).astype(np.int8), s


def _shift(codes: np.ndarray, mask: np.ndarray, how: str, rng: np.random.Generator) -> np.ndarray:
    c = codes.astype(np.int32)
    if how == "rail":
        c[mask] = np.where(c[mask] >= 0, -128, 127)
    else:
        step = int(how)
        sign = rng.choice(np.array([-1, 1]), size=int(mask.sum()))
        moved = c[mask] + sign * step
        # Stay inside the int8 range: move the other way at a rail.
        c[mask] = np.where((moved > 127) | (moved < -128), c[mask] - sign * step, moved)
    return c.astype(np.int8)


@pytest.fixture(scope="module")
def minilm_int8(minilm, work: Path) -> tuple[dict[str, np.ndarray], Path]:
    out: dict[str, np.ndarray] = {}
    for n, a in minilm.items():
        if a.ndim == 2 and n.startswith("encoder.layer.") and n.endswith(".weight"):
            out[n], out[n + "_scale"] = _rtn(a)
        else:
            out[n] = a
    path = work / "rows_int8.safetensors"
    save_file(out, str(path))
    return out, path


def test_one_row_of_codes_at_127_fails_and_names_the_row(
    minilm_int8, minilm_path: Path, work: Path
) -> None:
    tensors, _ = minilm_int8
    name = "encoder.layer.2.attention.output.dense.weight"
    bad = dict(tensors)
    c = tensors[name].copy()
    c[77, 100:108] = 127
    bad[name] = c
    path = work / "row127.safetensors"
    save_file(bad, str(path))
    result = diff_artifacts(minilm_path, path)
    codes = [f for f in result.findings if f.rule_id == "MS402"]
    assert [f.locations[0].tensor for f in codes] == [name]
    assert list(codes[0].locations[0].region.indices) == [77]
    assert result.classification == "unexplained change"
    # An explicit search-algorithm claim does not excuse it either.
    r = check_claim("quantize", "int8:gptq", minilm_path, path)
    assert not r.holds and [v.tensor for v in r.tensors if not v.ok] == [name]


def test_wrong_way_rounding_of_salient_codes_is_not_inferred_as_search(
    minilm_int8, minilm, minilm_path: Path, work: Path
) -> None:
    """The 0.3% largest weights rounded to the other neighbour: every code within one
    step. Without a claim only round-to-nearest is inferred, and it fails on the rows;
    with a gptq claim the concentration on the largest weights fails."""
    tensors, _ = minilm_int8
    name = "encoder.layer.4.intermediate.dense.weight"
    w = minilm[name]
    c, s = _rtn(w)
    k = int(w.size * 0.003)
    idx = np.argsort(np.abs(w).reshape(-1))[-k:]
    exact = (w / s[:, None]).reshape(-1)[idx]
    other = np.where(exact > np.rint(exact), np.rint(exact) + 1, np.rint(exact) - 1)
    flat = c.reshape(-1).astype(np.int32)
    flat[idx] = np.clip(other, -127, 127)
    bad = dict(tensors)
    bad[name] = flat.reshape(c.shape).astype(np.int8)
    path = work / "salient_wrong_way.safetensors"
    save_file(bad, str(path))
    result = diff_artifacts(minilm_path, path)
    inferred = [f for f in result.findings if f.rule_id == "MS408"]
    assert inferred and "gptq" not in inferred[0].message
    assert [f.locations[0].tensor for f in result.findings if f.rule_id == "MS402"] == [name]
    r = check_claim("quantize", "int8:gptq", minilm_path, path)
    failed = [v for v in r.tensors if not v.ok]
    assert [v.tensor for v in failed] == [name]
    assert failed[0].stats["salient_concentration"]


def _matrix(
    codes_by_name: dict[str, np.ndarray],
    names: list[str],
    rebuild,
    claim: str,
    seed: int,
) -> dict[tuple[str, str], float]:
    """Detection rate per (region, shift) cell over ``names`` (one tamper per file)."""
    rng = np.random.default_rng(seed)
    rates: dict[tuple[str, str], float] = {}
    for region in REGIONS:
        for how in SHIFTS:
            hits = 0
            for name in names:
                c = codes_by_name[name]
                # Regions on the 2-D view (output channels x the rest), as a conv
                # weight is quantized and stored per output channel.
                mask = region_mask(region, (c.shape[0], c.size // c.shape[0]), rng)
                mask = mask.reshape(c.shape)
                path, tampered_name = rebuild(name, _shift(c, mask, how, rng))
                r = check_claim("quantize", claim, *path)
                bad = [v for v in r.tensors if not v.ok]
                rows = set(np.flatnonzero(mask.reshape(c.shape[0], -1).any(axis=1)).tolist())
                named = bad and {v.tensor for v in bad} == {tampered_name}
                localized = named and (
                    region == "column" or (set(bad[0].rows) <= rows and set(bad[0].rows) & rows)
                )
                hits += bool(not r.holds and localized)
            rates[(region, how)] = hits / len(names)
    return rates


def test_tamper_matrix_int8_codes_minilm(minilm_int8, minilm_path: Path, work: Path) -> None:
    tensors, _ = minilm_int8
    names = [
        "encoder.layer.1.attention.self.value.weight",
        "encoder.layer.5.output.dense.weight",
    ]

    def rebuild(name: str, codes: np.ndarray):
        out = dict(tensors)
        out[name] = codes
        path = work / "matrix.safetensors"
        save_file(out, str(path))
        return (minilm_path, path), name

    rates = _matrix(tensors, names, rebuild, "int8:per-channel:symmetric", 3)
    assert all(v == 1.0 for v in rates.values()), rates


def test_tamper_matrix_int8_codes_onnx_cnn(onnx_quantized: dict[str, Path], work: Path) -> None:
    """rapidocr's classifier quantized by onnxruntime (QDQ, per-channel): tampered
    initializer codes of conv weights."""
    model = onnx.load(str(onnx_quantized["qdq"]))
    inits = {t.name: t for t in model.graph.initializer}
    names = ["conv11_se_1_weights_quantized", "conv10_expand_weights_quantized"]
    names = [n for n in names if n in inits] or sorted(
        (n for n, t in inits.items() if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4),
        key=lambda n: -int(np.prod(inits[n].dims)),
    )[:2]
    codes = {n: numpy_helper.to_array(inits[n]) for n in names}

    def rebuild(name: str, new: np.ndarray):
        m = onnx.load(str(onnx_quantized["qdq"]))
        for t in m.graph.initializer:
            if t.name == name:
                t.CopyFrom(numpy_helper.from_array(new, name))
        path = work / "matrix_cnn.onnx"
        onnx.save(m, str(path))
        return (onnx_quantized["float"], path), name[: -len("_quantized")]

    rates = _matrix(codes, names, rebuild, "int8:per-channel:symmetric", 5)
    assert all(v == 1.0 for v in rates.values()), rates


@pytest.mark.parametrize(
    ("per_channel", "symmetric"), [(True, True), (False, True), (True, False), (False, False)]
)
def test_faithful_onnxruntime_dynamic_never_alarms(
    work: Path, per_channel: bool, symmetric: bool
) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tests.claims.conftest import rapidocr_float

    logging.getLogger().setLevel(logging.ERROR)
    src = rapidocr_float(work)
    out = work / f"dyn_{per_channel}_{symmetric}.onnx"
    quantize_dynamic(
        str(src),
        str(out),
        weight_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        per_channel=per_channel,
        extra_options={"WeightSymmetric": symmetric},
    )
    r = check_claim("quantize", None, src, out)
    assert r.tensors and all(v.ok for v in r.tensors), [v.message for v in r.tensors if not v.ok][
        :3
    ]
    result = diff_artifacts(src, out)
    assert not [f for f in result.findings if f.rule_id in ("MS402", "MS403")]
    assert any(f.rule_id == "MS408" and "break" not in f.message for f in result.findings)
