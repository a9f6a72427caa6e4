"""Tampered twins of real deployed files, edited in the file's own storage (float
initializers, int8 codes, state dicts, safetensors), written here independently of the
scanner's readers and planters, and the CLI run the way a user runs it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from scanner.cli.main import main

Edit = Callable[[np.ndarray], None]
BLOCKING = ("medium", "high", "critical")


def diff(trusted: Path, deployed: Path, out: Path, *claims: str) -> tuple[int, dict[str, Any]]:
    """``modelseal diff TRUSTED DEPLOYED --format json [--claim C ...]``: exit code and
    the JSON report."""
    args = ["diff", str(trusted), str(deployed), "--format", "json", "-o", str(out), "-q"]
    for c in claims:
        args += ["--claim", c]
    code = main(args)
    return code, json.loads(out.read_text())


def blocking(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(rule, message) of every finding that fails the default policy."""
    return [
        (f["rule_id"], f["message"][:200]) for f in report["findings"] if f["severity"] in BLOCKING
    ]


def blamed(report: dict[str, Any]) -> dict[str, set[int]]:
    """Tensor -> indices (rows, channels, blocks) named by the blocking findings."""
    out: dict[str, set[int]] = {}
    for f in report["findings"]:
        if f["severity"] not in BLOCKING:
            continue
        for loc in f.get("locations") or []:
            if loc.get("tensor"):
                region = loc.get("region") or {}
                out.setdefault(loc["tensor"], set()).update(region.get("indices") or [])
    return out


def onnx_initializer(src: Path, dst: Path, name: str, edit: Edit) -> np.ndarray:
    """Copy an ONNX file with one stored tensor (an initializer or a Constant node's
    value, in subgraphs too) edited in place; returns the edited array."""
    import onnx
    from onnx import numpy_helper

    def stored(graph: onnx.GraphProto) -> Iterator[tuple[str, onnx.TensorProto]]:
        yield from ((t.name, t) for t in graph.initializer)
        for node in graph.node:
            for a in node.attribute:
                if node.op_type == "Constant" and a.name == "value":
                    yield node.output[0], a.t
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from stored(a.g)

    model = onnx.load(str(src))
    for key, t in stored(model.graph):
        if key == name:
            arr = numpy_helper.to_array(t).copy()
            edit(arr)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
            onnx.save(model, str(dst))
            return arr
    raise KeyError(f"{src.name} stores no tensor {name!r}")


def safetensors_tensor(src: Path, dst: Path, name: str, edit: Edit) -> np.ndarray:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(src))
    arr = tensors[name].copy()
    edit(arr)
    tensors[name] = arr
    save_file(tensors, str(dst))
    return arr


def torch_tensor(src: Path, dst: Path, path: tuple[str, ...], edit: Edit) -> np.ndarray:
    """Copy a ``torch.save`` file with the tensor at ``path`` (keys into nested dicts)
    edited, every other object kept as loaded."""
    import torch

    obj = torch.load(src, map_location="cpu", weights_only=False)
    holder = obj
    for key in path[:-1]:
        holder = holder[key]
    t = holder[path[-1]]
    arr = t.float().numpy().copy()
    edit(arr)
    holder[path[-1]] = torch.from_numpy(arr).to(t.dtype)
    torch.save(obj, dst)
    return arr


def shift_row(row: int, size: float) -> Edit:
    """Add ``size`` times the tensor's largest |w| to every element of one row (axis 0)."""

    def edit(a: np.ndarray) -> None:
        a[row] = a[row] + size * float(np.abs(a).max())

    return edit


def codes_up(index: tuple[int | slice, ...]) -> Edit:
    """Raise the integer codes at ``index`` by one step (down where at the top)."""

    def edit(a: np.ndarray) -> None:
        top = np.iinfo(a.dtype).max
        v = a[index].astype(np.int64)
        a[index] = np.where(v < top, v + 1, v - 1).astype(a.dtype)

    return edit
