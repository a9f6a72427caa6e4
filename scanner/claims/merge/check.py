"""``merge:CONFIG``: re-derive a mergekit merge tensor by tensor from its inputs.

The trusted artifact is the merge's base model (or, for a linear merge without one, its
first model); the other inputs are the models the YAML names, read from the YAML's
folder. For every tensor of the merged output the config's method and parameters
(filters, layer gradients, precedence) are applied to the inputs' tensors, and every
element must equal the result within the method's own rounding
(:mod:`scanner.claims.merge.methods`). DARE's random drop masks are recovered from the
output and tested for chance (:mod:`scanner.claims.merge.dare`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanner.artifact import Artifact
from scanner.claims.base import MAX_REPORTED, ClaimOutcome, TensorVerdict, Violation, read_float
from scanner.claims.grammar import Claim
from scanner.claims.merge import methods as m
from scanner.claims.merge.config import MergeConfig, Slice, Source, read_config, resolve
from scanner.claims.merge.dare import FIT_ROUNDS, SALIENT_SHARE, DareSolver
from scanner.claims.merge.replay import Draw, replay, torch_available
from scanner.diff.model import TensorDiff
from scanner.errors import UsageError

FLOATS = ("F64", "F32", "F16", "BF16")
CHUNK = 1 << 20
MERGED_CLASS = "full fine-tune"
"""The change class of a verified merge: the deltas the other inputs bring are
fine-tunes of the base, now re-derived."""
_LAYER = re.compile(r"^(.*?)\.(\d+)\.(.+)$")
MAX_TIED_INPUTS = 6
FIT_ELEMENTS = 1 << 17
"""Elements of a DARE tensor sampled to fit its rescale factors."""
_POST = ("lm_head", "norm", "final", "pooler", "classifier", "score", "ln_f", "output")

# method -> (normalize, rescale, sparsification, consensus) defaults, as mergekit has them.
_GTA = {
    "task_arithmetic": (False, False, None, False),
    "ties": (True, False, "magnitude", True),
    "dare_ties": (False, True, "random", True),
    "dare_linear": (False, True, "random", False),
}


@dataclass(frozen=True)
class Planned:
    """One output tensor: where its inputs come from and its layer position."""

    output: str
    slice: Slice
    names: tuple[str, ...]
    """Tensor name in each of ``slice.sources``."""
    t: float


def layer_of(name: str) -> tuple[str, int, str] | None:
    hit = _LAYER.match(name)
    return (hit.group(1), int(hit.group(2)), hit.group(3)) if hit else None


def plan(cfg: MergeConfig, trusted: Artifact, deployed: Artifact) -> list[Planned]:
    """Map every output tensor to its input tensors and layer position ``t``."""
    counts: dict[str, int] = {}
    for name in trusted.tensors:
        hit = layer_of(name)
        if hit:
            counts[hit[0]] = max(counts.get(hit[0], 0), hit[1] + 1)
    out: list[Planned] = []
    for name in sorted(deployed.tensors):
        hit = layer_of(name)
        if cfg.form == "models" or hit is None:
            s = cfg.slices[0]
            if hit is None and cfg.form == "slices" and _is_post(name):
                s = cfg.slices[-1]
            t = 0.0
            if hit is not None:
                n = counts.get(hit[0], hit[1] + 1)
                t = hit[1] / (n - 1) if n > 1 else 1.0
            out.append(Planned(name, s, tuple(name for _ in s.sources), t))
            continue
        prefix, j, rest = hit
        start = 0
        for s in cfg.slices:
            length = s.length or 0
            if start <= j < start + length:
                o = j - start
                names = tuple(
                    f"{prefix}.{(src.layer_range or (0, 0))[0] + o}.{rest}" for src in s.sources
                )
                out.append(Planned(name, s, names, o / (length - 1) if length > 1 else 1.0))
                break
            start += length
        else:
            out.append(Planned(name, cfg.slices[-1], (), 0.0))
    return out


def _is_post(name: str) -> bool:
    parts = name.split(".")
    head = parts[1] if parts[0] in ("model", "transformer", "bert", "roberta") and parts[1:] else ""
    return parts[0] in _POST or head in _POST


def check_merge(
    trusted: Artifact, deployed: Artifact, claim: Claim, diffs: Sequence[TensorDiff]
) -> ClaimOutcome:
    del diffs  # every output tensor is re-derived, changed or not
    cfg_text = claim.param("config")
    if not cfg_text:
        raise UsageError(f"--claim {claim}: merge needs its mergekit YAML (merge:CONFIG)")
    root = claim.param("models")
    cfg = read_config(Path(cfg_text), Path(root) if root else None)
    from scanner.formats import open_artifact

    verdicts: list[TensorVerdict] = []
    with ExitStack() as stack:
        arts: dict[str, Artifact] = {cfg.trusted_ref: trusted}
        for ref in cfg.models():
            if ref not in arts:
                path = cfg.path_of(ref)
                assert path is not None
                arts[ref] = stack.enter_context(open_artifact(path))
        planned = plan(cfg, trusted, deployed)
        seed = claim.param("seed")
        draws: list[Draw] | None = [] if seed is not None else None
        used_trusted: set[str] = set()
        for p in planned:
            for src, name in zip(p.slice.sources, p.names, strict=False):
                if src.ref == cfg.trusted_ref:
                    used_trusted.add(name)
            verdicts.append(_check_tensor(cfg, p, arts, deployed, draws))
    for name in sorted(set(trusted.tensors) - used_trusted):
        left_out = cfg.form == "slices"
        verdicts.append(
            TensorVerdict(
                name,
                (),
                left_out,
                MERGED_CLASS,
                f"{name}: "
                + (
                    "not used by the config's slices"
                    if left_out
                    else "missing from the merged output (every input tensor is merged)"
                ),
                problem="" if left_out else "missing",
            )
        )
    notes = list(cfg.notes)
    if draws is not None and seed is not None:
        verdict, note = _seeded_masks(draws, int(seed), verdicts)
        notes.append(note)
        if verdict is not None:
            verdicts.append(verdict)
    evidence: dict[str, Any] = {
        "method": cfg.method,
        "base": cfg.trusted_ref,
        "inputs": cfg.models(),
        "dtype": cfg.dtype,
        "notes": notes,
    }
    return ClaimOutcome(
        str(claim), tuple(verdicts), notes=tuple(notes), evidence=evidence, applicable=True
    )


def _seeded_masks(
    draws: list[Draw], seed: int, verdicts: list[TensorVerdict]
) -> tuple[TensorVerdict | None, str]:
    """With ``seed=``, DARE's masks must be torch's draws from that seed."""
    if not draws:
        return None, f"seed {seed} unused: no DARE mask in this merge"
    if any(not v.ok for v in verdicts):
        return None, "DARE masks not replayed: the merge already fails"
    if not torch_available():
        return (
            TensorVerdict(
                "dare-masks",
                (),
                False,
                MERGED_CLASS,
                f"DARE mask cannot be re-derived without torch (seed {seed}; "
                "pip install 'modelseal[torch]'); checked statistically only",
                problem="could-not-check",
            ),
            "DARE masks not replayed (torch missing)",
        )
    result = replay(draws, seed)
    if result.reproduced:
        return None, result.message
    tensors = tuple(dict.fromkeys(t for t, _, _ in result.mismatched))
    return (
        TensorVerdict(
            tensors[0] if tensors else "dare-masks",
            tensors,
            False,
            MERGED_CLASS,
            f"DARE masks are not torch's draws from seed {seed}: {result.message}",
            stats={"order_recovered": len(result.order), "masks": len(draws)},
            problem="mask",
        ),
        result.message,
    )


def _fail(p: Planned, trusted_name: str, msg: str, problem: str) -> TensorVerdict:
    return TensorVerdict(
        trusted_name, (p.output,), False, MERGED_CLASS, f"{p.output}: {msg}", problem=problem
    )


def _compute_dtype(cfg: MergeConfig, dtype: str) -> str:
    return cfg.dtype or dtype


def _round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    from scanner.values import numpy_dtype

    npd = numpy_dtype(dtype)
    if npd is None or dtype in ("F32", "F64"):
        return x
    return x.astype(npd).astype(np.float32)


def _coarser(a: str, b: str) -> str:
    return a if m.EPS.get(a, 0) >= m.EPS.get(b, 0) else b


def _check_tensor(
    cfg: MergeConfig,
    p: Planned,
    arts: dict[str, Artifact],
    deployed: Artifact,
    draws: list[Draw] | None = None,
) -> TensorVerdict:
    sources = p.slice.sources
    trusted_name = next(
        (n for s, n in zip(sources, p.names, strict=False) if s.ref == cfg.trusted_ref),
        p.output,
    )
    if not p.names:
        return _fail(p, trusted_name, "its layer is not produced by any slice", "layout")
    info = deployed.tensors[p.output]
    inputs: list[tuple[Source, str]] = list(zip(sources, p.names, strict=True))
    for src, name in inputs:
        t_info = arts[src.ref].tensors.get(name)
        if t_info is None:
            return _fail(p, trusted_name, f"input {src.ref!r} has no tensor {name}", "input")
        if t_info.shape != info.shape:
            return _fail(
                p,
                trusted_name,
                f"input {src.ref!r} tensor {name} has shape {list(t_info.shape)}, the output "
                f"{list(info.shape)}",
                "shape",
            )
    base_info = arts[cfg.trusted_ref].tensors.get(trusted_name)
    in_dtype = base_info.dtype.name if base_info is not None else info.dtype.name
    if in_dtype not in FLOATS or info.dtype.name not in FLOATS:
        return _check_exact(p, trusted_name, inputs, arts, deployed)
    compute = _compute_dtype(cfg, in_dtype)
    stored = info.dtype.name
    arrays = [_round_to(read_float(arts[s.ref], n), compute).reshape(-1) for s, n in inputs]
    found = read_float(deployed, p.output)
    shared = [p.slice.parameters, cfg.parameters]

    def scopes(src: Source) -> list[Any]:
        return [src.parameters, p.slice.parameters, cfg.parameters]

    stats: dict[str, Any] = {"method": cfg.method, "t": round(p.t, 6), "compute": compute}
    if cfg.method == "linear":
        weights = [resolve("weight", float, scopes(s), n, p.t) for s, n in inputs]
        normalize = resolve("normalize", bool, shared, p.output, p.t, True)
        rnd = m.Rounding(_precise(compute), _coarser(compute, stored))
        stats.update(weights=weights, normalize=normalize)
        return _compare(
            p,
            trusted_name,
            found,
            lambda sl: m.linear(
                [a[sl].astype(np.float64) for a in arrays], weights, normalize, rnd
            ),
            stats,
        )
    base_pos = next(i for i, s in enumerate(sources) if s.ref == cfg.base)
    base = arrays[base_pos]
    others = [(s, n, a) for (s, n), a in zip(inputs, arrays, strict=True) if s.ref != cfg.base]
    if cfg.method == "slerp":
        t = resolve("t", float, shared, p.output, p.t)
        other = others[0][2]
        rnd = m.Rounding(_precise(compute), _coarser(compute, stored))
        coefs = _slerp_coefficients(base, other, t, rnd)
        stats.update(t_interp=t)
        return _compare(
            p,
            trusted_name,
            found,
            lambda sl: [
                m.Candidate(
                    ca * base[sl].astype(np.float64) + cb * other[sl].astype(np.float64),
                    m.Rounding("F32", rnd.stored).bound(
                        abs(ca) * np.abs(base[sl].astype(np.float64))
                        + abs(cb) * np.abs(other[sl].astype(np.float64)),
                        ca * base[sl].astype(np.float64) + cb * other[sl].astype(np.float64),
                        8,
                    ),
                )
                for ca, cb in coefs
            ],
            stats,
        )
    d_norm, d_rescale, sparsify, consensus = _GTA[cfg.method]
    normalize = resolve("normalize", bool, shared, p.output, p.t, d_norm)
    rescale = resolve("rescale", bool, shared, p.output, p.t, d_rescale)
    lam = resolve("lambda", float, shared, p.output, p.t, 1.0)
    weights = [resolve("weight", float, scopes(s), n, p.t) for s, n, _ in others]
    densities = [resolve("density", float, scopes(s), n, p.t, 1.0) for s, n, _ in others]
    deltas = [_delta(a, base, compute) for _, _, a in others]
    rnd = m.Rounding(compute, _coarser(compute, stored))
    stats.update(
        weights=weights, densities=densities, normalize=normalize, rescale=rescale, lam=lam
    )
    if not others:
        return _compare(
            p, trusted_name, found, lambda sl: [m.Candidate(*_same(base[sl], rnd))], stats
        )
    if sparsify == "random" and any(d < 1 for d in densities):
        return _dare(
            p,
            trusted_name,
            found,
            base,
            deltas,
            weights,
            densities,
            consensus=consensus,
            normalize=normalize,
            lam=lam,
            rescale=rescale,
            rnd=rnd,
            stats=stats,
            draws=draws,
        )
    masks: list[tuple[np.ndarray, np.ndarray] | None] = []
    scales: list[float] = []
    for d, dens in zip(deltas, densities, strict=True):
        if sparsify == "magnitude" and dens < 1:
            kept, undecided = m.magnitude_mask(d, dens)
            masks.append((kept, undecided))
            scales.append(m.l1_rescale(d, kept | undecided) if rescale else 1.0)
        else:
            masks.append(None)
            scales.append(1.0)
    if any(mk is not None and mk[1].any() for mk in masks):
        stats["threshold_ties"] = int(sum(int(mk[1].sum()) for mk in masks if mk is not None))

    rescaled = rescale and any(mk is not None for mk in masks)

    def ties_at(sl: slice, mks: list[np.ndarray | None], b, ds) -> list[m.Candidate]:
        return m.task_arithmetic(
            b,
            ds,
            weights,
            mks,
            scales,
            consensus=consensus,
            normalize=normalize,
            lam=lam,
            r=rnd,
            rescaled=rescaled,
        )

    def chunk(sl: slice) -> list[m.Candidate]:
        b = base[sl].astype(np.float64)
        ds = [d[sl].astype(np.float64) for d in deltas]
        out = ties_at(sl, [None if mk is None else mk[0][sl] | mk[1][sl] for mk in masks], b, ds)
        tied = [i for i, mk in enumerate(masks) if mk is not None and mk[1][sl].any()]
        if not tied:
            return out
        # Elements on a sparsification threshold: the tool's sort kept some of them and
        # dropped others. Try every keep/drop choice of the tied inputs on those elements.
        where = np.flatnonzero(np.any([masks[i][1][sl] for i in tied], axis=0))
        if len(tied) > MAX_TIED_INPUTS:
            raise UsageError(f"{p.output}: threshold ties in {len(tied)} inputs at once")
        sub_b, sub_d = b[where], [d[where] for d in ds]
        for choice in itertools.product((True, False), repeat=len(tied)):
            mks: list[np.ndarray | None] = []
            for i, mk in enumerate(masks):
                if mk is None:
                    mks.append(None)
                    continue
                keep_tied = choice[tied.index(i)] if i in tied else True
                kept = mk[0][sl][where]
                mks.append(kept | mk[1][sl][where] if keep_tied else kept)
            for c in ties_at(sl, mks, sub_b, sub_d):
                e = out[0].expected.copy()
                bnd = out[0].bound.copy()
                e[where] = c.expected
                bnd[where] = c.bound
                out.append(m.Candidate(e, bnd))
        return out

    return _compare(p, trusted_name, found, chunk, stats)


def _same(b: np.ndarray, rnd: m.Rounding) -> tuple[np.ndarray, np.ndarray]:
    x = b.astype(np.float64)
    return x, rnd.bound(np.abs(x), x, 1)


def _precise(compute: str) -> str:
    """Linear and SLERP compute in float32 (float64 for float64 inputs)."""
    return "F64" if compute == "F64" else "F32"


def _delta(x: np.ndarray, base: np.ndarray, compute: str) -> np.ndarray:
    """``x - base`` rounded as the compute dtype rounds it."""
    from scanner.values import numpy_dtype

    if compute in ("F32", "F64"):
        return (x - base).astype(np.float32) if compute == "F32" else x - base
    npd = numpy_dtype(compute)
    return (x.astype(npd) - base.astype(npd)).astype(np.float32)


def _slerp_coefficients(
    base: np.ndarray, other: np.ndarray, t: float, rnd: m.Rounding
) -> list[tuple[float, float]]:
    a = base.reshape(-1)
    b = other.reshape(-1)
    na = float(np.sqrt(sum(float(np.dot(c, c)) for c in _chunks64(a))))
    nb = float(np.sqrt(sum(float(np.dot(c, c)) for c in _chunks64(b))))
    na = na if na > m.SLERP_EPS else 1.0
    nb = nb if nb > m.SLERP_EPS else 1.0
    dot = sum(float(np.dot(x, y)) for x, y in zip(_chunks64(a), _chunks64(b), strict=True)) / (
        na * nb
    )
    dot = min(1.0, max(-1.0, dot)) if a.size else 1.0
    slack = 1e-5 if rnd.compute != "F64" else 1e-12
    out = []
    if abs(dot) > m.SLERP_DOT_THRESHOLD - slack:
        out.append((1.0 - t, t))
    if abs(dot) <= m.SLERP_DOT_THRESHOLD + slack:
        theta = float(np.arccos(dot))
        s = float(np.sin(theta))
        out.append((float(np.sin((1 - t) * theta) / s), float(np.sin(t * theta) / s)))
    return out


def _chunks64(a: np.ndarray) -> Iterator[np.ndarray]:
    for i in range(0, a.size, CHUNK):
        yield a[i : i + CHUNK].astype(np.float64)


def _rows_of(shape: tuple[int, ...], flat: np.ndarray) -> np.ndarray:
    if len(shape) < 2:
        return np.zeros(flat.shape, np.int64)
    return flat // int(np.prod(shape[1:]))


def _compare(
    p: Planned,
    trusted_name: str,
    found: np.ndarray,
    candidates: Callable[[slice], list[m.Candidate]],
    stats: dict[str, Any],
) -> TensorVerdict:
    """Compare the deployed values with the candidates, chunk by chunk."""
    flat_found = found.reshape(-1)
    n = flat_found.size
    bad_count = 0
    rows: set[int] = set()
    samples: list[Violation] = []
    worst = 0.0
    for start in range(0, n, CHUNK):
        sl = slice(start, min(n, start + CHUNK))
        cands = candidates(sl)
        f = flat_found[sl].astype(np.float64)
        ok, nearest = m.best(cands, f)
        bound = np.minimum.reduce([c.bound for c in cands])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.abs(f - nearest) / np.where(bound > 0, bound, np.inf)
        worst = max(worst, float(np.nanmax(ratio, initial=0.0)))
        bad = np.flatnonzero(~ok)
        if bad.size:
            bad_count += int(bad.size)
            _collect(found.shape, start, bad, f, nearest, rows, samples)
    stats.update(elements=n, worst_error_over_bound=round(min(worst, 1e12), 4))
    return _verdict(p, trusted_name, n, bad_count, rows, samples, stats)


def _collect(
    shape: tuple[int, ...],
    start: int,
    bad: np.ndarray,
    f: np.ndarray,
    nearest: np.ndarray,
    rows: set[int],
    samples: list[Violation],
) -> None:
    flat = bad + start
    rows.update(np.unique(_rows_of(shape, flat)).tolist())
    order = bad[np.argsort(-np.abs(f[bad] - nearest[bad]), kind="stable")]
    for k in order[: max(0, MAX_REPORTED - len(samples))]:
        idx = tuple(int(v) for v in np.unravel_index(int(k) + start, shape)) if shape else ()
        samples.append(Violation(idx, float(nearest[k]), float(f[k])))


def _verdict(
    p: Planned,
    trusted_name: str,
    n: int,
    bad_count: int,
    rows: set[int],
    samples: list[Violation],
    stats: dict[str, Any],
    extra: Sequence[str] = (),
) -> TensorVerdict:
    if bad_count or extra:
        parts = []
        if bad_count:
            where = f" in {len(rows)} rows" if len(rows) else ""
            parts.append(
                f"{bad_count:,} of {n:,} elements do not follow from the {stats['method']} "
                f"merge of its inputs{where}"
            )
        parts += list(extra)
        return TensorVerdict(
            trusted_name,
            (p.output,),
            False,
            MERGED_CLASS,
            f"{p.output}: " + "; ".join(parts),
            stats={**stats, "violating_elements": bad_count},
            violations=tuple(samples),
            rows=tuple(sorted(rows)),
            problem="merge" if bad_count else "mask",
        )
    return TensorVerdict(
        trusted_name,
        (p.output,),
        True,
        MERGED_CLASS,
        f"{p.output}: {n:,} elements re-derived ({stats['method']})",
        stats=stats,
    )


def _dare(
    p: Planned,
    trusted_name: str,
    found: np.ndarray,
    base: np.ndarray,
    deltas: Sequence[np.ndarray],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    consensus: bool,
    normalize: bool,
    lam: float,
    rescale: bool,
    rnd: m.Rounding,
    stats: dict[str, Any],
    draws: list[Draw] | None,
) -> TensorVerdict:
    shape = found.shape
    n_rows = shape[0] if len(shape) >= 2 else 1
    salient = []
    for d in deltas:
        a = np.abs(d.reshape(-1))
        k = max(0, int(a.size * (1 - SALIENT_SHARE)) - 1)
        salient.append(float(np.partition(a, k)[k]) if a.size else np.inf)
    try:
        solver = DareSolver(
            weights,
            densities,
            consensus=consensus,
            normalize=normalize,
            lam=lam,
            rescale=rescale,
            rounding=rnd,
            n_rows=n_rows,
            salient=salient,
        )
    except ValueError as exc:
        raise UsageError(f"merge claim: {exc}") from None
    flat_found = found.reshape(-1)
    flat_base = base.reshape(-1)
    flat_d = [d.reshape(-1) for d in deltas]
    n = flat_found.size

    def chunks() -> Iterator[tuple[slice, np.ndarray, list[np.ndarray], np.ndarray]]:
        for start in range(0, n, CHUNK // 4):
            sl = slice(start, min(n, start + CHUNK // 4))
            yield (
                sl,
                flat_base[sl].astype(np.float64),
                [d[sl].astype(np.float64) for d in flat_d],
                flat_found[sl].astype(np.float64),
            )

    # The rescale factors are per tensor: an evenly spread sample fits them.
    step = max(1, n // FIT_ELEMENTS)
    sample = (
        flat_base[::step].astype(np.float64),
        [d[::step].astype(np.float64) for d in flat_d],
        flat_found[::step].astype(np.float64),
    )
    for _ in range(FIT_ROUNDS):
        solver.fit(*sample)
        solver.settle()
    bad_count = 0
    rows: set[int] = set()
    samples: list[Violation] = []
    for sl, b, ds, f in chunks():
        ok, expected = solver.final(
            b, ds, f, _rows_of(shape, np.arange(sl.start, sl.stop)), offset=sl.start
        )
        bad = np.flatnonzero(~ok)
        if bad.size:
            bad_count += int(bad.size)
            _collect(shape, sl.start, bad, f, expected, rows, samples)
    if draws is not None:
        for i, obs in enumerate(solver.observed):
            if densities[i] < 1:
                draws.append(
                    Draw(
                        p.output,
                        i,
                        n,
                        densities[i],
                        "BF16" if rnd.compute == "BF16" else "F32",
                        np.concatenate([o[0] for o in obs]) if obs else np.zeros(0, np.int64),
                        np.concatenate([o[1] for o in obs]) if obs else np.zeros(0, bool),
                    )
                )
    extra: list[str] = solver.scale_problems()
    for i, st in enumerate(solver.stats):
        if densities[i] >= 1:
            continue
        msgs, bad_rows = st.problems(f"input {i + 1}")
        extra += msgs
        rows.update(bad_rows)
    stats.update(
        elements=n,
        rescale_factors=[round(s, 6) for s in solver.scales],
        masks=[st.summary() for st in solver.stats],
        mask_check="recovered from the output; keep rates tested against density",
    )
    return _verdict(p, trusted_name, n, bad_count, rows, samples, stats, extra)


def _check_exact(
    p: Planned,
    trusted_name: str,
    inputs: Sequence[tuple[Source, str]],
    arts: dict[str, Artifact],
    deployed: Artifact,
) -> TensorVerdict:
    """Integer tensors (position ids ...) merge only when all inputs agree."""
    first = bytes(arts[inputs[0][0].ref].raw(inputs[0][1]))
    same = all(bytes(arts[s.ref].raw(n)) == first for s, n in inputs[1:])
    out = bytes(deployed.raw(p.output))
    if same and out == first:
        return TensorVerdict(
            trusted_name, (p.output,), True, MERGED_CLASS, f"{p.output}: equal in every input"
        )
    msg = (
        "integer tensor differs from the inputs (which agree)"
        if same
        else "integer tensor differs between the inputs: not re-derivable"
    )
    return _fail(p, trusted_name, msg, "merge")
