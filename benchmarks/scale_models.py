"""Write llama-shaped safetensors models and their twins for the command benchmarks.

Used by ``bench_commands.py`` and ``bench_scale.py``. Tensors are written one at a time
through a reused buffer, so building a 20 GB model needs little memory. Twins of a model:

* ``identical``: a byte copy;
* ``block``: one 64x64 block of one middle tensor rewritten (in a copy of its shard;
  the other shards are hard links to the model's);
* ``cast``: every tensor cast to bf16 (fp16 model) or fp16 (bf16 model), round to nearest even;
* ``int8``: symmetric int8 per-channel codes plus a float32 ``<name>_scale`` per tensor.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

HIDDEN, FFN, VOCAB = 2048, 5632, 32000
BLOCK_TENSOR_LAYER = "mlp.up_proj"


def layer_shapes(i: int) -> list[tuple[str, tuple[int, ...]]]:
    d, kv = HIDDEN, HIDDEN // 4
    return [
        (f"model.layers.{i}.input_layernorm.weight", (d,)),
        (f"model.layers.{i}.self_attn.q_proj.weight", (d, d)),
        (f"model.layers.{i}.self_attn.k_proj.weight", (kv, d)),
        (f"model.layers.{i}.self_attn.v_proj.weight", (kv, d)),
        (f"model.layers.{i}.self_attn.o_proj.weight", (d, d)),
        (f"model.layers.{i}.mlp.gate_proj.weight", (FFN, d)),
        (f"model.layers.{i}.mlp.up_proj.weight", (FFN, d)),
        (f"model.layers.{i}.mlp.down_proj.weight", (d, FFN)),
    ]


def model_shapes(size_gb: float, itemsize: int = 2) -> list[tuple[str, tuple[int, ...]]]:
    """Embedding plus as many layers as fit in ``size_gb`` (decimal GB)."""
    shapes = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    per_layer = sum(int(np.prod(s)) for _, s in layer_shapes(0)) * itemsize
    total = VOCAB * HIDDEN * itemsize
    i = 0
    while total + per_layer <= size_gb * 1e9 or i == 0:
        shapes.extend(layer_shapes(i))
        total += per_layer
        i += 1
    shapes.append(("model.norm.weight", (HIDDEN,)))
    return shapes


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _values(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    if len(shape) == 1:
        return np.ones(shape, dtype=np.float32)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)


def _encode(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F16":
        return values.astype(np.float16)
    if dtype == "BF16":
        return bf16_bits(values)
    raise ValueError(dtype)


def _decode(data: np.ndarray, dtype: str) -> np.ndarray:
    return bf16_to_f32(data) if dtype == "BF16" else data.astype(np.float32)


class _ShardWriter:
    """Writes (name, dtype, shape, array) entries to safetensors shards of at most
    ``shard_bytes`` each, plus ``model.safetensors.index.json`` when there are several."""

    def __init__(self, folder: Path, plan: list[list[tuple[str, str, tuple[int, ...]]]]):
        self.folder = folder
        self.plan = plan

    def write(self, arrays: Iterator[np.ndarray]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        n = len(self.plan)
        weight_map: dict[str, str] = {}
        total = 0
        for k, shard in enumerate(self.plan):
            fname = "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            header: dict[str, object] = {}
            offset = 0
            for name, dtype, shape in shard:
                nbytes = int(np.prod(shape)) * _ITEMSIZE[dtype]
                header[name] = {
                    "dtype": dtype,
                    "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes],
                }
                offset += nbytes
                weight_map[name] = fname
            total += offset
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            with open(self.folder / fname, "wb") as out:
                out.write(struct.pack("<Q", len(raw)) + raw)
                for name, dtype, shape in shard:
                    data = next(arrays)
                    assert data.shape == shape and data.itemsize == _ITEMSIZE[dtype], name
                    out.write(memoryview(np.ascontiguousarray(data)).cast("B"))
        if n > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (self.folder / "config.json").write_text(
            json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN}) + "\n"
        )


_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "I8": 1}


def _plan(
    entries: list[tuple[str, str, tuple[int, ...]]], shards: int
) -> list[list[tuple[str, str, tuple[int, ...]]]]:
    total = sum(int(np.prod(s)) * _ITEMSIZE[d] for _, d, s in entries)
    per = total / max(1, shards)
    plan: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
    size = 0
    for e in entries:
        nbytes = int(np.prod(e[2])) * _ITEMSIZE[e[1]]
        if plan[-1] and size + nbytes > per * len(plan) and len(plan) < shards:
            plan.append([])
        plan[-1].append(e)
        size += nbytes
    return plan


def write_model(folder: Path, size_gb: float, dtype: str = "F16", shards: int = 1) -> list:
    """The base model; returns its (name, shape) list."""
    shapes = model_shapes(size_gb)
    plan = _plan([(n, dtype, s) for n, s in shapes], shards)
    _ShardWriter(folder, plan).write(_encode(_values(n, s, 0), dtype) for n, s in shapes)
    return shapes


def block_tensor(shapes: list) -> str:
    names = [n for n, _ in shapes if BLOCK_TENSOR_LAYER in n]
    return names[len(names) // 2]


def write_twin(base: Path, folder: Path, kind: str, size_gb: float, dtype: str, shards: int):
    """A twin of the model ``write_model(base, size_gb, dtype, shards)`` wrote."""
    shapes = model_shapes(size_gb)
    if kind == "identical":
        shutil.copytree(base, folder, dirs_exist_ok=True)
        return
    if kind == "block":
        target = block_tensor(shapes)
        index = base / "model.safetensors.index.json"
        fname = (
            json.loads(index.read_text())["weight_map"][target]
            if index.exists()
            else "model.safetensors"
        )
        # The shard that changes is copied; the others are hard links to the base's
        # (the same bytes, without a second copy of a 20 GB model on disk).
        folder.mkdir(parents=True, exist_ok=True)
        for src in base.iterdir():
            dst = folder / src.name
            dst.unlink(missing_ok=True)
            if src.name == fname:
                shutil.copyfile(src, dst)
            else:
                dst.hardlink_to(src)
        with open(folder / fname, "r+b") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(hlen))
            start = 8 + hlen + header[target]["data_offsets"][0]
            cols = header[target]["shape"][1]
            rng = np.random.default_rng(7)
            for r in range(100, 164):
                f.seek(start + (r * cols + 200) * 2)
                row = rng.standard_normal(64).astype(np.float32) * np.float32(0.05)
                f.write(_encode(row, dtype).tobytes())
        return
    if kind == "cast":
        target_dtype = "BF16" if dtype == "F16" else "F16"
        plan = _plan([(n, target_dtype, s) for n, s in shapes], shards)
        _ShardWriter(folder, plan).write(
            _encode(_decode(_encode(_values(n, s, 0), dtype), dtype), target_dtype)
            for n, s in shapes
        )
        return
    if kind == "int8":
        entries: list[tuple[str, str, tuple[int, ...]]] = []
        for n, s in shapes:
            if len(s) == 2:
                entries += [
                    (n, "I8", s),
                    (n.removesuffix(".weight") + ".weight_scale", "F32", s[:1]),
                ]
            else:
                entries.append((n, dtype, s))

        def arrays() -> Iterator[np.ndarray]:
            for n, s in shapes:
                w = _decode(_encode(_values(n, s, 0), dtype), dtype)
                if len(s) != 2:
                    yield _encode(w, dtype)
                    continue
                scale = (np.abs(w).max(axis=1) / 127.0).astype(np.float32)
                yield np.clip(np.rint(w / scale[:, None]), -128, 127).astype(np.int8)
                yield scale

        _ShardWriter(folder, _plan(entries, shards)).write(arrays())
        return
    raise ValueError(kind)


def write_signing_key(folder: Path) -> None:
    """``key.pem`` / ``pub.pem``: a P-256 key pair for the sign and verify commands."""
    subprocess.run(
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "key.pem"],
        cwd=folder,
        check=True,
    )
    subprocess.run(
        ["openssl", "ec", "-in", "key.pem", "-pubout", "-out", "pub.pem"],
        cwd=folder,
        check=True,
        capture_output=True,
    )
