"""Planters of the benign twins: casts, pruning, LoRA merges, fine-tunes, onnxruntime
optimization, renames."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scanner.redteam import _fallback as fb
from scanner.redteam.io import ModelCopy
from scanner.redteam.plan import Context, NotApplicableError, Plan, Planter, _matrices

# --------------------------------------------------------------------- benign twins


def _cast(target: str) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        import ml_dtypes

        if copy.format != "safetensors":
            raise NotApplicableError("casts are written for safetensors models")
        dt = np.float16 if target == "fp16" else ml_dtypes.bfloat16
        names = [n for n in copy.float_names() if copy.dtype(n) == "F32"]
        return Plan(
            {n: copy.weight(n).astype(dt) for n in names},
            claim=f"cast:{target}",
            details={"cast": names, "target": target},
        )

    return run


def _prune(method: str) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        from scanner.redteam.weights import magnitude_prune, nm_prune

        names = _matrices(copy, multiple=4 if method == "2:4" else 1, two_d=method == "2:4")
        if not names:
            raise NotApplicableError(f"{copy.path}: no matrix to prune")
        base = copy.weights(names)
        if method == "magnitude":
            out, _ = magnitude_prune(base, names, sparsity=ctx.strength)
            claim = "prune:magnitude"
        elif method == "2:4":
            out, _ = nm_prune(base, names, 2, 4)
            claim = "prune:2:4"
        else:
            # Tensors with channels that are already all zero (a fixed STFT basis, dead
            # filters) are left alone: the channel criterion of the claim checker ranks
            # them as kept channels of norm 0, so pruning next to them never verifies.
            dead = [
                n for n in names if (base[n].reshape(base[n].shape[0], -1) == 0).all(axis=1).any()
            ]
            names = [n for n in names if n not in dead]
            if not names:
                raise NotApplicableError(f"{copy.path}: every matrix has dead channels")
            out = fb.channel_prune(base, names, ctx.strength)
            claim = "prune:channel"
        return Plan(
            {n: out[n] for n in names},
            claim=claim,
            details={"method": method, "tensors": names, "strength": ctx.strength},
        )

    return run


LORA_WIDTH = 4
"""Both sides of a matrix a LoRA twin adapts are at least this many times its rank."""


def _lora(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.analysis.explain import sibling_groups
    from scanner.redteam.weights import lora_merge

    rank = int(ctx.param("rank", "8") or 8)
    # Adapters target projections far wider than their rank: a rank-8 update of a matrix
    # with 8 or 9 rows or columns (a depthwise or narrow 1x1 conv) is a full-rank change,
    # no low-rank update to tell from a fine-tune.
    mats = [
        n
        for n in _matrices(copy)
        if min(copy.shape(n)[0], int(np.prod(copy.shape(n)[1:]))) >= LORA_WIDTH * rank
    ]
    if not mats:
        raise NotApplicableError(f"{copy.path}: no matrix {LORA_WIDTH}x wider than rank {rank}")
    rng = ctx.rng()
    # An adapter targets module types (q_proj, v_proj ...) in every layer: pick whole
    # sibling groups (same name up to layer numbers, same shape) until about a third of
    # the matrices are covered, groups that repeat across layers first.
    groups = sibling_groups({n: tuple(copy.shape(n)) for n in mats})
    unique = {tuple(sorted(g)) for g in groups.values()}
    repeated = [g for g in unique if len(g) >= 2] or list(unique)
    order = rng.permutation(len(repeated))
    names_set: set[str] = set()
    for i in order:
        names_set.update(repeated[int(i)])
        if len(names_set) >= max(1, len(mats) // 3):
            break
    names = sorted(names_set)
    out, _ = lora_merge(copy.weights(names), names, ctx.seed, rank=rank, rel=ctx.strength)
    # A pipeline that merges an adapter declares it: allowing the class suffices where the
    # module set repeats across layers; a model without repeated layers cannot show an
    # adapter's consistency, so the merge is claimed (the claim checks rank and modules).
    layered = any(len(g) >= 2 for g in unique)
    claim = None if layered else f"lora:r={rank}:modules={','.join(names)}"
    return Plan(
        {n: out[n] for n in names},
        claim=claim,
        allow=("low-rank update",),
        details={"tensors": names, "rank": rank, "rel": ctx.strength},
    )


PARAMETER_MIN_ELEMENTS = 24
"""A 1-D float tensor needs at least this many elements to count as a trained parameter
(a bias or normalization vector); smaller ones are Clip bounds, activation constants,
scales of a formula, which no training run changes."""


def _parameters(copy: ModelCopy) -> list[str]:
    """Float tensors a training run updates: matrices and kernels (at least two axes) and
    vectors of at least ``PARAMETER_MIN_ELEMENTS`` elements. Benign training twins touch
    only these, never scalar or tiny structural constants."""
    out = []
    for n in copy.float_names():
        shape = copy.shape(n)
        if copy.dtype(n) not in ("F32", "F16", "BF16"):
            continue
        if len(shape) >= 2 or int(np.prod(shape)) >= PARAMETER_MIN_ELEMENTS:
            out.append(n)
    return out


def _keep_positive(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Training keeps an all-positive tensor positive (running variances are means of
    squares): an additive stand-in delta must not flip the sign of a small element."""
    if before.size == 0 or not bool(np.all(before > 0)):
        return after
    return np.maximum(after, (before * 0.5).astype(after.dtype))


def _finetune(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import simulate_finetune

    names = _parameters(copy)
    if not names:
        raise NotApplicableError(f"{copy.path}: no trainable parameter tensor")
    base = copy.weights(names)
    out, _ = simulate_finetune(base, ctx.seed, rel=ctx.strength, tensors=names)
    return Plan(
        {n: _keep_positive(base[n], out[n]) for n in names},
        allow=("full fine-tune",),
        details={"rel": ctx.strength, "tensors": len(names)},
    )


def _ort(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.graph import ort_optimize

    level = ctx.param("level", "basic") or "basic"
    return Plan(onnx_model=ort_optimize(copy.onnx_model(), level), details={"level": level})


def _rename(copy: ModelCopy, ctx: Context) -> Plan:
    if copy.format == "onnx":
        from scanner.redteam.graph import rename_nodes

        return Plan(
            onnx_model=rename_nodes(copy.onnx_model(), seed=ctx.seed),
            details={"renamed": "nodes and initializers"},
        )
    if copy.format != "safetensors":
        raise NotApplicableError("renaming is written for ONNX and safetensors")
    mapping = fb.rename_map(list(copy.artifact.tensors), ctx.seed)

    def write(out: Path, marker: str | None) -> Mapping[str, Any]:
        from safetensors.numpy import save_file

        from scanner.redteam.io import MARKER_KEY

        tensors = {mapping[n]: np.array(copy.artifact.array(n)) for n in copy.artifact.tensors}
        meta = {
            str(k): str(v) for k, v in (copy.artifact.metadata.get("safetensors") or {}).items()
        }
        if marker is not None:
            meta[MARKER_KEY] = marker
        save_file(tensors, str(out), metadata=meta or None)
        return {}

    return Plan(writer=write, details={"renamed": mapping})
