"""Claims re-derived on real weights (MiniLM, rapidocr, SmolLM2, text2tashkeel)."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from fixtures import real_model
from scanner.claims import check_claim, parse_claim
from scanner.claims.gap import gap_tensor
from scanner.claims.layouts import find_groups
from scanner.errors import UsageError
from scanner.formats import open_artifact
from tests.claims.conftest import TAMPER_TENSOR, tampered_indices
from tests.claims.tampering import largest, press_to_walls, rtn_int8

pytestmark = pytest.mark.long_file(19)

SCHEMES = ("int8-per-channel", "q8_0", "q4_0")


def test_grammar_parses_and_rejects() -> None:
    c = parse_claim("quantize:int8:per-channel:symmetric")
    assert dict(c.params) == {
        "dtype": "int8",
        "granularity": "per-channel",
        "scheme": "symmetric",
        "algorithm": "rtn",
    }
    assert parse_claim("prune:2:4").params["n"] == "2"
    assert parse_claim("cast:bf16").params["target"] == "BF16"
    # module names keep their case
    assert parse_claim("convert:drop=Pooler,lm_head").params["drop"] == "Pooler,lm_head"
    for bad, msg in [
        ("convert:drop=", "module names"),
        ("quantise:int8", "unknown kind"),
        ("cast", "target"),
        ("prune:4:2", "0 < N < M"),
        ("quantize:int9", "not a valid"),
        ("gguf:q9_9", "not a valid"),
        ("prune:magnitude:1.5", "not a valid"),
    ]:
        with pytest.raises(UsageError, match=msg):
            parse_claim(bad)


def test_int8_per_channel_and_per_tensor(build, minilm_path: Path) -> None:
    pc = build("pc", per_channel=True)
    r = check_claim("quantize", "int8:per-channel:symmetric", minilm_path, pc)
    assert r.holds, r.message
    assert len(r.tensors) == 40
    pt = build("pt_asym", per_channel=False, symmetric=False)
    assert check_claim(
        "quantize", {"granularity": "per-tensor", "scheme": "asymmetric"}, minilm_path, pt
    ).holds
    # The wrong granularity is named, not accepted.
    wrong = check_claim("quantize", "int8:per-tensor", minilm_path, pc)
    assert not wrong.holds and {f.rule_id for f in wrong.findings} == {"MS403"}


def test_int8_flipped_codes_fail_and_are_localized(build, minilm, minilm_path: Path) -> None:
    bad = build("pc_tampered", per_channel=True, tamper=TAMPER_TENSOR)
    r = check_claim("quantize", "int8:per-channel:symmetric", minilm_path, bad)
    assert not r.holds
    failed = [v for v in r.tensors if not v.ok]
    assert [v.tensor for v in failed] == [TAMPER_TENSOR]
    idx = tampered_indices(minilm[TAMPER_TENSOR])
    rows = {int(i) for i in np.unravel_index(idx, minilm[TAMPER_TENSOR].shape)[0]}
    assert set(failed[0].rows) == rows
    assert failed[0].stats["non_nearest"] == idx.size
    f = next(f for f in r.findings if f.rule_id == "MS402")
    assert f.locations[0].tensor == TAMPER_TENSOR
    assert f.evidence["elements"][0]["expected"] == -f.evidence["elements"][0]["found"]
    # A search-algorithm claim still fails: flipped codes are far beyond one step.
    assert not check_claim("quantize", "int8:gptq", minilm_path, bad).holds


def test_cast_fp16_bf16_exact_and_tampered(work: Path, minilm, minilm_path: Path) -> None:
    for target, npd in (("fp16", np.float16), ("bf16", ml_dtypes.bfloat16)):
        out = {n: (a.astype(npd) if a.dtype == np.float32 else a) for n, a in minilm.items()}
        path = work / f"cast_{target}.safetensors"
        save_file(out, str(path))
        assert check_claim("cast", target, minilm_path, path).holds
        # One tensor replaced by a within-rounding but not nearest-even version.
        w = minilm[TAMPER_TENSOR]
        # The neighbouring representable value: within one ulp, but not the nearest.
        up = (w.astype(npd).view(np.uint16) + np.uint16(1)).view(npd)
        out[TAMPER_TENSOR] = np.where(np.abs(w) > np.quantile(np.abs(w), 0.999), up, w.astype(npd))
        tpath = work / f"cast_{target}_t.safetensors"
        save_file(out, str(tpath))
        r = check_claim("cast", target, minilm_path, tpath)
        assert not r.holds
        bad = [v for v in r.tensors if not v.ok]
        assert [v.tensor for v in bad] == [TAMPER_TENSOR]
        assert any(f.rule_id == "MS404" for f in r.findings)
    # ... and back: fp16 -> fp32 is exact.
    half = work / "cast_fp16.safetensors"
    back = work / "cast_back.safetensors"
    with open_artifact(half) as a:
        save_file(
            {
                n: (
                    a.array(n).astype(np.float32)
                    if a.tensors[n].dtype.name == "F16"
                    else np.array(a.array(n))
                )
                for n in a.tensors
            },
            str(back),
        )
    assert check_claim("cast", "fp32", half, back).holds


def _pruned(w: np.ndarray, frac: float, largest: bool = False) -> np.ndarray:
    k = int(w.size * frac)
    order = np.argsort(np.abs(w).reshape(-1), kind="stable")
    idx = order[-k:] if largest else order[:k]
    out = w.copy().reshape(-1)
    out[idx] = 0
    return out.reshape(w.shape)


def test_prune_magnitude_nm_and_tampered(work: Path, minilm, minilm_path: Path) -> None:
    names = [n for n, a in minilm.items() if a.ndim == 2 and n.startswith("encoder")]
    mag = dict(minilm)
    nm = dict(minilm)
    bad = dict(minilm)
    for n in names:
        w = minilm[n]
        mag[n] = _pruned(w, 0.3)
        g = np.abs(w).reshape(-1, 4)
        keep = np.argsort(g, axis=1)[:, 2:]
        mask = np.zeros_like(g, dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        nm[n] = np.where(mask.reshape(w.shape), w, 0).astype(np.float32)
        bad[n] = mag[n]
    # Attack: same sparsity, but one tensor has zeros on 0.3% largest weights too.
    w = minilm[TAMPER_TENSOR]
    t = _pruned(w, 0.297).reshape(-1)
    t[largest(w, 0.003)] = 0
    bad[TAMPER_TENSOR] = t.reshape(w.shape)
    paths = {}
    for key, tensors in (("mag", mag), ("nm", nm), ("bad", bad)):
        paths[key] = work / f"prune_{key}.safetensors"
        save_file(tensors, str(paths[key]))
    r = check_claim("prune", "magnitude:0.3", minilm_path, paths["mag"])
    assert r.holds, r.message
    assert all(abs(v.stats["sparsity"] - 0.3) < 0.01 for v in r.tensors)
    assert check_claim("prune", "2:4", minilm_path, paths["nm"]).holds
    assert not check_claim("prune", "2:4", minilm_path, paths["mag"]).holds
    r = check_claim("prune", "magnitude", minilm_path, paths["bad"])
    assert not r.holds
    v = next(v for v in r.tensors if not v.ok)
    assert v.tensor == TAMPER_TENSOR and v.problem == "criterion"
    assert abs(v.violations[0].trusted_value) == pytest.approx(float(np.abs(w).max()))


def test_prune_sparsegpt_updates_reported_not_tampering(
    work: Path, minilm, minilm_path: Path
) -> None:
    rng = np.random.default_rng(7)
    out = dict(minilm)
    for n in [n for n, a in minilm.items() if a.ndim == 2 and n.startswith("encoder.layer.0")]:
        p = _pruned(minilm[n], 0.5)
        upd = rng.standard_normal(p.shape).astype(np.float32) * 1e-3
        out[n] = np.where(p != 0, p + upd, 0).astype(np.float32)
    path = work / "sparsegpt.safetensors"
    save_file(out, str(path))
    assert not check_claim("prune", "magnitude", minilm_path, path).holds
    r = check_claim("prune", "sparsegpt", minilm_path, path)
    assert r.holds, r.message
    assert all(v.stats["kept_updated"] > 0 for v in r.tensors)


def test_tashkeel_int8_onnx_layouts_parse() -> None:
    with open_artifact(real_model("tashkeel-int8")) as art:
        groups = find_groups(art)
    ops = {g.op for g in groups}
    codes = {g.codes for g in groups}
    assert "DynamicQuantizeLSTM" in ops
    assert "embedding.weight_quantized" in codes and "onnx::MatMul_398_quantized" in codes
    assert all(g.scale.endswith("_scale") for g in groups)


def test_onnxruntime_dynamic_and_qdq(onnx_quantized: dict[str, Path]) -> None:
    src = onnx_quantized["float"]
    r = check_claim("quantize", "int8", src, onnx_quantized["dynamic"])
    assert r.tensors and all(v.ok for v in r.tensors), r.message
    # Static QDQ also quantizes constants and normalization vectors (per-tensor and
    # asymmetric: they have no channel axis) and int32 biases (derived scale); the claim
    # about the weights covers them all.
    r = check_claim("quantize", "int8:per-channel:symmetric", src, onnx_quantized["qdq"])
    assert r.tensors and all(v.ok for v in r.tensors), r.message
    kinds = {(v.stats.get("dtype"), v.stats.get("granularity")) for v in r.tensors}
    assert {("int8", "per-channel"), ("int8", "per-tensor")} <= kinds
    assert any(v.stats.get("dtype") == "i32" for v in r.tensors)
    # A rank>=2 weight quantized per-channel is still not accepted as per-tensor.
    wrong = check_claim("quantize", "int8:per-tensor", src, onnx_quantized["qdq"])
    assert any(v.problem == "granularity" for v in wrong.tensors if not v.ok)


@pytest.mark.parametrize(
    "name",
    ["encoder.layer.2.intermediate.dense.weight", "encoder.layer.4.attention.self.key.weight"],
)
def test_quantization_gap(minilm, name: str) -> None:
    w = minilm[name]
    margin = float(np.random.default_rng(11).uniform(0.02, 0.15))
    for scheme in SCHEMES:
        hit = gap_tensor(name, press_to_walls(w, scheme, margin, seed=5), scheme, 10**6)
        assert hit.flagged and hit.flip_fraction > 2 * hit.flip_expected
        assert not gap_tensor(name, w, scheme, 10**6).flagged
        tuned = w + np.random.default_rng(3).standard_normal(w.shape).astype(
            np.float32
        ) * np.float32(w.std() * 0.01)
        assert not gap_tensor(name, tuned, scheme, 10**6).flagged
    q = rtn_int8(w)
    on_grid = q.codes.astype(np.float32) * q.scale[:, None]
    r = gap_tensor(name, on_grid, "int8-per-channel", 10**6)
    # Every element is a code point: explained, none left to test.
    assert not r.flagged and "code point" in r.skipped


def test_scan_flags_gap_attack_and_cli_claims(
    work: Path, minilm, minilm_path: Path, build, run_cli
) -> None:
    # The untampered tensors are MiniLM's own, scanned clean below: the attacked file
    # holds the tampered tensor's layer only.
    layer = TAMPER_TENSOR.rsplit(".", 3)[0] + "."
    attacked = {n: a for n, a in minilm.items() if n.startswith(layer)}
    attacked[TAMPER_TENSOR] = press_to_walls(minilm[TAMPER_TENSOR], "int8-per-channel", 0.07, 2)
    path = work / "gap_attack.safetensors"
    save_file(attacked, str(path))
    res = run_cli("scan", path, "--format", "json")
    rules = [f["rule_id"] for f in res.json()["findings"]]
    assert "MS409" in rules
    clean = run_cli("scan", minilm_path, "--format", "json")
    assert "MS409" not in [f["rule_id"] for f in clean.json()["findings"]]
    pc = build("pc", per_channel=True)
    bad = build("pc_tampered", per_channel=True, tamper=TAMPER_TENSOR)
    out = work / "diff.json"
    assert (
        run_cli(
            "diff",
            minilm_path,
            pc,
            "--claim",
            "quantize:int8:per-channel:symmetric",
            "--format",
            "json",
            "-o",
            out,
        ).code
        == 0
    )
    assert (
        run_cli(
            "diff",
            minilm_path,
            bad,
            "--claim",
            "quantize:int8:per-channel:symmetric",
            "--format",
            "json",
            "-o",
            out,
        ).code
        == 1
    )
    report = json.loads(out.read_text())
    assert any(
        f["rule_id"] == "MS402" and f["locations"][0]["tensor"] == TAMPER_TENSOR
        for f in report["findings"]
    )
    assert run_cli("diff", minilm_path, pc, "--claim", "quantize:int9").code == 2
    # Without a claim the transformation is inferred and explained.
    assert run_cli("diff", minilm_path, pc, "--format", "json", "-o", out).code == 0
    report = json.loads(out.read_text())
    assert any(f["rule_id"] == "MS408" for f in report["findings"])


def test_convert_safetensors_to_gguf_f32_with_renames(
    work: Path, minilm, minilm_path: Path
) -> None:
    import gguf

    path = work / "minilm_f32.gguf"
    wr = gguf.GGUFWriter(str(path), "bert")
    for n, a in minilm.items():
        if a.dtype == np.float32:
            wr.add_tensor("x." + n, a)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    sub = work / "minilm_f32_only.safetensors"
    save_file({n: a for n, a in minilm.items() if a.dtype == np.float32}, str(sub))
    r = check_claim("convert", None, sub, path)
    assert r.holds, r.message
