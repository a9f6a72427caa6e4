"""``gguf`` and ``requantize`` claims: every ggml tensor of DEPLOYED re-derived from its
trusted origin, block by block and row by row.

A claim names a ggml type (``gguf:q4_k``) or a llama.cpp file type (``gguf:q4_k_m``) and
optionally the algorithm (``imatrix``, ``search``). Each deployed tensor is judged in its
*stored* type (see ``judge.py``); the file-type rules (``filetypes.py``) say which stored
types the claim allows. Tensors stream in row chunks read with ``pread`` (bounded memory),
several tensors at once on a thread pool (numpy releases the GIL).

After every tensor has been judged, rows are compared with the rest of the file: a row
whose share of non-nearest codes or whose error is far out of line with the other rows of
the same type fails, even when each of its codes on its own could pass.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanner.artifact import Artifact, FileSpan, TensorInfo
from scanner.claims.base import MAX_REPORTED, ClaimOutcome, TensorVerdict, Violation
from scanner.claims.gguf import filetypes
from scanner.claims.gguf.judge import ChunkVerdict, judge
from scanner.claims.gguf.layouts import CHECKABLE_TYPES, CODEBOOK_TYPES, DECODED_TYPES
from scanner.claims.grammar import GGUF_FILE_TYPES, Claim

FLOAT_SOURCES = ("F32", "F16", "BF16", "F64")
REFERENCE_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
"""Types llama.cpp quantizes deterministically without an importance matrix."""
CHUNK_ELEMENTS = 1 << 20
ROW_ALPHA = 1e-9
"""Family-wise false-alarm rate of the out-of-line row tests, per file."""
ERROR_SPREAD = 12.0
"""How many robust standard deviations above the median a row's error must be to be out
of line (besides being at least :data:`ERROR_EXCESS` above it)."""
ERROR_EXCESS = 0.5
NON_NEAREST_FACTOR = 8.0
NON_NEAREST_SHARE = 0.1
TENSOR_EXCESS = 4.0
"""A tensor whose median row error is this many times the median of its type's tensors
in the file is out of line as a whole."""
TYPE_CLAIM_FTYPES = {"q4_k": "Q4_K_M", "q5_k": "Q5_K_M", "q3_k": "Q3_K_M"}


def mode_for(type_name: str, algorithm: str) -> str:
    """How a tensor stored as ``type_name`` is judged under ``algorithm``."""
    if type_name in CODEBOOK_TYPES:
        return "codebook"
    if algorithm == "rtn":
        return "exact" if type_name in REFERENCE_TYPES else "nearest"
    if algorithm == "imatrix":
        # llama.cpp ignores the importance matrix for Q8_0 and re-rounds K-quant and IQ4
        # codes under their stored scales; only the 32-element legacy types keep the
        # codes of a candidate scale.
        if type_name == "Q8_0":
            return "exact"
        return "feasible" if type_name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1") else "nearest"
    return "feasible"


@dataclass
class TensorResult:
    """Everything one tensor's judgement leaves for the file-level decision."""

    origin: str
    name: str
    type_name: str
    mode: str
    shape: tuple[int, ...]
    per_row: int
    bad_per_row: np.ndarray
    non_nearest_per_row: np.ndarray
    err_per_row: np.ndarray
    samples: list[Violation] = field(default_factory=list)
    blocks_bad: int = 0
    problem: str = ""
    message: str = ""


def check_gguf(trusted: Artifact, deployed: Artifact, claim: Claim) -> ClaimOutcome:
    """Check every ggml tensor of ``deployed`` the claim covers against its origin."""
    from scanner.parallel import run_parallel

    want = (claim.param("type") or "").lower()
    algorithm = claim.param("algorithm", "rtn") or "rtn"
    requant = claim.kind == "requantize"
    meta = gguf_metadata(deployed)
    notes: list[str] = []
    rule = _TypeRule(want, deployed, meta, algorithm)
    notes.extend(rule.notes)
    jobs = []
    skipped_types: set[str] = set()
    used: set[str] = set()
    type_verdicts: list[TensorVerdict] = []
    for name, info in deployed.tensors.items():
        if not info.dtype.is_block_quantized:
            continue
        stored = info.dtype.name
        if stored not in CHECKABLE_TYPES:
            skipped_types.add(stored)
            continue
        allowed, why = rule.allows(name, info)
        origin = _origin(name, trusted, deployed, used)
        if not allowed:
            if why is None:
                continue  # another type family: not covered by this claim
            type_verdicts.append(
                TensorVerdict(origin or name, (name,), False, "quantization", why, problem="type")
            )
            continue
        if why:
            notes.append(why)
        if origin is None:
            notes.append(f"{name}: no trusted tensor matches by name or shape")
            continue
        src = trusted.tensors[origin]
        if not requant and src.dtype.name not in FLOAT_SOURCES:
            notes.append(
                f"{origin}: trusted tensor is {src.dtype.name}, not float; "
                "claim requantize for a quantized source"
            )
            continue
        used.add(origin)
        mode = mode_for(stored, algorithm)
        jobs.append(
            (
                info.nbytes + src.nbytes,
                lambda o=origin, n=name, m=mode: judge_tensor(trusted, o, deployed, n, m),
            )
        )
    if skipped_types:
        notes.append(
            f"deployed holds {', '.join(sorted(skipped_types))} tensors, which modelseal "
            "cannot re-derive"
        )
    results: list[TensorResult] = run_parallel(jobs)
    verdicts = [*type_verdicts, *file_level(results, trusted, deployed)]
    judged = [r for r in results]
    modes = sorted({r.mode for r in judged})
    return ClaimOutcome(
        str(claim),
        tuple(verdicts),
        tuple(notes),
        evidence={
            "type": want.upper(),
            "algorithm": algorithm,
            "file_type": rule.ftype,
            "modes": modes,
            "reference_quantizer": bool(modes) and set(modes) <= {"exact", "copied"},
            "tensors": len(judged),
        },
        applicable=bool(judged) or bool(type_verdicts),
    )


def gguf_metadata(art: Artifact) -> dict[str, Any]:
    """The GGUF key-values of an artifact (a file, or the first GGUF of a folder)."""
    meta = art.metadata.get("gguf")
    if isinstance(meta, dict):
        return meta
    for sub in (art.metadata.get("model_files") or {}).values():
        if isinstance(sub, dict) and isinstance(sub.get("gguf"), dict):
            return sub["gguf"]
    return {}


def declares_imatrix(art: Artifact) -> bool:
    """llama-quantize records the importance matrix it used in ``quantize.imatrix.*``."""
    return any(k.startswith("quantize.imatrix.") for k in gguf_metadata(art))


class _TypeRule:
    """Which stored types a claimed type or file type allows, tensor by tensor."""

    def __init__(self, want: str, deployed: Artifact, meta: dict[str, Any], algorithm: str):
        self.notes: list[str] = []
        self.base = want.upper()
        self.ftype: str | None = None
        self.mixture: filetypes.Mixture | None = None
        if want in GGUF_FILE_TYPES or want.upper() in filetypes.FTYPE_DEFAULT:
            self.ftype = TYPE_CLAIM_FTYPES.get(want, want.upper())
        if want in GGUF_FILE_TYPES:
            hp = filetypes.hparams(meta)
            self.mixture = filetypes.Mixture(
                self.ftype,
                hp,
                deployed.tensors,
                has_imatrix=algorithm == "imatrix" or declares_imatrix(deployed),
            )
            self.base = filetypes.FTYPE_DEFAULT[self.ftype]
            declared = filetypes.declared_ftype(meta)
            if declared and declared != self.ftype:
                self.notes.append(f"the file declares file type {declared}, not {self.ftype}")

    def allows(self, name: str, info: TensorInfo) -> tuple[bool, str | None]:
        """(covered, note or violation message). Not covered and no message: the tensor
        belongs to no family this claim speaks about (e.g. a Q4_0 tensor under a q8_0
        claim) and is left to the rest of the diff."""
        stored = info.dtype.name
        if self.mixture is not None:
            expected = self.mixture.type_for(name, info.shape)
            if expected is None:
                return True, None
            if stored == expected:
                return True, None
            if filetypes.bits_per_weight(stored) >= filetypes.bits_per_weight(expected):
                return True, (
                    f"{name}: {stored} where llama.cpp's {self.ftype} rules give {expected} "
                    "(more precise: accepted)"
                )
            return False, (
                f"{name}: stored as {stored}, less precise than the {expected} that "
                f"llama.cpp's {self.ftype} rules give it"
            )
        if stored == self.base:
            return True, None
        fallback = filetypes.FALLBACK.get(self.base)
        rows_unfit = info.shape[-1] % filetypes.block_elements(self.base) != 0
        if rows_unfit and stored == fallback:
            return True, None
        if filetypes.bits_per_weight(stored) >= filetypes.bits_per_weight(self.base):
            # A mixture keeps sensitive tensors at more bits than its base type.
            return True, None
        return False, None


# -- one tensor ----------------------------------------------------------------------


def _rows_of(info: TensorInfo) -> tuple[int, int]:
    """ggml rows: the last axis is contiguous, every other axis is a row index."""
    per_row = info.shape[-1] if info.shape else 1
    return info.n_elements // max(per_row, 1), per_row


def _read(art: Artifact, info: TensorInfo, start: int, length: int) -> np.ndarray:
    """Bytes ``[start, start + length)`` of a tensor, read with ``pread``."""
    src = info.source
    if not isinstance(src, FileSpan):
        return np.frombuffer(art.raw(info.name)[start : start + length], dtype=np.uint8)
    buf = np.empty(length, dtype=np.uint8)
    view = memoryview(buf)
    fd = art._fd(src.path)  # the artifact owns the descriptor
    pos = 0
    while pos < length:
        got = os.preadv(fd, [view[pos:]], src.offset + start + pos)
        if got <= 0:
            from scanner.errors import ArtifactError

            raise ArtifactError(src.path, f"file ended inside tensor {info.name!r}")
        pos += got
    return buf


def float_rows(art: Artifact, info: TensorInfo, r0: int, r1: int, per_row: int) -> np.ndarray:
    """Rows ``[r0, r1)`` of any tensor as float32 ``(r1 - r0, per_row)``."""
    from scanner.claims.gguf.layouts import dequantize
    from scanner.values import numpy_dtype

    dt = info.dtype
    row_bytes = dt.nbytes(per_row)
    raw = _read(art, info, r0 * row_bytes, (r1 - r0) * row_bytes)
    if dt.is_block_quantized:
        return dequantize(raw.reshape(-1, dt.block_bytes), dt.name).reshape(r1 - r0, per_row)
    values = raw.view(numpy_dtype(dt.name)).reshape(r1 - r0, per_row)
    return values if values.dtype == np.float32 else values.astype(np.float32)


def _chunks(rows: int, per_row: int) -> Iterator[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(per_row, 1))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def _copied(trusted: Artifact, src: TensorInfo, deployed: Artifact, info: TensorInfo) -> bool:
    """Whether the deployed tensor is its trusted origin's blocks, byte for byte.

    llama-quantize copies a tensor that is already in its target type instead of
    re-quantizing it, so a requantized file keeps such tensors unchanged; unchanged blocks
    need no re-derivation. Any other byte sends the tensor to its type's judge."""
    from scanner.diff.compare import bytes_equal

    return src.dtype.name == info.dtype.name and bytes_equal(trusted, src.name, deployed, info.name)


def judge_tensor(
    trusted: Artifact, origin: str, deployed: Artifact, name: str, mode: str
) -> TensorResult:
    info = deployed.tensors[name]
    src = trusted.tensors[origin]
    type_name = info.dtype.name
    rows, per_row = _rows_of(info)
    result = TensorResult(
        origin,
        name,
        type_name,
        mode,
        info.shape,
        per_row,
        np.zeros(rows, dtype=np.int64),
        np.zeros(rows, dtype=np.int64),
        np.zeros(rows, dtype=np.float64),
    )
    if per_row % info.dtype.block_elements or src.n_elements != info.n_elements:
        result.bad_per_row[:] = per_row
        result.problem = "layout"
        result.message = f"{name}: rows of {per_row} do not fit {type_name} blocks"
        return result
    if _copied(trusted, src, deployed, info):
        result.mode = "copied"
        return result
    row_bytes = info.dtype.nbytes(per_row)
    for r0, r1 in _chunks(rows, per_row):
        w = float_rows(trusted, src, r0, r1, per_row)
        raw = _read(deployed, info, r0 * row_bytes, (r1 - r0) * row_bytes).reshape(
            r1 - r0, row_bytes
        )
        v: ChunkVerdict = judge(w, raw, type_name, mode)
        result.bad_per_row[r0:r1] = v.bad_per_row
        result.non_nearest_per_row[r0:r1] = v.non_nearest_per_row
        result.err_per_row[r0:r1] = v.err_per_row
        result.blocks_bad += v.blocks_bad
        for r, c, expected, found, w_val in v.samples:
            if len(result.samples) >= MAX_REPORTED:
                break
            result.samples.append(Violation(_unflat(r0 + r, c, info.shape), expected, found, w_val))
    return result


def _unflat(row: int, col: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) <= 1:
        return (col,)
    lead = np.unravel_index(row, shape[:-1])
    return (*(int(i) for i in lead), int(col))


# -- the file ------------------------------------------------------------------------


def _binomial_tail_log(k: np.ndarray, n: int, p: float) -> np.ndarray:
    """Chernoff upper bound on log P(Binomial(n, p) >= k), elementwise (0 where k <= np)."""
    q = np.clip(k / max(n, 1), 1e-12, 1 - 1e-12)
    p = min(max(p, 1e-12), 1 - 1e-12)
    kl = q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))
    return np.where(k > n * p, -n * kl, 0.0)


def out_of_line_rows(results: list[TensorResult]) -> dict[str, np.ndarray]:
    """Rows out of line (``name -> row indices``) under the permissive modes.

    A row is compared with the other rows of its tensor (they share the columns, hence
    the importance weights an importance matrix gives them): its share of non-nearest
    codes must be a plausible binomial draw at the tensor's rate, and its error must not
    stand far above the tensor's median. A whole tensor is compared with the other
    tensors of its type in the file the same way (its median row error)."""
    flagged: dict[str, np.ndarray] = {}
    judged = [r for r in results if r.mode in ("feasible", "codebook") and not r.problem]
    n_rows = sum(r.bad_per_row.size for r in judged)
    if not n_rows:
        return flagged
    log_alpha = math.log(ROW_ALPHA / n_rows)
    medians: dict[tuple[str, str], list[float]] = {}
    for r in judged:
        ratios = r.err_per_row / r.per_row
        med = float(np.median(ratios))
        medians.setdefault((r.type_name, r.mode), []).append(med)
        mad = float(np.median(np.abs(ratios - med))) * 1.4826
        limit = med + max(ERROR_SPREAD * mad, ERROR_EXCESS * med, 1e-12)
        rows = np.flatnonzero(ratios > limit)
        if r.mode == "feasible":
            p = float(r.non_nearest_per_row.sum()) / max(r.bad_per_row.size * r.per_row, 1)
            k = r.non_nearest_per_row.astype(np.float64)
            tail = _binomial_tail_log(k, r.per_row, p)
            # Rows of one tensor differ in their rate (each has its own scales), so a
            # significant count must also be a large share: a shifted row is all
            # non-nearest, a faithful row a few percent at most.
            share = k / r.per_row >= max(NON_NEAREST_FACTOR * p, NON_NEAREST_SHARE)
            rows = np.union1d(rows, np.flatnonzero((tail < log_alpha) & share))
        if rows.size:
            flagged[r.name] = rows
    for r in judged:
        peers = medians[(r.type_name, r.mode)]
        if len(peers) < 3:
            continue
        file_median = float(np.median(peers))
        mine = float(np.median(r.err_per_row / r.per_row))
        if mine > TENSOR_EXCESS * file_median:
            flagged[r.name] = np.arange(r.bad_per_row.size)
    return flagged


def file_level(
    results: list[TensorResult], trusted: Artifact, deployed: Artifact
) -> list[TensorVerdict]:
    flagged = out_of_line_rows(results)
    verdicts = []
    for r in results:
        rows = set(np.flatnonzero(r.bad_per_row).tolist())
        outliers = flagged.get(r.name, np.zeros(0, dtype=np.int64))
        rows.update(outliers.tolist())
        stats: dict[str, Any] = {
            "type": r.type_name,
            "check": r.mode,
            "elements": int(r.bad_per_row.size * r.per_row),
            "violations": int(r.bad_per_row.sum()),
            "non_nearest": int(r.non_nearest_per_row.sum()),
            "non_nearest_fraction": float(r.non_nearest_per_row.sum())
            / max(r.bad_per_row.size * r.per_row, 1),
            "blocks_bad": r.blocks_bad,
            "rows_out_of_line": int(outliers.size),
        }
        if not rows:
            verdicts.append(
                TensorVerdict(
                    r.origin, (r.name,), True, "quantization", _ok_message(r), stats=stats
                )
            )
            continue
        samples = list(r.samples)
        if outliers.size and len(samples) < MAX_REPORTED:
            samples += _outlier_samples(r, outliers, trusted, deployed)
        what = r.message or _bad_message(r, len(rows), int(outliers.size))
        verdicts.append(
            TensorVerdict(
                r.origin,
                (r.name,),
                False,
                "quantization",
                what,
                stats=stats,
                violations=tuple(samples[:MAX_REPORTED]),
                rows=tuple(sorted(int(i) for i in rows)),
                problem=r.problem or "codes",
            )
        )
    return verdicts


def _ok_message(r: TensorResult) -> str:
    n = r.bad_per_row.size * r.per_row
    if r.mode == "copied":
        return f"{r.name}: {n:,} elements already {r.type_name}, copied byte for byte"
    if r.mode == "exact":
        return f"{r.name}: {n:,} elements re-quantized byte-exact as {r.type_name}"
    if r.mode == "nearest":
        return f"{r.name}: every {r.type_name} code is the nearest under its stored scales"
    if r.mode == "feasible":
        frac = r.non_nearest_per_row.sum() / max(n, 1)
        return (
            f"{r.name}: {r.type_name} codes fit one scale per block "
            f"({frac:.2%} non-nearest, no row out of line)"
        )
    return f"{r.name}: {r.type_name} values within the codebook's bounds, no row out of line"


def _bad_message(r: TensorResult, n_rows: int, n_outliers: int) -> str:
    parts = []
    if r.blocks_bad:
        rule = {
            "exact": "differ from llama.cpp's reference quantizer",
            "nearest": "hold codes that are not the nearest under their stored scales",
            "feasible": "hold codes that fit no common scale of the block",
            "codebook": "hold values beyond the codebook's bounds",
        }[r.mode]
        parts.append(f"{r.blocks_bad:,} {r.type_name} blocks {rule}")
    if n_outliers:
        parts.append(f"{n_outliers} rows out of line with the file's other {r.type_name} rows")
    return f"{r.name}: " + "; ".join(parts) + f" ({n_rows} rows)"


def _outlier_samples(
    r: TensorResult, rows: np.ndarray, trusted: Artifact, deployed: Artifact
) -> list[Violation]:
    """The worst elements of out-of-line rows, re-read (a few rows only)."""
    from scanner.claims.gguf.layouts import dequantize

    info = deployed.tensors[r.name]
    src = trusted.tensors[r.origin]
    row_bytes = info.dtype.nbytes(r.per_row)
    out: list[Violation] = []
    for row in rows[:8]:
        w = float_rows(trusted, src, int(row), int(row) + 1, r.per_row)[0]
        raw = _read(deployed, info, int(row) * row_bytes, row_bytes)
        v = dequantize(raw.reshape(-1, info.dtype.block_bytes), r.type_name).reshape(-1)
        worst = np.argsort(-np.abs(w - v))[:4]
        out += [
            Violation(_unflat(int(row), int(c), r.shape), float(w[c]), float(v[c]), float(w[c]))
            for c in worst
        ]
    return out


# -- names ---------------------------------------------------------------------------


def _origin(name: str, trusted: Artifact, deployed: Artifact, used: set[str]) -> str | None:
    info = deployed.tensors[name]
    if name in trusted.tensors and trusted.tensors[name].shape == info.shape:
        return name
    mapped = _hf_name(name, deployed, trusted)
    if mapped is not None:
        return mapped
    same = [
        n
        for n, i in trusted.tensors.items()
        if i.shape == info.shape and n not in deployed.tensors and n not in used
    ]
    return same[0] if len(same) == 1 else None


def _hf_name(name: str, deployed: Artifact, trusted: Artifact) -> str | None:
    """Map a llama.cpp tensor name (``blk.0.attn_q.weight``) back to a trusted name
    through the ``gguf`` package's tensor-name tables."""
    try:
        import gguf

        meta = gguf_metadata(deployed)
        arch_name = meta.get("general.architecture")
        arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
        n_blocks = int(meta.get(f"{arch_name}.block_count", 0))
        tmap = gguf.get_tensor_name_map(arch, n_blocks)
    except (StopIteration, ImportError, AttributeError, ValueError, TypeError, KeyError):
        return None
    want = deployed.tensors[name].shape
    for cand in trusted.tensors:
        got = tmap.get_name(cand, try_suffixes=(".weight", ".bias"))
        if got == name and trusted.tensors[cand].shape == want:
            return cand
    return None


__all__ = ["DECODED_TYPES", "REFERENCE_TYPES", "check_gguf", "mode_for"]
