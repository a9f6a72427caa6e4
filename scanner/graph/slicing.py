"""One form for taking parts of a tensor: ``Split``, ``Gather`` of one index and ``Slice``.

Exporters and optimizers express "take channels 0..128 and 129..257" as two Slices, as a
Split (ONNX Runtime's ``GatherSliceToSplitFusion``, PyTorch's ``unsafe_split``), or as a
Gather of one index followed by nothing (a squeezed Slice). Every form is rewritten into
Slices with constant bounds, positive axes and, where the axis length is known, bounds
inside ``[0, length]`` with "to the end" written as ``INT64_MAX``:

* ``Split(x, sizes, axis)`` output ``k`` is ``x[off_k : off_k + sizes[k]]`` along ``axis``.
  The sizes of a valid Split add up to the axis length, so the last part runs to the end
  whatever the length; without sizes (equal parts, ``num_outputs``) the length must be
  known statically.
* ``Gather(x, i, axis)`` with a constant scalar ``i`` is ``Squeeze(x[i : i + 1], axis)``
  (``i = -1`` runs to the end); a one-element 1-D index keeps the axis (no Squeeze).
* ``Slice`` bounds: a negative axis becomes positive when the rank is known; with a known
  axis length and a positive step, negative bounds are counted from the end and bounds
  past the end are clamped, as the operator itself does.

Each rewrite is the operator's own definition, so it holds for every input on which the
original runs.
"""

from __future__ import annotations

import numpy as np

from scanner.graph.canonical import Node
from scanner.graph.rewrites import _INT64_MAX, _Editor, _set_slice, _slice_params


def _axis_length(ed: _Editor, tensor: str, axis: int) -> tuple[int | None, int | None]:
    """``(positive axis, static length)`` of ``tensor`` along ``axis`` (``None`` unknown)."""
    shape = ed.shapes.shape(tensor)
    if axis < 0:
        if shape is None:
            return None, None
        axis += len(shape)
    if shape is None or not 0 <= axis < len(shape):
        return (axis if axis >= 0 else None), None
    return axis, shape[axis]


def _slice_node(
    ed: _Editor,
    like: Node,
    x: str,
    params: list[tuple[int, int, int, int]],
    out: str,
    sources: tuple[str, ...],
    suffix: str,
) -> Node:
    n = ed.node(like, "Slice", [x], [out], {}, suffix)
    _set_slice(ed, n, params, sources)
    return n


def split_to_slices(ed: _Editor) -> None:
    g = ed.g
    for n in list(g.nodes.values()):
        if n.op != "Split" or n.id not in g.nodes or not n.inputs:
            continue
        x = n.inputs[0]
        axis, length = _axis_length(ed, x, int(n.attrs.get("axis", 0)))
        if axis is None:
            continue
        k = len(n.outputs)
        sizes_t = n.inputs[1] if len(n.inputs) > 1 else ""
        if sizes_t:
            v = ed.cval(sizes_t)
            if v is None:
                continue
            sizes = [int(s) for s in np.ravel(v)]
            if len(sizes) != k or min(sizes, default=0) < 0:
                continue
            if length is not None and sum(sizes) != length:
                continue  # an invalid Split: it fails at run time, leave it as it is
        else:
            if length is None or int(n.attrs.get("num_outputs", k)) != k:
                continue
            chunk = -(-length // k)
            sizes = [chunk] * (k - 1) + [length - chunk * (k - 1)]
            if sizes[-1] < 0:
                continue
        start = 0
        src = ed.csrc(sizes_t) if sizes_t else ()
        for i, (out, size) in enumerate(zip(n.outputs, sizes, strict=True)):
            end = start + size
            if out:
                stop = _INT64_MAX if i == k - 1 else end
                _slice_node(ed, n, x, [(axis, start, stop, 1)], out, src, f"/part{i}")
            start = end
        if sizes_t:
            g.absorbed.update(src)
        ed.remove(n)
        ed.counts["Split as Slices"] += 1
    g.index()


def gather_to_slice(ed: _Editor) -> None:
    g = ed.g
    for n in list(g.nodes.values()):
        if n.op != "Gather" or len(n.inputs) != 2 or n.inputs[0] in g.consts:
            continue
        idx = ed.cval(n.inputs[1])
        if idx is None or idx.dtype.kind not in "iu" or idx.size != 1 or idx.ndim > 1:
            continue
        axis, _length = _axis_length(ed, n.inputs[0], int(n.attrs.get("axis", 0)))
        if axis is None:
            continue
        i = int(idx.ravel()[0])
        stop = _INT64_MAX if i == -1 else i + 1
        src = ed.csrc(n.inputs[1])
        if idx.ndim == 1:
            _slice_node(ed, n, n.inputs[0], [(axis, i, stop, 1)], n.outputs[0], src, "/slice")
        else:
            part = ed.fresh(n.scope, "Slice")
            _slice_node(ed, n, n.inputs[0], [(axis, i, stop, 1)], part, src, "/slice")
            axes = ed.const(n.scope, np.asarray([axis], dtype=np.int64), src, "gather-axis")
            ed.node(n, "Squeeze", [part, axes], [n.outputs[0]], {}, "/squeeze")
        ed.remove(n)
        ed.counts["Gather of one index as Slice"] += 1
    g.index()


def normalize_slice_bounds(ed: _Editor) -> None:
    """Positive axes, and bounds inside the axis where its length is known."""
    g = ed.g
    for n in list(g.nodes.values()):
        if n.op != "Slice" or n.id not in g.nodes:
            continue
        params = _slice_params(ed, n)
        if params is None:
            continue
        out: list[tuple[int, int, int, int]] = []
        for a, s, e, step in params:
            axis, length = _axis_length(ed, n.inputs[0], a)
            if axis is None:
                out = []
                break
            if length is not None and step > 0:
                s = min(max(s + length if s < 0 else s, 0), length)
                e = e + length if e < 0 else e
                e = _INT64_MAX if e >= length else max(e, 0)
            out.append((axis, s, e, step))
        if out and (sorted(out) != params or len(n.inputs) != 5):
            _set_slice(ed, n, out, ed.csrc(*n.inputs[1:]))
            ed.counts["Slice bounds in one form"] += 1
