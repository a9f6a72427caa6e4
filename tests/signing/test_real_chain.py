"""A 5-step attested lifecycle of real weights, through the CLI, with the scanner's real
claim re-checks (no injected checker), and every way the chain must be rejected.

Trusted root: the embeddings and first two encoder layers of all-MiniLM-L6-v2 (real BERT
F32 weights, 36 tensors, 3.7 M parameters; the 30522-row word-embedding table is left out
to keep the run short). The steps:

1. ``convert``    safetensors -> GGUF F32 with llama.cpp tensor names (re-checked: same
                   values under the new names);
2. ``prune``      30% magnitude pruning of the encoder matrices, on the F32 GGUF
                   (re-checked: new zeros are the smallest |w|, kept weights bit-equal);
3. ``quantize``   GGUF Q8_0 of every matrix with ``gguf.quants.quantize`` (re-checked: blocks
                   byte-identical to the reference quantizer, through the ``gguf`` claim);
4. ``lora-merge`` a rank-4 LoRA adapter (PEFT layout) merged into attn_q/attn_v the way
                   llama.cpp's export-lora does for a quantized base: dequantize, add
                   (alpha / r) B A, requantize (not re-derivable: declared-only);
5. ``identical``  the deployed copy (re-checked from the digests).

Order: the issue lists convert -> quantize -> prune. Pruning is applied before quantizing
here because the scanner's prune re-check only covers float tensors (``scanner.claims.prune``
checks that kept weights are bit-equal and that the new zeros follow the criterion, on
float values); a pruned Q8_0 tensor cannot be re-derived, because zeroing codes inside a
block leaves the block's scale computed from weights that no longer exist. Pruning at full
precision and quantizing afterwards is also how such pipelines are run, and it keeps every
re-derivable step really re-checked (the policy sets ``require_recheck = true``, so a step
whose artifacts are missing fails instead of passing unchecked).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file, save_file

from fixtures import real_model
from scanner.claims_bridge import check_step
from scanner.cli.main import main
from scanner.manifest import build_manifest
from signing.attest import Attestation, CheckResult, CheckStatus, attest_step, parse_verified
from signing.bundle import parse_bundle
from signing.keys import KeyType, generate_private_key, load_private_key, write_key_pair
from signing.signers import KeySigner

CHAIN = "urn:modelseal:minilm-release-1"
Q8_0 = gguf.GGMLQuantizationType.Q8_0
LORA_RANK, LORA_ALPHA = 4, 8
LORA_TARGETS = ("query", "value")
TAMPERED = "blk.1.ffn_up.weight"
STAGES = ("root", "f32", "pruned", "q8_0", "merged")

# Hugging Face BERT names -> llama.cpp GGUF names (as convert_hf_to_gguf.py maps them).
_EMBD = {
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
_LAYER = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}


def gguf_name(hf: str) -> str:
    if hf in _EMBD:
        return _EMBD[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, _, param = rest.rpartition(".")
    return f"blk.{layer}.{_LAYER[module]}.{param}"


def write_gguf(path: Path, tensors: dict[str, np.ndarray], quantized: frozenset[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "bert")
    for name, array in tensors.items():
        if name in quantized:
            writer.add_tensor(name, array, raw_shape=array.shape, raw_dtype=Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def flip_largest_codes(blocks: np.ndarray, weights: np.ndarray, count: int) -> np.ndarray:
    """Negate the Q8_0 codes of the ``count`` largest |w| (block: fp16 scale + 32 int8)."""
    out = blocks.copy()
    for flat in np.argsort(-np.abs(weights), axis=None, kind="stable")[:count]:
        row, col = np.unravel_index(flat, weights.shape)
        byte = (col // 32) * 34 + 2 + col % 32
        out[row, byte] = np.uint8((-int(out[row, byte].view(np.int8))) & 0xFF)
    return out


@dataclass
class Lifecycle:
    """Artifacts, keys, policy and the five attestations of the honest chain."""

    base: Path
    arts: dict[str, Path]
    keys: dict[str, Path]
    policy: Path
    atts: Path
    adapter: Path
    deployed: Path
    pruned_weights: dict[str, np.ndarray]
    matrices: frozenset[str]

    def copy_atts(self, dest: Path) -> Path:
        shutil.copytree(self.atts, dest)
        return dest

    def artifact_args(self, **swap: Path | None) -> list[str]:
        """``--artifact`` for every intermediate; ``stage=path`` swaps one, ``=None`` drops it."""
        out: list[str] = []
        for stage in STAGES:
            path = swap.get(stage, self.arts[stage])
            out += ["--artifact", str(path)] if path is not None else []
        return out


def cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def merge_lora(
    q8: dict[str, np.ndarray], adapter: dict[str, np.ndarray], matrices: frozenset[str]
) -> dict[str, np.ndarray]:
    merged = dict(q8)
    for layer in (0, 1):
        for target, short in (("query", "attn_q"), ("value", "attn_v")):
            prefix = f"base_model.model.encoder.layer.{layer}.attention.self.{target}"
            a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
            name = f"blk.{layer}.{short}.weight"
            assert name in matrices
            w = dequantize(q8[name], Q8_0) + (LORA_ALPHA / LORA_RANK) * (b @ a)
            merged[name] = quantize(w.astype(np.float32), Q8_0)
    return merged


def attest_head(lc: Lifecycle, atts: Path) -> None:
    """Steps 1 (convert) and 2 (prune) through ``modelseal attest``."""
    atts.mkdir(exist_ok=True)
    arts, ci = lc.arts, lc.keys["ci"]
    assert (
        cli(
            "attest",
            "convert",
            "--input",
            arts["root"],
            "--produced",
            arts["f32"],
            "--chain",
            CHAIN,
            "--key",
            ci,
            "-o",
            atts / "1-convert.json",
        )
        == 0
    )
    assert (
        cli(
            "attest",
            "prune",
            "--input",
            arts["f32"],
            "--produced",
            arts["pruned"],
            "--param",
            "method=magnitude",
            "--param",
            "sparsity=0.3",
            "--parent",
            atts / "1-convert.json",
            "--key",
            ci,
            "-o",
            atts / "2-prune.json",
        )
        == 0
    )


def attest_quantize(lc: Lifecycle, atts: Path, q8_dir: Path, key: str = "ci") -> int:
    """Step 3 (quantize, re-checked as GGUF Q8_0) through ``modelseal attest``."""
    return cli(
        "attest",
        "quantize",
        "--input",
        lc.arts["pruned"],
        "--produced",
        q8_dir,
        "--param",
        "type=q8_0",
        "--parent",
        atts / "2-prune.json",
        "--key",
        lc.keys[key],
        "-o",
        atts / "3-quantize.json",
    )


def attest_tail(
    lc: Lifecycle, atts: Path, q8_dir: Path, merged_dir: Path, deploy_dir: Path
) -> None:
    """Steps 4 (lora-merge, two inputs) and 5 (the identical deployed copy)."""
    assert (
        cli(
            "attest",
            "lora-merge",
            "--input",
            q8_dir,
            "--input",
            lc.adapter,
            "--produced",
            merged_dir,
            "--param",
            f"rank={LORA_RANK}",
            "--param",
            f"alpha={LORA_ALPHA}",
            "--parent",
            atts / "3-quantize.json",
            "--key",
            lc.keys["trainer"],
            "-o",
            atts / "4-lora-merge.json",
        )
        == 0
    )
    assert (
        cli(
            "attest",
            "identical",
            "--input",
            merged_dir,
            "--produced",
            deploy_dir,
            "--parent",
            atts / "4-lora-merge.json",
            "--key",
            lc.keys["release"],
            "-o",
            atts / "5-deploy.json",
        )
        == 0
    )


def load_attestation(path: Path) -> Attestation:
    """An attestation file as the library's value (to cite it as a parent)."""
    text = path.read_text()
    envelope = parse_bundle(text, path.name).envelope
    verified = parse_verified(envelope.payload_type, envelope.payload, None, path.name)  # type: ignore[arg-type]
    return Attestation(text, verified.statement)


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Lifecycle:
    base = tmp_path_factory.mktemp("lifecycle")
    source = load_file(str(real_model("minilm")))
    hf = {
        n: a
        for n, a in source.items()
        if a.dtype == np.float32
        and n != "embeddings.word_embeddings.weight"
        and n.startswith(("embeddings.", "encoder.layer.0.", "encoder.layer.1."))
    }
    assert len(hf) == 36
    arts = {stage: base / stage for stage in STAGES}
    arts["root"].mkdir()
    save_file(hf, str(arts["root"] / "model.safetensors"))

    f32 = {gguf_name(n): a for n, a in hf.items()}
    write_gguf(arts["f32"] / "model.gguf", f32, frozenset())

    matrices = frozenset(n for n, a in f32.items() if n.startswith("blk.") and a.ndim == 2)
    pruned: dict[str, np.ndarray] = {}
    for name, w in f32.items():
        if name in matrices:
            k = int(0.3 * w.size)
            threshold = np.partition(np.abs(w), k - 1, axis=None)[k - 1]
            w = np.where(np.abs(w) <= threshold, np.float32(0), w).astype(np.float32)
        pruned[name] = w
    write_gguf(arts["pruned"] / "model.gguf", pruned, frozenset())

    q8 = {n: quantize(w, Q8_0) if n in matrices else w for n, w in pruned.items()}
    write_gguf(arts["q8_0"] / "model.gguf", q8, matrices)

    rng = np.random.default_rng(2025)
    adapter_weights: dict[str, np.ndarray] = {}
    for layer in (0, 1):
        for target in LORA_TARGETS:
            prefix = f"base_model.model.encoder.layer.{layer}.attention.self.{target}"
            adapter_weights[f"{prefix}.lora_A.weight"] = (
                0.02 * rng.standard_normal((LORA_RANK, 384))
            ).astype(np.float32)
            adapter_weights[f"{prefix}.lora_B.weight"] = (
                0.02 * rng.standard_normal((384, LORA_RANK))
            ).astype(np.float32)
    adapter = base / "adapter"
    adapter.mkdir()
    save_file(adapter_weights, str(adapter / "adapter_model.safetensors"))
    write_gguf(arts["merged"] / "model.gguf", merge_lora(q8, adapter_weights, matrices), matrices)
    deployed = base / "deploy"
    shutil.copytree(arts["merged"], deployed)

    keys: dict[str, Path] = {}
    pubs: dict[str, Path] = {}
    for who in ("ci", "trainer", "release"):
        keys[who], pubs[who] = base / f"{who}.pem", base / f"{who}.pub.pem"
        write_key_pair(generate_private_key(KeyType.ECDSA_P256), keys[who], pubs[who])
    policy = base / "policy.toml"
    policy.write_text(
        "version = 1\n"
        'allowed_kinds = ["convert", "prune", "quantize", "lora-merge", "identical"]\n'
        "require_recheck = true\n"
        "[roots]\n"
        f'digests = ["{build_manifest(arts["root"]).root_digest}", '
        f'"{build_manifest(adapter).root_digest}"]\n'
        '[[signers]]\nname = "ci"\npublic_key = "ci.pub.pem"\n'
        'kinds = ["convert", "prune", "quantize"]\n'
        '[[signers]]\nname = "trainer"\npublic_key = "trainer.pub.pem"\n'
        'kinds = ["lora-merge"]\n'
        '[[signers]]\nname = "release"\npublic_key = "release.pub.pem"\n'
        'kinds = ["identical"]\n'
    )
    lc = Lifecycle(base, arts, keys, policy, base / "atts", adapter, deployed, pruned, matrices)
    attest_head(lc, lc.atts)
    assert attest_quantize(lc, lc.atts, arts["q8_0"]) == 0
    attest_tail(lc, lc.atts, arts["q8_0"], arts["merged"], deployed)
    return lc


Run = Callable[..., "CliOutcome"]


@dataclass(frozen=True)
class CliOutcome:
    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def call(*args: str | Path) -> CliOutcome:
        capsys.readouterr()
        code = cli(*args)
        captured = capsys.readouterr()
        return CliOutcome(code, captured.out, captured.err)

    return call


def verify(
    run: Run,
    lc: Lifecycle,
    atts: Path,
    *extra: str | Path,
    deployed: Path | None = None,
    artifacts: list[str] | None = None,
) -> CliOutcome:
    return run(
        "verify-chain",
        deployed or lc.deployed,
        "--attestations",
        atts,
        "--policy",
        lc.policy,
        *(lc.artifact_args() if artifacts is None else artifacts),
        *extra,
    )


def problems(outcome: CliOutcome) -> list[str]:
    """The rule lines of a text report."""
    return [line for line in outcome.out.splitlines() if line.startswith("MSC")]


def digest(path: Path) -> str:
    return build_manifest(path).root_digest


def test_five_step_chain_verifies_with_real_rechecks(lifecycle: Lifecycle, run: Run) -> None:
    lc = lifecycle
    text = verify(run, lc, lc.atts)
    assert text.code == 0, text.out + text.err
    lines = text.out.splitlines()
    assert lines[0] == f"PASS: chain {CHAIN}"
    assert not problems(text)
    steps = [line.strip() for line in lines if "<- " in line]
    assert [s.split()[1] for s in steps] == [
        "identical",
        "lora-merge",
        "quantize",
        "prune",
        "convert",
    ]
    assert "signed by release; claim pass  (5-deploy.json)" in steps[0]
    assert "signed by trainer; claim declared-only  (4-lora-merge.json)" in steps[1]
    assert "{'type': 'q8_0'}  signed by ci; claim pass  (3-quantize.json)" in steps[2]
    assert sum("[trusted root]" in line for line in lines) == 2  # the weights and the adapter

    data = json.loads(verify(run, lc, lc.atts, "--format", "json").out)
    assert data["passed"] is True and data["chain"] == CHAIN and data["problems"] == []
    assert sorted(data["roots"]) == sorted([digest(lc.arts["root"]), digest(lc.adapter)])
    by_kind = {s["kind"]: s for s in data["steps"]}
    assert [s["kind"] for s in data["steps"]] == [
        "convert",
        "prune",
        "quantize",
        "lora-merge",
        "identical",
    ]
    assert {k: s["recheck"]["status"] for k, s in by_kind.items()} == {
        "convert": "pass",
        "prune": "pass",
        "quantize": "pass",
        "lora-merge": "declared-only",
        "identical": "pass",
    }
    assert by_kind["convert"]["recheck"]["detail"] == "convert holds on 36 tensors"
    assert (
        by_kind["prune"]["recheck"]["detail"]
        == "prune:method=magnitude:sparsity=0.3 holds on 12 tensors"
    )
    assert by_kind["quantize"]["recheck"]["detail"] == "gguf:type=q8_0 holds on 12 tensors"
    assert by_kind["lora-merge"]["inputs"] == [digest(lc.arts["q8_0"]), digest(lc.adapter)]
    assert by_kind["identical"]["output"] == data["deployed"]["digest"] == digest(lc.deployed)


def test_unsigned_step_rejected(lifecycle: Lifecycle, run: Run, tmp_path: Path) -> None:
    atts = lifecycle.copy_atts(tmp_path / "atts")
    envelope = json.loads((atts / "3-quantize.json").read_text())["dsseEnvelope"]
    (atts / "3-quantize.json").write_bytes(base64.b64decode(envelope["payload"]))
    out = verify(run, lifecycle, atts)
    assert out.code == 1
    assert (
        problems(out)[0]
        == "MSC001 3-quantize.json is a bare in-toto statement with no signature (unsigned)"
    )
    # the chain is broken there: the merge's input has no verified producer
    assert any(p.startswith("MSC007 4-lora-merge.json: input q8_0 ") for p in problems(out))


def test_forged_statement_under_old_signature_rejected(
    lifecycle: Lifecycle, run: Run, tmp_path: Path
) -> None:
    """The statement is edited (claimed as Q4_0) and re-attached to the old signature."""
    atts = lifecycle.copy_atts(tmp_path / "atts")
    data = json.loads((atts / "3-quantize.json").read_text())
    payload = base64.b64decode(data["dsseEnvelope"]["payload"])
    assert payload.count(b'"type": "q8_0"') == 1
    data["dsseEnvelope"]["payload"] = base64.b64encode(
        payload.replace(b'"type": "q8_0"', b'"type": "q4_0"')
    ).decode()
    (atts / "3-quantize.json").write_text(json.dumps(data))
    out = verify(run, lifecycle, atts)
    assert out.code == 1
    assert problems(out)[0] == (
        "MSC002 3-quantize.json: signature does not match the signed statement: the "
        "statement was altered after signing, or it was signed by a different key"
    )


def test_missing_link_rejected(lifecycle: Lifecycle, run: Run, tmp_path: Path) -> None:
    atts = lifecycle.copy_atts(tmp_path / "atts")
    (atts / "2-prune.json").unlink()
    out = verify(run, lifecycle, atts)
    assert out.code == 1
    pruned = digest(lifecycle.arts["pruned"])
    assert problems(out)[0] == (
        f"MSC007 3-quantize.json: input pruned {pruned} of the 'quantize' step is neither a "
        "trusted root nor the output of a verified step (missing link)"
    )
    assert problems(out)[1].startswith("MSC014 3-quantize.json: parent attestation sha256:")
    assert "note: 1-convert.json: not on the path to the deployed artifact; ignored" in out.out


def test_step_signed_by_key_not_allowed_for_its_kind(
    lifecycle: Lifecycle, run: Run, tmp_path: Path
) -> None:
    """The trainer's key (allowed: lora-merge) signs the quantize step."""
    lc = lifecycle
    atts = lc.copy_atts(tmp_path / "atts")
    assert attest_quantize(lc, atts, lc.arts["q8_0"], key="trainer") == 0
    # the merge cites the quantize attestation it followed: re-attest 4 and 5 on the new one
    attest_tail(lc, atts, lc.arts["q8_0"], lc.arts["merged"], lc.deployed)
    out = verify(run, lc, atts)
    assert out.code == 1
    assert len(problems(out)) == 1
    assert problems(out)[0].startswith("MSC004 3-quantize.json: signer 'trainer' (key ")
    assert problems(out)[0].endswith(
        "is not allowed to sign 'quantize' steps (allowed: ['lora-merge'])"
    )


def test_replayed_attestation_from_another_chain_rejected(
    lifecycle: Lifecycle, run: Run, tmp_path: Path
) -> None:
    """A genuine convert attestation of the same weights, made for another release."""
    lc = lifecycle
    atts = lc.copy_atts(tmp_path / "atts")
    other = tmp_path / "other-convert.json"
    assert (
        run(
            "attest",
            "convert",
            "--input",
            lc.arts["root"],
            "--produced",
            lc.arts["f32"],
            "--chain",
            "urn:modelseal:other-release",
            "--key",
            lc.keys["ci"],
            "-o",
            other,
        ).code
        == 0
    )
    shutil.copyfile(other, atts / "1-convert.json")
    out = verify(run, lc, atts)
    assert out.code == 1
    assert problems(out)[0] == (
        "MSC009 1-convert.json: 'convert' attestation belongs to chain "
        f"urn:modelseal:other-release, not {CHAIN} (replayed from another chain)"
    )


def test_deployed_artifact_edited_after_last_attestation(
    lifecycle: Lifecycle, run: Run, tmp_path: Path
) -> None:
    lc = lifecycle
    edited = tmp_path / "deploy"
    shutil.copytree(lc.deployed, edited)
    model = edited / "model.gguf"
    before = build_manifest(edited).files[0].sha256
    data = bytearray(model.read_bytes())
    data[-100] ^= 0x40  # inside the last tensor's data
    model.write_bytes(bytes(data))
    after = build_manifest(edited).files[0].sha256
    out = verify(run, lc, lc.atts, deployed=edited)
    assert out.code == 1
    assert problems(out) == [
        f"MSC006 deployed artifact {digest(edited)} is not the output of any verified "
        "attestation: it was changed after the last attestation ('identical'): file "
        f"'model.gguf' modified (signed {before[:12]}.., now {after[:12]}..)"
    ]


def test_malicious_quantizer_caught_by_the_recheck(
    lifecycle: Lifecycle, run: Run, tmp_path: Path
) -> None:
    """The quantizer flips the codes of the 8 largest weights of one matrix and signs its
    step with the genuine CI key. ``modelseal attest`` refuses to sign that output; the
    attacker signs the statement through the library with the re-check bypassed, the later
    steps are attested honestly on top of it, and only verify-chain's re-check catches it."""
    lc = lifecycle
    q8 = {n: quantize(w, Q8_0) if n in lc.matrices else w for n, w in lc.pruned_weights.items()}
    q8[TAMPERED] = flip_largest_codes(q8[TAMPERED], lc.pruned_weights[TAMPERED], 8)
    bad_q8 = tmp_path / "q8_0"
    write_gguf(bad_q8 / "model.gguf", q8, lc.matrices)
    adapter = load_file(str(lc.adapter / "adapter_model.safetensors"))
    bad_merged, bad_deploy = tmp_path / "merged", tmp_path / "deploy"
    write_gguf(bad_merged / "model.gguf", merge_lora(q8, adapter, lc.matrices), lc.matrices)
    shutil.copytree(bad_merged, bad_deploy)

    atts = tmp_path / "atts"
    refused = run(
        "attest",
        "quantize",
        "--input",
        lc.arts["pruned"],
        "--produced",
        bad_q8,
        "--param",
        "type=q8_0",
        "--key",
        lc.keys["ci"],
        "-o",
        tmp_path / "no.json",
    )
    assert refused.code == 1 and not (tmp_path / "no.json").exists()
    assert refused.err == (
        "modelseal: error: refusing to attest 'quantize': claim fail: "
        f"gguf:type=q8_0 fails: 1 tensors violate it (e.g. {TAMPERED})\n"
    )

    attest_head(lc, atts)
    forged = attest_step(
        "quantize",
        [(build_manifest(lc.arts["pruned"]), "pruned")],
        (build_manifest(bad_q8), "q8_0"),
        KeySigner(load_private_key(lc.keys["ci"])),
        checker=lambda *_: CheckResult(CheckStatus.PASS, "gguf:type=q8_0 holds on 12 tensors"),
        parameters={"type": "q8_0"},
        parents=[load_attestation(atts / "2-prune.json")],
        tool_version="0.1.0",
    )
    (atts / "3-quantize.json").write_text(forged.bundle)
    attest_tail(lc, atts, bad_q8, bad_merged, bad_deploy)

    artifacts = lc.artifact_args(q8_0=bad_q8, merged=bad_merged)
    out = verify(run, lc, atts, deployed=bad_deploy, artifacts=artifacts)
    assert out.code == 1
    assert problems(out) == [
        "MSC010 3-quantize.json: 'quantize' claim does not hold: gguf:type=q8_0 fails: "
        f"1 tensors violate it (e.g. {TAMPERED})"
    ]
    # without the quantizer's output to re-derive from, the chain still fails closed
    withheld = lc.artifact_args(q8_0=None, merged=bad_merged)
    out = verify(run, lc, atts, deployed=bad_deploy, artifacts=withheld)
    assert out.code == 1
    assert problems(out) == [
        "MSC011 3-quantize.json: 'quantize' claim could not be re-checked: input or output "
        "artifact not supplied (--artifact)"
    ]


def test_deployed_copy_is_the_last_step_even_when_signed_in_the_same_instant(
    lifecycle: Lifecycle, run: Run, tmp_path: Path
) -> None:
    """The merge and its identical deployed copy share the output digest; with equal
    timestamps the parent link, not the clock, says which step is last."""
    lc = lifecycle
    atts = lc.copy_atts(tmp_path / "atts")
    when = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
    merged, deployed = build_manifest(lc.arts["merged"]), build_manifest(lc.deployed)
    merge = attest_step(
        "lora-merge",
        [(build_manifest(lc.arts["q8_0"]), "q8_0"), (build_manifest(lc.adapter), "adapter")],
        (merged, "merged"),
        KeySigner(load_private_key(lc.keys["trainer"])),
        checker=None,
        parameters={"rank": str(LORA_RANK), "alpha": str(LORA_ALPHA)},
        parents=[load_attestation(atts / "3-quantize.json")],
        started_at=when,
        clock=lambda: when,
    )
    deploy = attest_step(
        "identical",
        [(merged, "merged")],
        (deployed, "deploy"),
        KeySigner(load_private_key(lc.keys["release"])),
        checker=check_step,
        parents=[merge],
        started_at=when,
        clock=lambda: when,
    )
    (atts / "4-lora-merge.json").write_text(merge.bundle)
    (atts / "5-deploy.json").write_text(deploy.bundle)
    data = json.loads(verify(run, lc, atts, "--format", "json").out)
    assert data["passed"] is True, data["problems"]
    assert [s["source"] for s in data["steps"]][-2:] == ["4-lora-merge.json", "5-deploy.json"]
    assert data["notes"] == []
