"""Time the structural graph diff on two ~2,000-node models.

Builds a 2,000-node residual MLP-like ONNX graph, its reordered-and-renamed twin with a
planted branch, and times canonicalization plus matching. Run: python benchmarks/bench_graph.py
"""

from __future__ import annotations

import time

import numpy as np
import onnx
from onnx import helper, numpy_helper

from scanner.graph.canonical import canonicalize
from scanner.graph.diff import diff_graphs
from scanner.redteam.graph import rename_nodes, reorder_nodes


def build(blocks: int = 500, width: int = 16) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "x"
    for b in range(blocks):  # 4 nodes per block: MatMul, Add, Relu, Add (residual)
        w, c = f"w{b}", f"c{b}"
        inits += [
            numpy_helper.from_array(
                rng.standard_normal((width, width)).astype(np.float32) * 0.05, w
            ),
            numpy_helper.from_array(np.zeros(width, np.float32), c),
        ]
        nodes += [
            helper.make_node("MatMul", [x, w], [f"m{b}"], name=f"/l{b}/MatMul"),
            helper.make_node("Add", [f"m{b}", c], [f"a{b}"], name=f"/l{b}/Add"),
            helper.make_node("Relu", [f"a{b}"], [f"r{b}"], name=f"/l{b}/Relu"),
            helper.make_node("Add", [x, f"r{b}"], [f"y{b}"], name=f"/l{b}/Res"),
        ]
        x = f"y{b}"
    g = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [1, width])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def main() -> None:
    a = build()
    b = rename_nodes(reorder_nodes(a, seed=1), seed=2)
    started = time.perf_counter()
    ga, gb = canonicalize(a), canonicalize(b)
    mid = time.perf_counter()
    gd = diff_graphs(ga, gb)
    end = time.perf_counter()
    print(
        f"nodes: {len(a.graph.node)} vs {len(b.graph.node)}; matched {gd.n_matched}; "
        f"regions {len(gd.regions)}"
    )
    print(
        f"canonicalize both: {mid - started:.3f}s, diff: {end - mid:.3f}s, "
        f"total {end - started:.3f}s"
    )


if __name__ == "__main__":
    main()
