"""The OMS "shards" serialization: byte-compatible with model_signing's, verifiable from
its signatures, and covering empty files, which the reference leaves out."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import mmap
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format
from model_signing import hashing as ms_hashing
from model_signing import signing as ms_signing
from model_signing._signing.signing import Payload
from safetensors.numpy import save_file

from scanner.cli.main import main
from scanner.cli.sign import byte_size
from signing._hashing import ByteRange, hash_ranges
from signing.errors import SigningError, VerificationError
from signing.keys import KeyType, load_public_key
from signing.model_signature import ModelMismatchError, verify_model
from signing.oms import OmsManifest, Shard, compare, hash_model, shard_ranges
from signing.verifiers import PublicKeyVerifier

SHARD = 65_536
"""weights.bin (300,000 bytes) is 5 shards of this size, the last one shorter."""


def _reference(path: Path, shard_size: int) -> dict:
    config = ms_hashing.Config().use_shard_serialization(shard_size=shard_size)
    config.set_ignored_paths(paths=[], ignore_git_paths=True)
    return json_format.MessageToDict(Payload(config.hash(path)).statement.pb)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# --- the statement matches model_signing's -------------------------------------------


@pytest.mark.parametrize("shard_size", [1024, 7000, SHARD])
@pytest.mark.parametrize("single_file", [False, True], ids=["folder", "single-file"])
def test_statement_matches_model_signing(model_dir: Path, shard_size, single_file) -> None:
    target = model_dir / "weights.bin" if single_file else model_dir
    assert (model_dir / "weights.bin").stat().st_size % shard_size != 0
    ref = _reference(target, shard_size)
    ours = hash_model(target, shard_size=shard_size, workers=2).to_statement()
    assert ours["subject"] == ref["subject"]
    assert ours["predicate"]["resources"] == ref["predicate"]["resources"]
    ref_ser, our_ser = ref["predicate"]["serialization"], ours["predicate"]["serialization"]
    assert our_ser["method"] == ref_ser["method"] == "shards"
    assert our_ser["shard_size"] == ref_ser["shard_size"] == shard_size  # ref: a float
    assert isinstance(our_ser["shard_size"], int)
    assert set(our_ser.get("ignore_paths", [])) == set(ref_ser.get("ignore_paths", []))
    names = [r["name"] for r in ours["predicate"]["resources"]]
    if single_file:
        assert names[0] == f".:0:{shard_size}"
    # offsets in numeric order, and the last shard shorter
    weights = [n for n in names if n.startswith(("weights.bin:", ".:"))]
    starts = [Shard.parse(n).start for n in weights]
    assert starts == sorted(starts) and Shard.parse(weights[-1]).end == 300_000


def test_reference_statement_parses_with_integral_float_shard_size(model_dir: Path) -> None:
    ref = _reference(model_dir, 1024)
    assert ref["predicate"]["serialization"]["shard_size"] == 1024.0
    parsed = OmsManifest.from_statement(ref)
    assert parsed.shard_size == 1024 and isinstance(parsed.shard_size, int)
    assert parsed.root_digest == hash_model(model_dir, shard_size=1024).root_digest
    assert parsed.files() == ("a/b", "a-c", "weights.bin")


@pytest.mark.parametrize("bad", [1024.5, 0, -1024, "1024", True, None])
def test_bad_shard_size_in_statement_is_refused(model_dir: Path, bad) -> None:
    statement = hash_model(model_dir, shard_size=1024).to_statement()
    statement["predicate"]["serialization"]["shard_size"] = bad
    with pytest.raises(VerificationError, match="shard size"):
        OmsManifest.from_statement(statement)


@pytest.mark.parametrize(
    ("name", "algorithm"),
    [
        ("a-c:00:1000", "sha256-sharded-1024"),  # two spellings of one range
        ("a-c:1000:0", "sha256-sharded-1024"),
        ("a-c", "sha256-sharded-1024"),
        ("a-c:0:1000", "sha256"),
    ],
)
def test_malformed_shard_resources_are_refused(model_dir: Path, name, algorithm) -> None:
    statement = hash_model(model_dir, shard_size=1024).to_statement()
    resource = next(r for r in statement["predicate"]["resources"] if r["name"].startswith("a-c:"))
    resource["name"], resource["algorithm"] = name, algorithm
    with pytest.raises(VerificationError):
        OmsManifest.from_statement(statement)


def test_empty_files_are_recorded_as_zero_length_shards(model_dir: Path) -> None:
    (model_dir / "empty").write_bytes(b"")
    manifest = hash_model(model_dir, shard_size=1024)
    assert manifest.digests()["empty:0:0"] == (
        "sha256-sharded-1024:" + hashlib.sha256(b"").hexdigest()
    )
    assert shard_ranges(0, 1024) == [(0, 0)]
    assert shard_ranges(2048, 1024) == [(0, 1024), (1024, 2048)]


def test_methods_do_not_mix(model_dir: Path) -> None:
    with pytest.raises(VerificationError, match="cannot compare"):
        compare(hash_model(model_dir), hash_model(model_dir, shard_size=1024))
    with pytest.raises(SigningError, match="positive"):
        hash_model(model_dir, shard_size=0)


# --- parallel range hashing ----------------------------------------------------------


def test_ranges_crossing_windows_give_the_serial_digest(tmp_path: Path) -> None:
    window = 2 * mmap.ALLOCATIONGRANULARITY
    data = np.random.default_rng(3).bytes(5 * window + 777)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    spans = [(0, 0), (0, 10), (window - 5, window + 5), (1, 3 * window + 1), (0, len(data))]
    spans += [(s, min(s + 12_345, len(data))) for s in range(0, len(data), 12_345)]
    seen: list[int] = []

    class Progress:
        def start(self, total: int, description: str) -> None:
            seen.append(-total)

        def advance(self, n: int) -> None:
            seen.append(n)

        def finish(self) -> None:
            seen.append(0)

    ranges = [ByteRange(path, s, e) for s, e in spans]
    for workers in (1, 2):
        seen.clear()
        got = hash_ranges(ranges, workers=workers, progress=Progress(), window=window)
        assert got == [hashlib.sha256(data[s:e]).hexdigest() for s, e in spans]
        assert sum(seen[1:-1]) == -seen[0] == sum(e - s for s, e in spans)
        assert seen[-1] == 0


# --- signatures made by model_signing -------------------------------------------------


def _ms_sign(model: Path, priv: Path, sig: Path, shard_size: int = SHARD) -> None:
    hashing_config = ms_hashing.Config().use_shard_serialization(shard_size=shard_size)
    ms_signing.Config().use_elliptic_key_signer(private_key=priv).set_hashing_config(
        hashing_config
    ).sign(model, sig)


def test_model_signing_shard_signature_verifies(model_dir, key_files, tmp_path, capsys):
    priv, pub = key_files(KeyType.ECDSA_P256)
    sig = tmp_path / "ms.sig"
    _ms_sign(model_dir, priv, sig)
    verifier = PublicKeyVerifier(load_public_key(pub))
    result = verify_model(model_dir, sig.read_text(), verifier)
    assert result.manifest.shard_size == SHARD
    cli = ["verify", str(model_dir), "--signature", str(sig), "--public-key", str(pub)]
    assert main([*cli, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == 3

    _flip(model_dir / "weights.bin", SHARD + 5)  # second shard
    with pytest.raises(ModelMismatchError) as info:
        verify_model(model_dir, sig.read_text(), verifier)
    assert [d.describe().split(" (")[0] for d in info.value.discrepancies] == [
        f"file 'weights.bin' bytes {SHARD}-{2 * SHARD} modified"
    ]
    assert main(cli) == 1
    assert f"file 'weights.bin' bytes {SHARD}-{2 * SHARD} modified" in capsys.readouterr().err


def test_model_signing_shard_signature_misses_empty_files(model_dir, key_files, tmp_path):
    priv, pub = key_files(KeyType.ECDSA_P256)
    (model_dir / "empty.txt").write_bytes(b"")
    sig = tmp_path / "ms.sig"
    _ms_sign(model_dir, priv, sig)
    names = [r["name"] for r in _reference(model_dir, SHARD)["predicate"]["resources"]]
    assert not any(n.startswith("empty.txt") for n in names)  # the reference's gap
    with pytest.raises(ModelMismatchError, match=r"file 'empty.txt' added \(.*model_signing 1.1"):
        verify_model(model_dir, sig.read_text(), PublicKeyVerifier(load_public_key(pub)))


# --- modelseal sign --shard-size -----------------------------------------------------


def _cli(tmp_path: Path, key_files) -> tuple[list[str], list[str], Path]:
    priv, pub = key_files(KeyType.ECDSA_P256)
    sig = tmp_path / "model.sig"
    return (
        ["--key", str(priv), "-o", str(sig)],
        ["--signature", str(sig), "--public-key", str(pub)],
        sig,
    )


def test_sign_verify_single_file_names_file_and_range(model_dir, tmp_path, key_files, capsys):
    sign, verify, sig = _cli(tmp_path, key_files)
    model = model_dir / "weights.bin"
    assert main(["sign", str(model), *sign, "--shard-size", "64K"]) == 0
    assert "1 file 'weights.bin' as 5 shards of 64 KiB" in capsys.readouterr().err
    payload = json.loads(sig.read_text())["dsseEnvelope"]["payload"]
    statement = json.loads(base64.b64decode(payload))
    assert statement["predicate"]["serialization"]["shard_size"] == SHARD
    assert main(["verify", str(model), *verify]) == 0
    assert "as 5 shards" in capsys.readouterr().out
    _flip(model, 3 * SHARD)
    assert main(["verify", str(model), *verify]) == 1
    err = capsys.readouterr().err
    assert f"file 'weights.bin' bytes {3 * SHARD}-{4 * SHARD} modified" in err
    assert "'.'" not in err
    model.write_bytes(model.read_bytes() + b"x")
    assert main(["verify", str(model), *verify]) == 1
    err = capsys.readouterr().err
    assert "file 'weights.bin' modified (signed 300000 bytes, now 300001)" in err


def test_empty_files_are_covered(model_dir, tmp_path, key_files, capsys) -> None:
    sign, verify, _ = _cli(tmp_path, key_files)
    (model_dir / "empty").write_bytes(b"")
    assert main(["sign", str(model_dir), *sign, "--shard-size", "1M"]) == 0
    assert main(["verify", str(model_dir), *verify]) == 0
    (model_dir / "later").write_bytes(b"")
    assert main(["verify", str(model_dir), *verify]) == 1
    err = capsys.readouterr().err
    # this signature records an empty file, so it is no model_signing 1.1 one
    assert "file 'later' added (not in the signature)" in err and "model_signing" not in err
    (model_dir / "later").unlink()
    (model_dir / "empty").unlink()
    assert main(["verify", str(model_dir), *verify]) == 1
    assert "file 'empty' missing" in capsys.readouterr().err


def test_shard_signature_names_the_tensor(tmp_path, key_files, capsys) -> None:
    model = tmp_path / "m"
    model.mkdir()
    rng = np.random.default_rng(0)
    tensors = {
        "layer.0.weight": rng.standard_normal((64, 64)).astype(np.float32),
        "layer.1.weight": rng.standard_normal((64, 64)).astype(np.float32),
    }
    save_file(tensors, str(model / "model.safetensors"))
    sign, verify, _ = _cli(tmp_path, key_files)
    assert main(["sign", str(model), *sign, "--tensors", "--shard-size", "4096"]) == 0
    size = (model / "model.safetensors").stat().st_size
    _flip(model / "model.safetensors", size - 3)
    capsys.readouterr()
    assert main(["verify", str(model), *verify]) == 1
    err = capsys.readouterr().err
    last = (size - 1) // 4096 * 4096
    assert f"file 'model.safetensors' bytes {last}-{size} modified" in err
    assert "tensor 'layer.1.weight' modified" in err and "layer.0.weight" not in err


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5G", "12Q", ""])
def test_bad_shard_size_exits_2_before_hashing(
    model_dir, tmp_path, key_files, run_cli, monkeypatch, value
) -> None:
    import signing.oms

    hashed: list[object] = []
    monkeypatch.setattr(signing.oms, "hash_files", lambda *a, **k: hashed.append(a))
    monkeypatch.setattr(signing.oms, "hash_ranges", lambda *a, **k: hashed.append(a))
    sign, _, sig = _cli(tmp_path, key_files)
    result = run_cli("sign", model_dir, *sign, "--shard-size", value)
    assert result.code == 2
    assert "argument --shard-size: " in result.err
    assert hashed == [] and not sig.exists()


def test_shard_size_units() -> None:
    assert byte_size("4096") == 4096
    assert byte_size("64K") == byte_size("64KiB") == 64 << 10
    assert byte_size("256M") == byte_size("256mb") == 256 << 20
    assert byte_size("1G") == 1 << 30


def test_statement_copy_round_trips(model_dir: Path) -> None:
    manifest = hash_model(model_dir, shard_size=7000)
    again = OmsManifest.from_statement(copy.deepcopy(manifest.to_statement()))
    assert again == manifest and compare(manifest, again) == ()
