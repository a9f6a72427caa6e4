"""``lora:`` claims on MiniLM with a real PEFT adapter (tests/claims/data/lora, made by
peft 0.21.2) and adapters written here in PEFT's documented layout; tampered twins are
made here."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from scanner.claims import check_claim, parse_claim
from scanner.errors import UsageError

ADAPTER = Path(__file__).parent / "data" / "lora" / "minilm-qkv-r4"
PREFIX = "base_model.model."
QUERY2 = "encoder.layer.2.attention.self.query.weight"


def merge_adapter(base: dict[str, np.ndarray], folder: Path) -> dict[str, np.ndarray]:
    """W + (alpha / r) B @ A in float32, PEFT's merge formula."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    ad = load_file(str(folder / "adapter_model.safetensors"))
    out = dict(base)
    for key, a in ad.items():
        if ".lora_A." not in key:
            continue
        module = key[len(PREFIX) :].split(".lora_A.")[0]
        b = ad[key.replace(".lora_A.", ".lora_B.")]
        w = out[module + ".weight"]
        delta = (b @ a) * np.float32(cfg["lora_alpha"] / cfg["r"])
        out[module + ".weight"] = (w + delta).astype(np.float32)
    return out


def write_adapter(folder: Path, tensors: dict[str, np.ndarray], **cfg: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **cfg}))
    return folder


@pytest.fixture(scope="module")
def merged(minilm) -> dict[str, np.ndarray]:
    return merge_adapter(minilm, ADAPTER)


@pytest.fixture(scope="module")
def merged_path(merged, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lora") / "merged.safetensors"
    save_file(merged, str(path))
    return path


def save(tmp_path: Path, tensors: dict[str, np.ndarray], name: str = "t") -> Path:
    path = tmp_path / f"{name}.safetensors"
    # save_file writes an array's memory as it lies: keep every array row-major.
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def bad(result) -> dict[str, object]:
    return {v.tensor: v for v in result.tensors if not v.ok}


def test_peft_adapter_merge_re_derived(minilm_path: Path, merged_path: Path) -> None:
    result = check_claim("lora", {"adapter": str(ADAPTER)}, minilm_path, merged_path)
    assert result.holds, result.message
    assert len(result.tensors) == 18 and all(v.ok for v in result.tensors)
    assert {v.stats["scale"] for v in result.tensors} == {2.0}
    assert any(f.rule_id == "MS401" for f in result.findings)


def test_rank_claim_holds_and_bounds(minilm_path: Path, merged_path: Path) -> None:
    ok = check_claim("lora", "r=4:modules=query,key,value", minilm_path, merged_path)
    assert ok.holds, ok.message
    assert {v.stats["rank"] for v in ok.tensors} == {4}
    low = check_claim("lora", "r=3:modules=query,key,value", minilm_path, merged_path)
    assert len(bad(low)) == 18 and {v.problem for v in bad(low).values()} == {"rank"}
    narrow = check_claim("lora", "r=4:modules=query,value", minilm_path, merged_path)
    assert sorted(bad(narrow)) == [f"encoder.layer.{i}.attention.self.key.weight" for i in range(6)]
    assert any(f.rule_id == "MS421" for f in narrow.findings)


def test_merge_then_bf16_cast(tmp_path: Path, minilm_path: Path, merged) -> None:
    cast = {
        k: v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v for k, v in merged.items()
    }
    path = save(tmp_path, cast)
    assert check_claim("lora", {"adapter": str(ADAPTER)}, minilm_path, path).holds
    assert check_claim("lora", "r=4:modules=query,key,value", minilm_path, path).holds


def test_row_of_merged_weight_changed(tmp_path: Path, minilm_path: Path, merged) -> None:
    t = dict(merged)
    w = t[QUERY2].copy()
    rng = np.random.default_rng(3)
    w[40] = rng.uniform(-3, 3, w.shape[1]).astype(np.float32) * np.abs(w).max()
    t[QUERY2] = w
    path = save(tmp_path, t)
    by_adapter = check_claim("lora", {"adapter": str(ADAPTER)}, minilm_path, path)
    assert list(bad(by_adapter)) == [QUERY2] and bad(by_adapter)[QUERY2].rows == (40,)
    finding = next(f for f in by_adapter.findings if f.rule_id == "MS421")
    assert finding.locations[0].region.indices == (40,)
    by_rank = check_claim("lora", "r=4:modules=query,key,value", minilm_path, path)
    assert list(bad(by_rank)) == [QUERY2]
    # the rank claim has no adapter to compare with: the row stands out in what a rank-4
    # update cannot carry
    assert (bad(by_rank)[QUERY2].axis, bad(by_rank)[QUERY2].rows) == (0, (40,))


@pytest.mark.parametrize("shift", [0.3, 2.0])
def test_column_edit_under_a_rank_claim_is_located(
    tmp_path: Path, minilm_path: Path, merged, shift: float
) -> None:
    """One input column moved by ``shift`` x the matrix's median |w|, with the adapter's
    rank-4 update everywhere around it."""
    t = dict(merged)
    w = t[QUERY2].copy()
    w[:, 123] += np.float32(shift * np.median(np.abs(w)))
    t[QUERY2] = w
    result = check_claim("lora", "r=4:modules=query,key,value", minilm_path, save(tmp_path, t))
    assert list(bad(result)) == [QUERY2]
    assert (bad(result)[QUERY2].axis, bad(result)[QUERY2].rows) == (1, (123,))
    finding = next(f for f in result.findings if f.rule_id == "MS421")
    region = finding.locations[0].region
    assert (region.axis, region.indices) == (1, (123,))


def test_small_element_change_inside_a_lora_module(tmp_path: Path, minilm_path, merged) -> None:
    t = dict(merged)
    w = t[QUERY2].copy()
    w[100, 7] += 1e-3 * float(np.abs(w).max())
    t[QUERY2] = w
    result = check_claim("lora", {"adapter": str(ADAPTER)}, minilm_path, save(tmp_path, t))
    assert [x.index for x in bad(result)[QUERY2].violations] == [(100, 7)]


def test_extra_tensor_changed(tmp_path: Path, minilm_path: Path, merged) -> None:
    name = "encoder.layer.3.intermediate.dense.weight"
    t = dict(merged)
    w = t[name].copy()
    w[5, 5] *= 1.5
    t[name] = w
    path = save(tmp_path, t)
    for spec in ({"adapter": str(ADAPTER)}, "r=4:modules=query,key,value"):
        result = check_claim("lora", spec, minilm_path, path)
        assert list(bad(result)) == [name]
        assert bad(result)[name].problem == "outside"


def test_rank_above_r_and_knowledge_edit(tmp_path: Path, minilm, minilm_path: Path) -> None:
    rng = np.random.default_rng(8)
    tensors = {}
    for i in range(6):
        m = f"{PREFIX}encoder.layer.{i}.attention.self.value"
        tensors[m + ".lora_A.weight"] = (rng.standard_normal((8, 384)) * 0.05).astype(np.float32)
        tensors[m + ".lora_B.weight"] = (rng.standard_normal((384, 8)) * 0.05).astype(np.float32)
    folder = write_adapter(tmp_path / "r8", tensors, r=8, lora_alpha=16)
    path = save(tmp_path, merge_adapter(minilm, folder), "r8")
    assert check_claim("lora", {"adapter": str(folder)}, minilm_path, path).holds
    assert check_claim("lora", "r=8:modules=value", minilm_path, path).holds
    over = check_claim("lora", "r=4:modules=value", minilm_path, path)
    assert len(bad(over)) == 6

    # A rank-1 edit of one layer's value matrix (ROME-like): low rank, but not an adapter.
    edit = dict(minilm)
    name = "encoder.layer.3.attention.self.value.weight"
    u, v = rng.standard_normal(384), rng.standard_normal(384)
    edit[name] = (minilm[name] + 0.01 * np.outer(u, v)).astype(np.float32)
    result = check_claim("lora", "r=8:modules=value", minilm_path, save(tmp_path, edit, "rome"))
    assert not result.holds
    assert any("1 of 6 layers" in v.message for v in result.tensors if not v.ok)


def test_peft_layout_variants(tmp_path: Path, minilm) -> None:
    """rsLoRA scaling, a per-module alpha, fan_in_fan_out (GPT-2 Conv1D weights stored
    (in, out)), an adapter key with the adapter name, and a modules_to_save copy."""
    rng = np.random.default_rng(9)
    base = {
        "h.0.attn.c_attn.weight": minilm["encoder.layer.0.attention.self.query.weight"].T.copy(),
        "h.0.mlp.c_fc.weight": minilm["encoder.layer.0.intermediate.dense.weight"].T.copy(),
        "score.weight": minilm["pooler.dense.weight"][:2].copy(),
    }
    a1 = (rng.standard_normal((4, 384)) * 0.05).astype(np.float32)
    b1 = (rng.standard_normal((384, 4)) * 0.05).astype(np.float32)
    a2 = (rng.standard_normal((4, 384)) * 0.05).astype(np.float32)
    b2 = (rng.standard_normal((1536, 4)) * 0.05).astype(np.float32)
    head = (base["score.weight"] + 0.1).astype(np.float32)
    folder = write_adapter(
        tmp_path / "gpt2",
        {
            PREFIX + "h.0.attn.c_attn.lora_A.default.weight": a1,
            PREFIX + "h.0.attn.c_attn.lora_B.default.weight": b1,
            PREFIX + "h.0.mlp.c_fc.lora_A.weight": a2,
            PREFIX + "h.0.mlp.c_fc.lora_B.weight": b2,
            PREFIX + "score.modules_to_save.default.weight": head,
        },
        r=4,
        lora_alpha=8,
        use_rslora=True,
        fan_in_fan_out=True,
        alpha_pattern={"c_fc": 2},
    )
    merged = {
        "h.0.attn.c_attn.weight": base["h.0.attn.c_attn.weight"] + (b1 @ a1).T * (8 / 2),
        "h.0.mlp.c_fc.weight": base["h.0.mlp.c_fc.weight"] + (b2 @ a2).T * (2 / 2),
        "score.weight": head,
    }
    t_path, d_path = save(tmp_path, base, "gpt2"), save(tmp_path, merged, "gpt2m")
    result = check_claim("lora", {"adapter": str(folder)}, t_path, d_path)
    assert result.holds, result.message
    # The same deltas without the transpose's meaning: with plain scaling it fails.
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "fan_in_fan_out": True})
    )
    result = check_claim("lora", {"adapter": str(folder)}, t_path, d_path)
    assert sorted(bad(result)) == ["h.0.attn.c_attn.weight", "h.0.mlp.c_fc.weight"]


def test_refusals(tmp_path: Path, minilm_path: Path, merged_path: Path, run_cli) -> None:
    dora = write_adapter(tmp_path / "dora", {"x": np.zeros(1, np.float32)}, r=4, use_dora=True)
    with pytest.raises(UsageError, match="use_dora"):
        check_claim("lora", {"adapter": str(dora)}, minilm_path, merged_path)
    with pytest.raises(UsageError, match="no adapter_model"):
        check_claim("lora", {"adapter": str(tmp_path)}, minilm_path, merged_path)
    for text in ("lora", "lora:r=8", "lora:modules=q", "lora:r=0:modules=q", "lora:adapter=a:r=4"):
        with pytest.raises(UsageError):
            parse_claim(text)
    assert parse_claim("lora:r=8:modules=q_proj,V_proj").params == {
        "r": "8",
        "modules": "q_proj,V_proj",
    }
    assert run_cli("diff", minilm_path, merged_path, "--claim", f"lora:adapter={dora}").code == 2


def test_cli(tmp_path: Path, minilm_path: Path, merged_path: Path, merged, run_cli) -> None:
    assert run_cli("diff", minilm_path, merged_path, "--claim", f"lora:adapter={ADAPTER}").code == 0
    t = dict(merged)
    t["pooler.dense.bias"] = t["pooler.dense.bias"] + np.float32(0.01)
    out = tmp_path / "r.json"
    res = run_cli(
        "diff",
        minilm_path,
        save(tmp_path, t),
        "--claim",
        "lora:r=4:modules=query,key,value",
        "--format",
        "json",
        "-o",
        out,
    )
    assert res.code == 1
    findings = json.loads(out.read_text())["findings"]
    assert any(
        f["rule_id"] == "MS421" and f["locations"][0]["tensor"] == "pooler.dense.bias"
        for f in findings
    )


def test_attest_lora_rechecks_the_adapter(tmp_path: Path, minilm_path: Path, merged_path, run_cli):
    from signing.keys import KeyType, generate_private_key, write_key_pair

    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    write_key_pair(generate_private_key(KeyType.ED25519), priv, pub)
    common = ["--input", minilm_path, "--produced", merged_path, "--key", priv]
    res = run_cli("attest", "lora", *common, "--param", f"adapter={ADAPTER}", "-o", tmp_path / "a")
    assert res.code == 0 and "attested lora (pass)" in res.err
    res = run_cli(
        "attest",
        "lora",
        *common,
        "--param",
        "r=2",
        "--param",
        "modules=query,key,value",
        "-o",
        tmp_path / "b",
    )
    assert res.code == 1 and "refusing to attest 'lora'" in res.err
