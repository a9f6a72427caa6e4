"""Vendor quantization layouts in safetensors: bitsandbytes (LLM.int8, NF4, FP4) and
packed GPTQ / AWQ integers, found by their tensor families and re-derived from the
trusted float weights (layouts and encoders in :mod:`scanner.claims.bnb` and
:mod:`scanner.claims.gptq`).

Every family is judged like the plain int8 layouts: scales (absmax, group scales and
zero points) must follow from the trusted weights, and codes must be the nearest ones
(bitsandbytes has no search; GPTQ/AWQ files are round-to-nearest unless the claim names
the search algorithm, and then the codes are judged line by line,
:mod:`scanner.claims.lines`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanner.artifact import Artifact
from scanner.claims import bnb, gptq
from scanner.claims.base import (
    CodeStats,
    TensorVerdict,
    compare_codes,
    read_float,
    read_tensor,
    sorted_rows,
)
from scanner.claims.grammar import Claim
from scanner.claims.lines import LineProfile

FLOATS = ("F32", "F16", "BF16", "F64")
WALL_SHARE = 2.0**-8
"""A code-book value within this share of the gap from the wall between two neighbouring
codes may take either (kernels search the code book in different arithmetic: CUDA's
decision tree, the CPU binary search, torch's bucketize)."""
NESTED_WALL_SHARE = 2.0**-5
"""The same for double-quantized absmax codes: bitsandbytes' CPU kernel finds them with
an approximate direct-lookup search over the 256-value map and picks the farther of two
neighbours up to about 1.3% of the gap from the wall, or 1e-5 of the block's range near
zero, where its lookup grid is coarse (measured on MiniLM); the 4-bit codes are computed
from the exact absmax, so this only widens the scale check by a few hundredths of a
nested step."""
NESTED_WALL_ABS = 2.0**-16
ROW_CHUNK = 256
GPTQ_MAX_STEPS = 15
"""GPTQ's error feedback moves a weight by the compensation of earlier columns before it
is rounded, so its code can land several steps from the nearest code of the original
weight (the published algorithm on MiniLM, 4-bit groups of 128: a third of the codes
non-nearest, 1% beyond one step, and in the 1536-input matrices over a hundred codes
beyond four). No per-code bound separates that from an edit; the line-by-line judgement
(rows, columns, blocks, salient weights, row error and drift) is what catches one."""


@dataclass(frozen=True)
class VendorGroup:
    layout: str
    """``bnb-int8``, ``bnb-nf4``, ``bnb-fp4``, ``gptq`` or ``awq``."""
    base: str
    """The float weight's name (``P.weight``)."""
    codes: str
    parts: dict[str, str] = field(default_factory=dict)
    """Role -> deployed tensor name (scale, zeros, g_idx, absmax, state ...)."""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.codes, *self.parts.values())

    @property
    def family(self) -> str:
        return self.layout.split("-")[0]


def vendor_groups(deployed: Artifact) -> list[VendorGroup]:
    t = deployed.tensors
    out: list[VendorGroup] = []
    for name, info in t.items():
        if name.endswith(".SCB") and info.dtype.name == "F32":
            prefix = name[: -len("SCB")]
            for w in (prefix + "weight", prefix[:-1]):
                if w in t and t[w].dtype.name == "I8" and len(t[w].shape) == 2:
                    parts = {"scb": name}
                    if prefix + "weight_format" in t:
                        parts["format"] = prefix + "weight_format"
                    out.append(VendorGroup("bnb-int8", w, w, parts))
                    break
        for qt in ("nf4", "fp4"):
            suffix = "." + bnb.STATE_PREFIX + qt
            if name.endswith(suffix):
                w = name[: -len(suffix)]
                parts = {"state": name}
                for role in ("absmax", "quant_map", "nested_absmax", "nested_quant_map"):
                    if f"{w}.{role}" in t:
                        parts[role] = f"{w}.{role}"
                if w in t and "absmax" in parts and "quant_map" in parts:
                    out.append(VendorGroup(f"bnb-{qt}", w, w, parts))
        if name.endswith(".qweight") and info.dtype.name == "I32":
            prefix = name[: -len("qweight")]
            if prefix + "scales" not in t or prefix + "qzeros" not in t:
                continue
            parts = {"scales": prefix + "scales", "qzeros": prefix + "qzeros"}
            if prefix + "g_idx" in t:
                parts["g_idx"] = prefix + "g_idx"
            layout = _packed_layout(deployed, name, parts)
            out.append(VendorGroup(layout, prefix + "weight", name, parts))
    return sorted(out, key=lambda g: g.codes)


def _packed_layout(deployed: Artifact, qweight: str, parts: dict[str, str]) -> str:
    """GPTQ packs along the input axis (qweight rows = in / 8, columns = out = scales'
    columns); AWQ along the output axis (columns = out / 8)."""
    qshape = deployed.tensors[qweight].shape
    sshape = deployed.tensors[parts["scales"]].shape
    if "g_idx" in parts or (len(qshape) == 2 and qshape[1] == sshape[-1]):
        return "gptq"
    return "awq"


def check_vendor(
    trusted: Artifact,
    deployed: Artifact,
    groups: list[VendorGroup],
    claim: Claim,
    used: set[str],
) -> tuple[list[tuple[TensorVerdict, LineProfile | None]], list[str]]:
    results: list[tuple[TensorVerdict, LineProfile | None]] = []
    notes: list[str] = []
    for g in groups:
        info = trusted.tensors.get(g.base)
        if info is None or info.dtype.name not in FLOATS or g.base in used:
            notes.append(f"{g.codes}: no trusted float tensor {g.base}")
            continue
        used.add(g.base)
        mismatch = _claim_mismatch(g, claim)
        if mismatch:
            results.append((_fail(g, "layout", mismatch), None))
            continue
        if g.family == "bnb" and g.layout == "bnb-int8":
            results.append((_check_bnb_int8(trusted, deployed, g), None))
        elif g.family == "bnb":
            results.append((_check_bnb_4bit(trusted, deployed, g), None))
        else:
            results.append(_check_packed(trusted, deployed, g, claim))
    return results, notes


def group_dtype(g: VendorGroup, bits: int | None = None) -> str:
    if g.layout == "bnb-int8":
        return "int8"
    if g.family == "bnb":
        return g.layout.split("-")[1]
    return f"int{bits or 4}"


def _claim_mismatch(g: VendorGroup, claim: Claim) -> str:
    layout = claim.param("layout")
    if layout and layout != g.family:
        return f"stored in the {g.family} layout, claim says {layout}"
    algo = claim.param("algorithm", "rtn")
    if algo in ("gptq", "awq") and g.family in ("gptq", "awq") and algo != g.family:
        return f"stored in the {g.family} layout, claim says {algo}"
    dtype = claim.param("dtype")
    if dtype and g.family == "bnb" and dtype != group_dtype(g):
        return f"stored as bitsandbytes {group_dtype(g)}, claim says {dtype}"
    return ""


def _fail(g: VendorGroup, problem: str, message: str, **kw: Any) -> TensorVerdict:
    return TensorVerdict(
        g.base, g.names, False, "quantization", f"{g.base}: {message}", problem=problem, **kw
    )


def _source(trusted: Artifact, name: str, dtype_name: str | None) -> np.ndarray:
    """The trusted weight as the quantizer saw it: cast to ``dtype_name`` (the vendor's
    working precision) when given, then float32."""
    w = read_float(trusted, name)
    if dtype_name and dtype_name != trusted.tensors[name].dtype.name:
        from scanner.values import numpy_dtype

        w = w.astype(numpy_dtype(dtype_name)).astype(np.float32)
    return w


_TORCH_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}


def _check_bnb_int8(trusted: Artifact, deployed: Artifact, g: VendorGroup) -> TensorVerdict:
    codes = read_tensor(deployed, g.codes)
    scb = read_float(deployed, g.parts["scb"]).reshape(-1)
    if codes.shape[0] != scb.size or trusted.tensors[g.base].shape != codes.shape:
        return _fail(g, "layout", f"SCB {scb.size} rows for codes {list(codes.shape)}")
    best: TensorVerdict | None = None
    for src in (None, "F16", "BF16"):
        w = _source(trusted, g.base, src)
        absmax = np.abs(w).max(axis=1).astype(np.float32)
        bad_scale = np.flatnonzero(absmax != scb)
        stats = CodeStats()
        for r0 in range(0, w.shape[0], ROW_CHUNK):
            sl = slice(r0, r0 + ROW_CHUNK)
            step = (scb[sl] / np.float32(127.0))[:, None]
            compare_codes(
                stats, w[sl], codes[sl], step, 0.0, -128, 127, strict=True, index_offset=(r0,)
            )
        st = {**stats.to_dict(), "layout": g.layout, "source_precision": src or "as stored"}
        if bad_scale.size:
            v = _fail(
                g,
                "scale",
                f"{bad_scale.size} of {scb.size} SCB row absmax values differ from the "
                "trusted rows' absmax",
                stats={**st, "bad_scale_rows": bad_scale[:256].tolist()},
                rows=tuple(int(r) for r in bad_scale),
            )
        elif stats.n_mismatch:
            v = _fail(
                g,
                "codes",
                f"{stats.n_mismatch:,} of {stats.n:,} codes differ from round(w * 127 / SCB)",
                stats=st,
                rows=sorted_rows(stats.bad_rows),
                violations=tuple(stats.samples),
            )
        else:
            return TensorVerdict(
                g.base,
                g.names,
                True,
                "quantization",
                f"{g.base}: {stats.n:,} bitsandbytes int8 codes re-derived exactly",
                stats=st,
            )
        if best is None or (best.problem == "scale" and v.problem != "scale"):
            best = v
    assert best is not None
    return best


def _check_bnb_4bit(trusted: Artifact, deployed: Artifact, g: VendorGroup) -> TensorVerdict:
    state = bnb.parse_state(read_tensor(deployed, g.parts["state"]))
    try:
        blocksize = int(state["blocksize"])  # type: ignore[arg-type]
        shape = tuple(int(x) for x in state["shape"])  # type: ignore[union-attr]
    except (KeyError, TypeError, ValueError):
        return _fail(g, "layout", "quant state lacks blocksize or shape")
    qt = g.layout.split("-")[1]
    if state.get("quant_type") != qt:
        return _fail(g, "layout", f"quant state says {state.get('quant_type')}, key says {qt}")
    t_shape = trusted.tensors[g.base].shape
    n = int(np.prod(shape))
    if tuple(t_shape) != shape or blocksize <= 0:
        return _fail(g, "layout", f"quant state shape {list(shape)}, trusted {list(t_shape)}")
    src = _TORCH_DTYPES.get(str(state.get("dtype")))
    w = _source(trusted, g.base, src).reshape(-1)
    qmap = read_float(deployed, g.parts["quant_map"]).reshape(-1)
    expect_map = bnb.NF4 if qt == "nf4" else bnb.FP4
    if qmap.size != 16 or not np.array_equal(qmap, expect_map):
        return _fail(g, "quant-map", f"quant_map is not bitsandbytes' {qt.upper()} code")
    absmax = bnb.blockwise_absmax(w, blocksize)
    stats: dict[str, Any] = {"layout": g.layout, "blocksize": blocksize, "elements": n}
    n_cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    # Scales: plain float32 absmax, or double-quantized codes of absmax - offset.
    if "nested_absmax" in g.parts:
        bad_blocks = _nested_mismatch(deployed, g, state, absmax, stats)
    else:
        stored = read_float(deployed, g.parts["absmax"]).reshape(-1)
        bad_blocks = (
            np.flatnonzero(stored != absmax)
            if stored.size == absmax.size
            else np.arange(absmax.size)
        )
    if bad_blocks.size:
        rows = sorted({int(b) * blocksize // n_cols for b in bad_blocks})
        return _fail(
            g,
            "scale",
            f"{bad_blocks.size} of {absmax.size} block absmax values do not follow from the "
            "trusted weights",
            stats={**stats, "bad_blocks": bad_blocks[:256].tolist()},
            rows=tuple(rows),
        )
    book = bnb.Codebook.of(qmap)
    found = bnb.unpack_nibbles(read_tensor(deployed, g.codes), n)
    if found.size != n:
        return _fail(g, "layout", f"{found.size} codes stored for {n} elements")
    x = bnb.normalize(w, absmax, blocksize)
    expect = book.encode(x)
    bad = found != expect
    if bad.any():
        # A value on a bucket wall may go either way (CUDA's decision tree and the CPU
        # bucketize agree except exactly there).
        pos = np.flatnonzero(bad)
        gap = np.abs(qmap[found[pos]] - qmap[expect[pos]])
        srt = np.sort(qmap)
        adjacent = (
            np.abs(np.searchsorted(srt, qmap[found[pos]]) - np.searchsorted(srt, qmap[expect[pos]]))
            == 1
        )
        near_wall = book.nearest_margin(x[pos], expect[pos]) <= WALL_SHARE * gap
        real = pos[~(near_wall & adjacent)]
        stats["ties_accepted"] = int((near_wall & adjacent).sum())
        if real.size:
            from scanner.claims.base import MAX_REPORTED, Violation

            rows = np.unique(real // n_cols)
            viol = tuple(
                Violation(
                    tuple(int(v) for v in np.unravel_index(int(p), shape)),
                    float(qmap[expect[p]] * absmax[p // blocksize]),
                    float(qmap[found[p]] * absmax[p // blocksize]),
                    float(w[p]),
                )
                for p in real[:MAX_REPORTED]
            )
            return _fail(
                g,
                "codes",
                f"{real.size:,} of {n:,} {qt.upper()} codes are not the nearest code",
                stats={**stats, "non_nearest": int(real.size)},
                rows=tuple(int(r) for r in rows),
                violations=viol,
            )
    return TensorVerdict(
        g.base,
        g.names,
        True,
        "quantization",
        f"{g.base}: {n:,} {qt.upper()} codes and {absmax.size} block scales re-derived",
        stats=stats,
    )


def _nested_mismatch(
    deployed: Artifact,
    g: VendorGroup,
    state: dict[str, Any],
    absmax: np.ndarray,
    stats: dict[str, Any],
) -> np.ndarray:
    """Blocks whose double-quantized absmax code is not the re-derived one."""
    nested_bs = int(state.get("nested_blocksize", 256))
    offset = np.float32(absmax.mean(dtype=np.float32))
    stored_offset = np.float32(state.get("nested_offset", np.nan))
    stats["nested_offset"] = float(stored_offset)
    nmap = read_float(deployed, g.parts["nested_quant_map"]).reshape(-1)
    stored = read_tensor(deployed, g.parts["absmax"]).reshape(-1)
    if stored.size != absmax.size or nmap.size != 256:
        return np.arange(absmax.size)
    # The offset is a float32 mean; summation order moves its last bits.
    if not abs(float(stored_offset) - float(offset)) <= 1e-5 * max(abs(float(offset)), 1e-30):
        stats["offset_mismatch"] = [float(stored_offset), float(offset)]
        return np.arange(absmax.size)
    centred = (absmax - stored_offset).astype(np.float32)
    nabs = bnb.blockwise_absmax(centred, nested_bs)
    stored_nabs = read_float(deployed, g.parts["nested_absmax"]).reshape(-1)
    if stored_nabs.size != nabs.size or not np.allclose(stored_nabs, nabs, rtol=1e-6, atol=0):
        bad_nb = (
            np.flatnonzero(~np.isclose(stored_nabs, nabs, rtol=1e-6, atol=0))
            if (stored_nabs.size == nabs.size)
            else np.arange(nabs.size)
        )
        return np.unique(
            np.concatenate(
                [np.arange(b * nested_bs, min((b + 1) * nested_bs, absmax.size)) for b in bad_nb]
            )
        )
    book = bnb.Codebook.of(nmap)
    x = bnb.normalize(centred, stored_nabs, nested_bs)
    expect = book.encode(x)
    bad = np.flatnonzero(expect != stored)
    if bad.size:
        # bitsandbytes' CPU kernel searches the map in its own arithmetic: a value within
        # a small fraction of a gap from the midpoint of two neighbouring codes may take
        # either one.
        gap = np.abs(nmap[stored[bad]] - nmap[expect[bad]])
        srt = np.sort(nmap)
        neighbours = (
            np.abs(
                np.searchsorted(srt, nmap[stored[bad]]) - np.searchsorted(srt, nmap[expect[bad]])
            )
            == 1
        )
        margin = book.nearest_margin(x[bad], expect[bad])
        tol = np.maximum(NESTED_WALL_SHARE * gap, NESTED_WALL_ABS)
        bad = bad[~(neighbours & (margin <= tol))]
    return bad


def _check_packed(
    trusted: Artifact, deployed: Artifact, g: VendorGroup, claim: Claim
) -> tuple[TensorVerdict, LineProfile | None]:
    t_shape = trusted.tensors[g.base].shape
    if len(t_shape) != 2:
        return _fail(g, "layout", f"trusted weight has shape {list(t_shape)}"), None
    out_f, in_f = t_shape
    q_shape = deployed.tensors[g.codes].shape
    scales = read_float(deployed, g.parts["scales"])
    if scales.ndim != 2 or scales.shape[1] != out_f:
        return _fail(g, "layout", f"scales {list(scales.shape)} for {out_f} outputs"), None
    if g.layout == "gptq":
        bits = 32 * q_shape[0] // in_f if in_f else 0
    else:
        bits = 32 * q_shape[1] // out_f if out_f else 0
    if bits not in (2, 4, 8):
        return _fail(g, "layout", f"{bits}-bit packing is not supported"), None
    if claim.param("bits") and int(claim.param("bits") or 0) != bits:
        return _fail(g, "layout", f"{bits}-bit codes, claim says {claim.param('bits')}"), None
    n_groups = scales.shape[0]
    order = gptq.AWQ_ORDER if (g.layout == "awq" and bits == 4) else None
    if g.layout == "gptq":
        codes = gptq.unpack_rows(read_tensor(deployed, g.codes), bits)  # [in, out]
        if "g_idx" in g.parts:
            group_of = read_tensor(deployed, g.parts["g_idx"]).astype(np.int64).reshape(-1)
        else:
            group_of = np.arange(in_f) // max(1, -(-in_f // n_groups))
    else:
        codes = gptq.unpack_cols(read_tensor(deployed, g.codes), bits, order)
        group_of = np.arange(in_f) // max(1, in_f // n_groups)
    zeros = gptq.unpack_cols(read_tensor(deployed, g.parts["qzeros"]), bits, order).astype(np.int64)
    if codes.shape != (in_f, out_f) or zeros.shape != scales.shape or group_of.size != in_f:
        return _fail(g, "layout", f"packed shapes do not fit a [{out_f}, {in_f}] weight"), None
    if group_of.min() < 0 or group_of.max() >= n_groups:
        return _fail(g, "layout", "g_idx names groups that have no scale"), None
    sizes = np.bincount(group_of, minlength=n_groups)
    group_size = int(sizes.max())
    if claim.param("group") and int(claim.param("group") or 0) not in (group_size, -1):
        return _fail(
            g, "layout", f"groups of {group_size}, claim says {claim.param('group')}"
        ), None
    algo = claim.param("algorithm", "rtn")
    strict = algo == "rtn"
    maxq = (1 << bits) - 1
    # GPTQ's original format stores zero - 1; v2 stores the zero point itself.
    variants = [1, 0] if g.layout == "gptq" else [0]
    w_all = _source(
        trusted, g.base, "F16" if deployed.tensors[g.parts["scales"]].dtype.name == "F16" else None
    )
    w_raw = read_float(trusted, g.base)
    best: tuple[TensorVerdict, LineProfile | None] | None = None
    for plus in variants:
        z = (zeros + plus).astype(np.float32)
        for w in (w_all, w_raw):
            verdict, profile = _verify_packed(
                g, w, codes, scales, z, group_of, bits, maxq, strict, algo, group_size
            )
            verdict = _with_stats(
                verdict, bits=bits, group=group_size, zero_stored_minus_one=bool(plus)
            )
            if (
                best is None
                or (verdict.ok and not best[0].ok)
                or (
                    verdict.ok == best[0].ok
                    and verdict.stats.get("non_nearest", 1 << 62)
                    < best[0].stats.get("non_nearest", 1 << 62)
                )
            ):
                best = (verdict, profile)
            if verdict.ok:
                return best
    assert best is not None
    return best


def _with_stats(v: TensorVerdict, **extra: Any) -> TensorVerdict:
    from dataclasses import replace

    return replace(v, stats={**v.stats, **extra})


def _verify_packed(
    g: VendorGroup,
    w: np.ndarray,
    codes: np.ndarray,
    scales: np.ndarray,
    zeros: np.ndarray,
    group_of: np.ndarray,
    bits: int,
    maxq: int,
    strict: bool,
    algo: str,
    group_size: int,
) -> tuple[TensorVerdict, LineProfile | None]:
    out_f = w.shape[0]
    # Scales and zero points per (group, output) against the group's range.
    lo = np.full(scales.shape, np.inf, np.float64)
    hi = np.full(scales.shape, -np.inf, np.float64)
    np.minimum.at(lo, group_of, w.T.astype(np.float64))
    np.maximum.at(hi, group_of, w.T.astype(np.float64))
    lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    s = scales.astype(np.float64)
    sym = bool(np.all(zeros == (maxq + 1) / 2))
    need = 2 * np.maximum(hi, -lo) if sym else hi - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(s > 0, need / s, np.inf)
        expect_zero = np.round(-lo / np.where(s > 0, s, 1))
    tol = 2.0**-9  # float16 scales
    if strict:
        ok = (need == 0) | ((ratio >= maxq * (1 - tol)) & (ratio <= maxq * (1 + tol)))
        if not sym:
            ok &= (np.abs(zeros - expect_zero) <= 1) | (need == 0)
    else:
        # Search algorithms clip the range (AWQ) or re-derive it from updated weights
        # (GPTQ): the scale stays within a factor two of the plain range.
        ok = (need == 0) | ((ratio >= maxq * 0.5) & (ratio <= maxq * 2.0))
    bad_scale = np.argwhere(~ok)
    base_stats: dict[str, Any] = {
        "layout": g.layout,
        "scheme": "symmetric" if sym else "asymmetric",
    }
    if bad_scale.size:
        rows = tuple(sorted({int(o) for o in bad_scale[:, 1]}))
        return _fail(
            g,
            "scale",
            f"{len(bad_scale)} of {scales.size} group scales or zero points do not follow "
            "from the trusted weights' range",
            stats={**base_stats, "bad_groups": bad_scale[:64].tolist()},
            rows=rows,
        ), None
    stats = CodeStats()
    profile = None if strict else LineProfile.for_tensor(w)
    for r0 in range(0, out_f, ROW_CHUNK):
        sl = slice(r0, r0 + ROW_CHUNK)
        step = scales[group_of][:, sl].T
        zero = zeros[group_of][:, sl].T
        compare_codes(
            stats,
            w[sl],
            codes[:, sl].T,
            step,
            zero,
            0,
            maxq,
            strict=strict,
            index_offset=(r0,),
            rel_tie=2.0**-11,
            profile=profile,
            max_steps=GPTQ_MAX_STEPS if algo == "gptq" else 1,
        )
    st = {**base_stats, **stats.to_dict()}
    limit = GPTQ_MAX_STEPS if algo == "gptq" else 1
    violations = stats.n_violations
    if violations:
        what = (
            "differ from round-to-nearest"
            if strict
            else f"are more than {limit} step(s) from nearest"
        )
        return _fail(
            g,
            "codes",
            f"{violations:,} of {stats.n:,} codes {what}",
            stats=st,
            rows=sorted_rows(stats.bad_rows),
            violations=tuple(stats.samples),
        ), None
    frac = stats.n_mismatch / stats.n if stats.n else 0.0
    msg = (
        f"{g.base}: {stats.n:,} {g.layout.upper()} codes re-derived exactly"
        if strict
        else f"{g.base}: codes within {limit} step(s); {frac:.2%} non-nearest"
    )
    return TensorVerdict(g.base, g.names, True, "quantization", msg, stats=st), profile
