"""``quantize``: integer weights with stored scales and zero points (safetensors, ONNX).

For every quantized weight found in the deployed artifact (:mod:`scanner.claims.layouts`)
the trusted float tensor is located, the scale and zero point are checked against the
trusted tensor's range for the claimed scheme, and every code is compared with
``clip(round(w / scale) + zero_point)`` (round half to even, as numpy and onnxruntime do).
Round-to-nearest claims must match code for code; GPTQ/AWQ-style claims must stay within
one step of the nearest code, and the fraction of non-nearest codes is reported.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from scanner.artifact import Artifact
from scanner.claims.base import (
    MAX_REPORTED,
    ClaimOutcome,
    CodeStats,
    TensorVerdict,
    Violation,
    compare_codes,
    read_float,
    read_tensor,
    sorted_rows,
)
from scanner.claims.folds import (
    ConvFold,
    batchnorm_remains,
    conv_folds,
    deployed_conv_inputs,
)
from scanner.claims.grammar import Claim
from scanner.claims.layouts import (
    CODE_DTYPES,
    FLOAT_DTYPES,
    QuantGroup,
    _stems,
    find_groups,
    group_scale,
)
from scanner.claims.lines import LineProfile, file_share, judge
from scanner.parallel import run_parallel

CHUNK = 1 << 18
"""Elements per comparison chunk: small enough to stay in cache, large enough for numpy."""


# Accepted (range / scale) ratios for round-to-nearest scale formulas, per scheme:
# symmetric absmax / {qmax, (qmax - qmin) / 2, -qmin}; asymmetric (max - min) / {levels - 1,
# levels}. Toolchains differ in exactly these choices (127 vs 127.5 vs 128).
def _ratio_window(scheme: str, qmin: int, qmax: int) -> tuple[float, float]:
    if scheme == "symmetric":
        return float(min(qmax, -qmin) if qmin < 0 else (qmax - qmin) // 2), float(
            max(qmax, -qmin, (qmax - qmin) / 2) if qmin < 0 else (qmax - qmin + 1) / 2
        )
    return float(qmax - qmin - 1), float(qmax - qmin + 1)


def _eps(dtype_name: str) -> float:
    return {"F16": 2.0**-10, "BF16": 2.0**-7, "F32": 2.0**-20, "F64": 2.0**-40}.get(
        dtype_name, 2.0**-20
    )


def unit_roundoff(dtype_name: str) -> float:
    """Half the spacing of a stored scale's dtype, relative: how far a code computed with
    the unrounded scale can sit from one computed with the stored scale, in steps per
    step of code."""
    return {"F16": 2.0**-11, "BF16": 2.0**-8, "F32": 2.0**-24, "F64": 0.0}.get(dtype_name, 0.0)


GROUP_MEMORY = 384 << 20
"""Float32 bytes of trusted tensors checked at once (a tensor larger than this runs alone)."""

SOURCE_PRECISIONS = ("F16", "BF16")
"""Vendors often quantize from a half-precision copy of the float weights; a round-to-
nearest claim that fails from the float32 values is re-derived from these as well."""


def check_quantize(trusted: Artifact, deployed: Artifact, claim: Claim) -> ClaimOutcome:
    """Re-derive every quantized weight of ``deployed``: integer codes with scales
    (:mod:`scanner.claims.layouts`) and the vendor layouts of bitsandbytes, GPTQ and AWQ
    (:mod:`scanner.claims.vendor`)."""
    from scanner.claims.vendor import check_vendor, vendor_groups

    vgroups = vendor_groups(deployed)
    taken = {n for g in vgroups for n in g.names}
    groups = [g for g in find_groups(deployed) if g.codes not in taken]
    notes: list[str] = []
    used: set[str] = set()
    ranges: dict[str, dict[int | None, tuple[np.ndarray, np.ndarray]]] = {}
    jobs = []
    folds = conv_folds(trusted) if trusted.graph is not None else {}
    origins: dict[str, str] = {}
    later: list[QuantGroup] = []
    for g in groups:
        named = any(n in trusted.tensors for n in _stems(g.codes))
        # Renamed by an optimizer that folded a BatchNorm in: the folded weight whose
        # ranges give the stored scales is a sharper match than a shape (one per-tensor
        # scale can fit an unrelated tensor's range by chance).
        if (
            folds
            and not named
            and deployed.tensors[g.codes].dtype.name != "I32"
            and _folded_origin(g, deployed, folds, used) is not None
        ):
            later.append(g)
            continue
        origin, perm = _origin(g, trusted, deployed, used, ranges)
        if origin is None:
            later.append(g)
            continue
        used.add(origin)
        origins[g.codes] = origin
        jobs.append(
            (
                4 * trusted.tensors[origin].n_elements,  # the float32 copy a check holds
                lambda g=g, origin=origin, perm=perm: _check_or_folded(
                    trusted, origin, deployed, g, perm, claim, folds.get(origin)
                ),
            )
        )
    weight_of_bias = deployed_conv_inputs(deployed) if folds else {}
    # Weights first: a bias is found through its convolution's weight.
    later.sort(key=lambda g: deployed.tensors[g.codes].dtype.name == "I32")
    for g in later:
        if deployed.tensors[g.codes].dtype.name != "I32":
            fold = _folded_origin(g, deployed, folds, used)
            if fold is None:
                notes.append(f"{g.codes}: no trusted float tensor matches (name or shape)")
                continue
            used.add(fold.weight)
            origins[g.codes] = fold.weight
            jobs.append(
                (
                    4 * fold.folded_weight.size,
                    lambda g=g, fold=fold: _folded(
                        check_group(
                            trusted, fold.weight, deployed, g, None, claim, fold.folded_weight
                        ),
                        fold,
                    ),
                )
            )
            continue
        fold = folds.get(origins.get(weight_of_bias.get(g.codes, ""), ""))
        if fold is None or fold.folded_bias.shape != tuple(deployed.tensors[g.codes].shape):
            notes.append(f"{g.codes}: no trusted float tensor matches (name or shape)")
            continue
        jobs.append(
            (
                4 * fold.folded_bias.size,
                lambda g=g, fold=fold: _folded(
                    check_group(trusted, fold.bias, deployed, g, None, claim, fold.folded_bias),
                    fold,
                ),
            )
        )
    # Groups are independent and numpy releases the GIL: one per core, in input order,
    # with at most GROUP_MEMORY of float copies held at once beside the largest.
    results: list[tuple[TensorVerdict, LineProfile | None]] = run_parallel(
        jobs, budget=GROUP_MEMORY
    )
    v_results, v_notes = check_vendor(trusted, deployed, vgroups, claim, used)
    results += v_results
    notes += v_notes
    verdicts = judge_lines(results)
    layouts = sorted({_layout_name(g) for g in groups} | {g.layout for g in vgroups})
    return ClaimOutcome(
        str(claim),
        tuple(verdicts),
        tuple(notes),
        evidence={"layouts": layouts, "groups": len(groups) + len(vgroups)},
        applicable=bool(groups or vgroups),
    )


def _folded_origin(
    g: QuantGroup, deployed: Artifact, folds: dict[str, ConvFold], used: set[str]
) -> ConvFold | None:
    """The unused trusted convolution, BatchNorm folded in, whose per-channel ranges give
    the stored scales of ``g`` (an optimizer renamed the folded weight)."""
    shape = tuple(deployed.tensors[g.codes].shape)
    if batchnorm_remains(deployed, g.codes):
        return None
    qmin, qmax = CODE_DTYPES[deployed.tensors[g.codes].dtype.name]
    scale = np.abs(group_scale(deployed, g).astype(np.float64))
    identity = tuple(range(len(shape)))
    fits = [
        f
        for name, f in folds.items()
        if name not in used
        and f.folded_weight.shape == shape
        and max(
            _scales_fit(_channel_ranges(f.folded_weight), identity, scale, qmin, qmax).values(),
            default=0.0,
        )
        == 1.0
    ]
    return fits[0] if len(fits) == 1 else None


def _check_or_folded(
    trusted: Artifact,
    origin: str,
    deployed: Artifact,
    g: QuantGroup,
    perm: tuple[int, ...] | None,
    claim: Claim,
    fold: ConvFold | None,
) -> tuple[TensorVerdict, LineProfile | None]:
    """The quantized weight re-derived from its trusted tensor, or, when that fails and
    the trusted graph folds a BatchNorm into it that the deployed graph no longer has,
    from the folded weight (``scanner.claims.folds``)."""
    verdict, profile = check_group(trusted, origin, deployed, g, perm, claim)
    if verdict.ok or fold is None or perm not in (None, tuple(range(len(perm or ())))):
        return verdict, profile
    if batchnorm_remains(deployed, g.codes):
        return verdict, profile
    folded, folded_profile = check_group(
        trusted, origin, deployed, g, perm, claim, fold.folded_weight
    )
    # The folded weight is the origin when it holds, or when its scales fit where the
    # stored weight's do not (then the codes that break it are the ones to name).
    if folded.ok or (verdict.problem == "scale" and folded.problem != "scale"):
        return _folded((folded, folded_profile), fold)
    return verdict, profile


def _folded(
    result: tuple[TensorVerdict, LineProfile | None], fold: ConvFold
) -> tuple[TensorVerdict, LineProfile | None]:
    verdict, profile = result
    return (
        replace(
            verdict,
            sources=tuple(s for s in fold.sources if s != verdict.tensor),
            stats={**verdict.stats, "folded_into_conv": list(fold.sources)},
            message=verdict.message + " (per-channel operations folded into the conv)",
        ),
        profile,
    )


def judge_lines(results: list[tuple[TensorVerdict, LineProfile | None]]) -> list[TensorVerdict]:
    """Verdicts after the line-by-line judgement of search-algorithm claims: a tensor
    whose codes are each within the algorithm's reach still fails when rows, columns,
    blocks or its largest weights stand out from the rest of the tensor and the file."""
    share = file_share([p for _, p in results if p is not None])
    out = []
    for verdict, profile in results:
        if profile is None or not verdict.ok:
            out.append(verdict)
            continue
        j = judge(profile, share)
        stats = {**verdict.stats, "non_nearest_reference_file": share}
        if j.ok:
            out.append(replace(verdict, stats=stats))
            continue
        stats.update(
            {
                "rows_out_of_line": list(j.rows[:256]),
                "columns_out_of_line": list(j.columns[:256]),
                "blocks_out_of_line": [list(b) for b in j.blocks[:256]],
                "salient_concentration": j.salient,
                "tensor_out_of_line": j.tensor,
            }
        )
        where = j.all_rows()
        out.append(
            replace(
                verdict,
                ok=False,
                message=f"{verdict.tensor}: codes are not spread like the claimed "
                f"algorithm's: {'; '.join(j.reasons)}",
                stats=stats,
                rows=where if where else verdict.rows,
                problem="codes",
                violations=tuple(
                    Violation((r, c), float("nan"), float("nan")) for r, c in j.salient_elements
                )[:MAX_REPORTED],
            )
        )
    return out


def _layout_name(g: QuantGroup) -> str:
    if g.op:
        return f"onnx:{g.op}"
    return "suffix:" + g.scale[len(g.codes) - (0 if not g.codes.endswith("_quantized") else 10) :]


def _origin(
    g: QuantGroup,
    trusted: Artifact,
    deployed: Artifact,
    used: set[str],
    ranges: dict[str, dict[int | None, tuple[np.ndarray, np.ndarray]]] | None = None,
) -> tuple[str | None, tuple[int, ...] | None]:
    shape = deployed.tensors[g.codes].shape
    cands = [
        c
        for c in _stems(g.codes)
        if c in trusted.tensors and c not in used and trusted.tensors[c].dtype.name in FLOAT_DTYPES
    ]
    if cands:
        for c in cands:
            perm = _perm(trusted.tensors[c].shape, shape)
            if perm is not None:
                return c, perm
        return None, None
    # Renamed by the exporter: a unique removed float tensor of a compatible shape, or,
    # when several fit the shape (the layers of a transformer), the unique one whose
    # range per channel is the one the stored scales were computed from.
    removed = [
        (n, perm)
        for n, i in trusted.tensors.items()
        if n not in deployed.tensors and n not in used and i.dtype.name in FLOAT_DTYPES
        for perm in _perms(i.shape, shape)
    ]
    if len({n for n, _ in removed}) == 1:
        return removed[0]
    if not removed:
        return None, None
    qmin, qmax = CODE_DTYPES.get(deployed.tensors[g.codes].dtype.name, (-128, 127))
    scale = np.abs(group_scale(deployed, g).astype(np.float64))
    ranges = {} if ranges is None else ranges
    fits: list[tuple[str, tuple[int, ...], int | None, float]] = []
    for n, perm in removed:
        if n not in ranges:
            # read once per tensor, however many quantized weights are matched against it
            ranges[n] = _channel_ranges(read_float(trusted, n))
        for axis, share in _scales_fit(ranges[n], perm, scale, qmin, qmax).items():
            fits.append((n, perm, axis, share))
    whole = [f for f in fits if f[3] == 1.0]
    if len({f[0] for f in whole}) != 1:
        # Not one exact fit: an edited scale breaks its own channel only, so the tensor
        # whose scales fit in all but a few channels is still the origin (and the claim
        # then names those channels), when no other tensor comes close.
        best = max((f[3] for f in fits), default=0.0)
        whole = [f for f in fits if f[3] == best]
        others = max((f[3] for f in fits if f[0] != whole[0][0]), default=0.0) if whole else 1.0
        if best < NEAR_FIT or len({f[0] for f in whole}) != 1 or others > 0.5:
            return None, None
    # A square matrix fits both ways (rows of one layout are columns of the other); the
    # graph's dequantization axis, when known, says which one is stored.
    hint = None if g.axis_hint is None else g.axis_hint % max(1, len(shape))
    for name, perm, axis, _ in whole:
        if axis == hint:
            return name, perm
    return whole[0][0], whole[0][1]


SCALE_FIT_TOLERANCE = 2e-3
"""Relative slack on range / scale when a quantized tensor is matched to its origin by
its scales: a half-precision scale, or scales computed from a half-precision copy of
the weights, are off by up to 2^-10."""


def _channel_ranges(w: np.ndarray) -> dict[int | None, tuple[np.ndarray, np.ndarray]]:
    """Per axis (None: the whole tensor), the largest value and the smallest, clamped
    to include zero as quantizers do, of each slice along it."""
    w = w.astype(np.float64)
    out: dict[int | None, tuple[np.ndarray, np.ndarray]] = {}
    for axis in (None, *range(w.ndim)):
        rest = tuple(a for a in range(w.ndim) if a != axis) if axis is not None else None
        hi = np.maximum(w.max(axis=rest, initial=0.0), 0.0).reshape(-1)
        lo = np.minimum(w.min(axis=rest, initial=0.0), 0.0).reshape(-1)
        out[axis] = (hi, lo)
    return out


NEAR_FIT = 0.9
"""Share of channels whose scale must follow from a tensor's range for it to be taken as
the origin of a quantized weight no tensor fits exactly."""


def _scales_fit(
    ranges: dict[int | None, tuple[np.ndarray, np.ndarray]],
    perm: tuple[int, ...],
    scale: np.ndarray,
    qmin: int,
    qmax: int,
) -> dict[int | None, float]:
    """Per axis of the trusted tensor laid out by ``perm`` (None: per tensor) with one
    channel per scale, the share of channels whose scale is what a round-to-nearest
    quantizer computes from the channel's range (the better of the two schemes)."""
    axes: list[int | None] = (
        [None]
        if scale.size == 1
        else [a for a in range(len(perm)) if ranges[perm[a]][0].size == scale.size]
    )
    found: dict[int | None, float] = {}
    live = scale > 0
    for axis in axes:
        hi, lo = ranges[None if axis is None else perm[axis]]
        for scheme, span in (("symmetric", np.maximum(hi, -lo)), ("asymmetric", hi - lo)):
            low, high = _ratio_window(scheme, qmin, qmax)
            ratio = np.divide(span, scale, out=np.full(span.shape, np.inf), where=live)
            ok = (ratio >= low * (1 - SCALE_FIT_TOLERANCE)) & (
                ratio <= high * (1 + SCALE_FIT_TOLERANCE)
            )
            ok |= ~live & (span == 0)  # an all-zero channel with a zero scale
            found[axis] = max(found.get(axis, 0.0), float(ok.mean()))
    return {a: v for a, v in found.items() if v > 0}


def _perms(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every axis order :func:`_perm` allows; a square matrix fits both ways."""
    out = []
    if src == dst:
        out.append(tuple(range(len(src))))
    if len(src) >= 2 and (*src[:-2], src[-1], src[-2]) == dst:
        out.append((*tuple(range(len(src) - 2)), len(src) - 1, len(src) - 2))
    return out


def _perm(src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[int, ...] | None:
    """Axis order taking the trusted layout to the deployed one (identity or a swap of the
    last two axes, as DynamicQuantizeLSTM and MatMul exporters do)."""
    if src == dst:
        return tuple(range(len(src)))
    if len(src) >= 2 and (*src[:-2], src[-1], src[-2]) == dst:
        return (*tuple(range(len(src) - 2)), len(src) - 1, len(src) - 2)
    return None


def _channel_axis(
    g: QuantGroup, shape: tuple[int, ...], n_scales: int, claim: Claim
) -> list[int | None]:
    if n_scales == 1:
        return [None]
    if claim.param("axis") is not None:
        return [int(claim.param("axis") or 0) % len(shape)]
    if (
        g.axis_hint is not None
        and 0 <= g.axis_hint % max(1, len(shape)) < len(shape)
        and shape[g.axis_hint % len(shape)] == n_scales
    ):
        return [g.axis_hint % len(shape)]
    return [a for a, d in enumerate(shape) if d == n_scales]


def check_group(
    trusted: Artifact,
    origin: str,
    deployed: Artifact,
    g: QuantGroup,
    perm: tuple[int, ...] | None,
    claim: Claim,
    values: np.ndarray | None = None,
) -> tuple[TensorVerdict, LineProfile | None]:
    """Re-derive one quantized weight from its trusted float tensor (or from ``values``
    computed from trusted tensors, a folded BatchNorm); the line profile is returned for
    search-algorithm claims (None for round-to-nearest)."""
    c_info = deployed.tensors[g.codes]
    qmin, qmax = CODE_DTYPES[c_info.dtype.name]
    names = g.names
    scale = group_scale(deployed, g)
    zp = (
        deployed.array(g.zero_point).astype(np.float32).reshape(-1)
        if g.zero_point
        else np.zeros(1, np.float32)
    )
    shape = c_info.shape

    def fail(problem: str, message: str, **kw: Any) -> tuple[TensorVerdict, None]:
        return TensorVerdict(
            origin, names, False, "quantization", f"{origin}: {message}", problem=problem, **kw
        ), None

    dt = {"I8": "int8", "U8": "uint8"}.get(c_info.dtype.name, c_info.dtype.name.lower())
    # int32 codes are biases whose scale is derived (input scale x weight scale), as
    # static int8 quantization writes them: part of the int8 scheme, not another dtype.
    derived = c_info.dtype.name == "I32"
    if claim.param("dtype") and claim.param("dtype") != dt and not derived:
        return fail("dtype", f"stored as {dt}, claim says {claim.param('dtype')}")
    if claim.param("layout") and claim.param("layout") != "int":
        return fail("layout", f"stored as plain integer codes, claim says {claim.param('layout')}")
    axes = _channel_axis(g, shape, scale.size, claim)
    if not axes:
        return fail("layout", f"{scale.size} scales fit no axis of shape {list(shape)}")
    granularity = "per-tensor" if axes == [None] else "per-channel"
    # Granularity is a statement about weights with a channel axis: scalars and vectors
    # (constants, normalization parameters, biases) have one scale or one per element by
    # construction, and their codes are re-derived under whichever they use.
    if claim.param("granularity") and claim.param("granularity") != granularity and len(shape) >= 2:
        return fail(
            "granularity", f"quantized {granularity}, claim says {claim.param('granularity')}"
        )
    if zp.size not in (1, scale.size):
        return fail("layout", f"{zp.size} zero points for {scale.size} scales")
    mid = 0.0 if qmin < 0 else float((qmax + 1) // 2)
    looks = "symmetric" if np.all(zp == mid) else "asymmetric"
    # Like granularity, the scheme is a statement about weights with a channel axis:
    # quantizers treat scalar and vector initializers as activations (onnxruntime's QDQ
    # quantizes them asymmetric whatever the weight scheme); re-derive them as stored.
    claimed = claim.param("scheme") if len(shape) >= 2 else None
    if claimed == "symmetric" and looks != "symmetric":
        return fail("scheme", "zero points make it asymmetric, claim says symmetric")
    # A symmetric-looking zero point can also come from an asymmetric range that happens
    # to be centred; the scale check tells the two apart.
    schemes = (
        [claimed]
        if claimed
        else (["symmetric", "asymmetric"] if looks == "symmetric" else ["asymmetric"])
    )
    w_full = values if values is not None else read_float(trusted, origin)
    if perm is not None and perm != tuple(range(len(perm))):
        w_full = np.transpose(w_full, perm)
    codes_full = read_tensor(deployed, g.codes)
    strict = claim.param("algorithm", "rtn") == "rtn"
    scale_dtype = deployed.tensors[g.scale].dtype.name
    sources: list[str | None] = [None]
    if strict and trusted.tensors[origin].dtype.name in ("F32", "F64"):
        sources += list(SOURCE_PRECISIONS)
    best: TensorVerdict | None = None
    best_profile: LineProfile | None = None
    for source in sources:
        w_src = w_full if source is None else _round_to(w_full, source)
        for axis, scheme in [(a, sc) for a in axes for sc in schemes]:
            if best is not None and best.ok:
                break
            profile = None if strict else LineProfile.for_tensor(_front(w_src, axis))
            verdict = _verify(
                origin,
                names,
                w_src,
                codes_full,
                scale,
                zp,
                axis,
                qmin,
                qmax,
                scheme,
                strict,
                _eps(scale_dtype),
                derived,
                unit_roundoff(scale_dtype),
                profile,
            )
            verdict = replace(
                verdict,
                stats={
                    **verdict.stats,
                    "granularity": granularity,
                    "scheme": scheme,
                    "dtype": dt,
                    "transposed": perm is not None and perm != tuple(range(len(perm))),
                    "layout": _layout_name(g),
                    **({"source_precision": source} if source else {}),
                },
            )
            if (
                best is None
                or (verdict.ok and not best.ok)
                or (
                    verdict.ok == best.ok
                    and verdict.stats.get("non_nearest", 0) < best.stats.get("non_nearest", 0)
                )
            ):
                best, best_profile = verdict, profile
        if best is not None and best.ok:
            break
    assert best is not None
    return best, best_profile


def _round_to(w: np.ndarray, dtype_name: str) -> np.ndarray:
    from scanner.values import numpy_dtype

    npd = numpy_dtype(dtype_name)
    return w.astype(npd).astype(np.float32)


def _front(w: np.ndarray, axis: int | None) -> np.ndarray:
    return np.moveaxis(w, axis, 0) if axis is not None and axis != 0 and w.ndim else w


def _verify(
    origin: str,
    names: tuple[str, ...],
    w: np.ndarray,
    codes: np.ndarray,
    scale: np.ndarray,
    zp: np.ndarray,
    axis: int | None,
    qmin: int,
    qmax: int,
    scheme: str,
    strict: bool,
    eps: float,
    derived_scale: bool,
    rel_tie: float = 0.0,
    profile: LineProfile | None = None,
) -> TensorVerdict:
    # Bring the channel axis to the front so chunks of rows are chunks of channels.
    if axis is not None and axis != 0:
        w = np.moveaxis(w, axis, 0)
        codes = np.moveaxis(codes, axis, 0)
    n_ch = w.shape[0] if axis is not None else 1
    bcast = (-1,) + (1,) * (w.ndim - 1)
    step_all = scale.reshape(bcast) if axis is not None else scale.reshape(())
    zero_all = (
        np.broadcast_to(zp, scale.shape).reshape(bcast) if axis is not None else zp.reshape(())
    )
    # 1. Scales and zero points must follow from the trusted tensor's range.
    bad_scale: list[int] = []
    if not derived_scale:
        flat = w.reshape(n_ch, -1) if axis is not None else w.reshape(1, -1)
        lo = np.minimum(flat.min(axis=1), 0.0).astype(np.float64)
        hi = np.maximum(flat.max(axis=1), 0.0).astype(np.float64)
        need = np.maximum(hi, -lo) if scheme == "symmetric" else hi - lo
        s64 = np.broadcast_to(scale, (n_ch,)).astype(np.float64)
        ratio = np.divide(need, s64, out=np.zeros_like(need), where=s64 > 0)
        r_lo, r_hi = _ratio_window(scheme, qmin, qmax)
        tol = 4 * eps + 1e-6
        ok = (need == 0) | ((ratio >= r_lo * (1 - tol)) & (ratio <= r_hi * (1 + tol)))
        ok &= np.isfinite(s64) & (s64 > 0) | (need == 0)
        if not strict:
            # Clipping searches (GPTQ, AWQ) shrink the range; they never widen it.
            ok = (need == 0) | ((ratio >= r_lo * (1 - tol)) & np.isfinite(s64) & (s64 > 0))
        if scheme == "asymmetric":
            z = np.broadcast_to(zp, (n_ch,)).astype(np.float64)
            expect_z = np.clip(
                np.round(qmin - np.divide(lo, s64, out=np.zeros_like(lo), where=s64 > 0)),
                qmin,
                qmax,
            )
            ok &= (np.abs(z - expect_z) <= 1) | (need == 0)
        bad_scale = [int(i) for i in np.flatnonzero(~ok)]
    # 2. Codes.
    stats = CodeStats()
    rest = int(np.prod(w.shape[1:])) if w.ndim > 1 else 1
    step_rows = max(1, CHUNK // max(rest, 1))
    for r0 in range(0, w.shape[0] if w.ndim else 1, step_rows):
        r1 = r0 + step_rows
        wc = w[r0:r1] if w.ndim else w
        cc = codes[r0:r1] if codes.ndim else codes
        sc = step_all[r0:r1] if axis is not None else step_all
        zc = zero_all[r0:r1] if axis is not None else zero_all
        compare_codes(
            stats,
            wc,
            cc,
            sc,
            zc,
            qmin,
            qmax,
            strict=strict,
            index_offset=(r0,),
            rel_tie=rel_tie,
            profile=profile,
        )
    if axis is not None and axis != 0:
        # Report indices in the deployed tensor's own axis order.
        def back(ix: tuple[int, ...]) -> tuple[int, ...]:
            lst = list(ix[1:])
            lst.insert(axis, ix[0])
            return tuple(lst)

        stats.samples = [
            Violation(back(v.index), v.expected, v.found, v.trusted_value) for v in stats.samples
        ]
    st = {**stats.to_dict(), "channels": n_ch if axis is not None else 1, "channel_axis": axis}
    violations = stats.n_mismatch if strict else stats.n_beyond_one
    if bad_scale:
        st["bad_scale_channels"] = bad_scale[:256]
        return TensorVerdict(
            origin,
            names,
            False,
            "quantization",
            f"{origin}: {len(bad_scale)} of {n_ch} scale/zero-point values do "
            f"not follow from the trusted weights' range ({scheme})",
            stats=st,
            rows=tuple(bad_scale),
            axis=axis or 0,
            problem="scale",
            violations=tuple(stats.samples),
        )
    if violations:
        what = "differ from round-to-nearest" if strict else "are more than one step from nearest"
        return TensorVerdict(
            origin,
            names,
            False,
            "quantization",
            f"{origin}: {violations:,} of {stats.n:,} codes {what}",
            stats=st,
            violations=tuple(stats.samples),
            rows=sorted_rows(stats.bad_rows),
            axis=axis or 0,
            problem="codes",
        )
    frac = stats.n_mismatch / stats.n if stats.n else 0.0
    msg = (
        f"{origin}: {stats.n:,} codes re-derived exactly"
        if strict
        else f"{origin}: all codes within one step; {frac:.2%} non-nearest"
    )
    if not math.isfinite(stats.max_err_steps):
        msg += " (non-finite weights)"
    return TensorVerdict(origin, names, True, "quantization", msg, stats=st)
