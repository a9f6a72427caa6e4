"""``lora``: a LoRA merge as a verifiable claim.

* ``lora:r=N:modules=A,B`` -- the change is a LoRA merge of rank at most ``N`` into
  exactly the named modules: every tensor whose name contains one of the modules (as
  whole dotted components, e.g. ``q_proj`` or ``self.query``) has a delta of rank <= N
  above storage rounding (:func:`scanner.analysis.lowrank.rank_profile`); each named
  module changed in every layer that has it (a low-rank change confined to some layers
  is a knowledge edit, not an adapter); every other tensor is unchanged (or cast).
* ``lora:adapter=PATH`` -- the deployed weights are ``W + scale * B @ A`` for the PEFT
  adapter at PATH (``adapter_model.safetensors`` + ``adapter_config.json``), element by
  element within the rounding of the merge's arithmetic. ``scale`` is ``lora_alpha / r``
  (``/ sqrt(r)`` with ``use_rslora``; ``alpha_pattern`` / ``rank_pattern`` per module);
  ``fan_in_fan_out`` transposes ``B @ A``; conv and embedding adapters are supported.
  Tensors the adapter stores whole (``modules_to_save``, trained biases) must equal its
  copy; every other tensor is unchanged (or cast).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanner.artifact import Artifact
from scanner.claims.base import MAX_REPORTED, ClaimOutcome, TensorVerdict, Violation, read_float
from scanner.claims.grammar import Claim
from scanner.claims.merge.methods import EPS, TINY
from scanner.diff.model import TensorDiff, TensorStatus
from scanner.errors import UsageError

LORA_CLASS = "low-rank update"
FLOATS = ("F64", "F32", "F16", "BF16")
UNCHANGED = (TensorStatus.IDENTICAL, TensorStatus.CAST)
MAX_ADAPTER_CONFIG = 1 << 20
ROW_CHUNK = 1024
_PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.[A-Za-z0-9_]+)?(?:\.weight)?$"
)


def check_lora(
    trusted: Artifact, deployed: Artifact, claim: Claim, diffs: Sequence[TensorDiff]
) -> ClaimOutcome:
    if claim.param("adapter"):
        return _check_adapter(trusted, deployed, claim, diffs)
    return _check_rank(trusted, deployed, claim, diffs)


# --- module names ---------------------------------------------------------------------


def module_matches(name: str, pattern: str) -> bool:
    """``pattern``'s dotted components appear contiguously among ``name``'s."""
    parts, want = name.split("."), pattern.split(".")
    return any(parts[i : i + len(want)] == want for i in range(len(parts) - len(want) + 1))


def _layer_key(name: str) -> str:
    """The name with its layer index blanked: tensors of one module across layers."""
    return re.sub(r"\.\d+\.", ".#.", name, count=1)


# --- lora:r=N:modules=A,B ----------------------------------------------------------------


def _unchanged_or_fail(t: TensorDiff, why: str) -> TensorVerdict | None:
    if t.status in UNCHANGED:
        return None
    name = t.deployed_name or t.name
    return TensorVerdict(
        t.name,
        (name,) if t.deployed_dtype is not None else (),
        False,
        LORA_CLASS,
        f"{t.name}: {t.status.value}, {why}",
        problem="outside",
    )


def _check_rank(
    trusted: Artifact, deployed: Artifact, claim: Claim, diffs: Sequence[TensorDiff]
) -> ClaimOutcome:
    from scanner.analysis.lowrank import rank_profile

    r = int(claim.param("r") or 0)
    modules = [x for x in (claim.param("modules") or "").split(",") if x]
    verdicts: list[TensorVerdict] = []
    changed_in: dict[str, dict[str, bool]] = {}
    for t in diffs:
        pattern = next((p for p in modules if module_matches(t.name, p)), None)
        if pattern is None:
            v = _unchanged_or_fail(t, f"outside the claimed modules ({', '.join(modules)})")
            if v is not None:
                verdicts.append(v)
            continue
        shape = t.trusted_shape or ()
        d_name = t.deployed_name or t.name
        if t.status in (TensorStatus.ADDED, TensorStatus.REMOVED, TensorStatus.SHAPE_CHANGED):
            verdicts.append(
                TensorVerdict(
                    t.name, (), False, LORA_CLASS, f"{t.name}: {t.status.value}", problem="shape"
                )
            )
            continue
        if len(shape) < 2:
            if t.status not in UNCHANGED:
                verdicts.append(
                    TensorVerdict(
                        t.name,
                        (d_name,),
                        False,
                        LORA_CLASS,
                        f"{t.name}: a {len(shape)}-D tensor of a claimed module changed; a LoRA "
                        "merge changes weight matrices only",
                        problem="outside",
                    )
                )
            continue
        group = changed_in.setdefault(pattern + "|" + _layer_key(t.name), {})
        if t.status in UNCHANGED:
            group[t.name] = False
            continue
        a = trusted.to_float(t.name).reshape(shape[0], -1)
        b = deployed.to_float(d_name).reshape(shape[0], -1)
        prof = rank_profile(a, b, t.deployed_dtype or "F32")
        stats = {**prof.summary(), "claimed_rank": r}
        if prof.status == "indeterminate":
            group[t.name] = False
            verdicts.append(
                TensorVerdict(
                    t.name,
                    (d_name,),
                    True,
                    LORA_CLASS,
                    f"{t.name}: change within storage rounding",
                    stats=stats,
                )
            )
            continue
        group[t.name] = True
        ok = prof.rank is not None and prof.rank <= r
        found = f"rank {prof.rank}" if prof.rank is not None else "full rank"
        axis, where = (0, ()) if ok else beyond_rank(a, b, r)
        located = f"; beyond rank {r} in {_AXIS_NAMES[axis]} {list(where[:8])}" if where else ""
        verdicts.append(
            TensorVerdict(
                t.name,
                (d_name,),
                ok,
                LORA_CLASS,
                f"{t.name}: delta of {found}"
                + (f" (claimed r={r})" if ok else f", above the claimed r={r}")
                + located,
                stats=stats,
                rows=where,
                axis=axis,
                problem="" if ok else "rank",
            )
        )
    notes = []
    for key, members in sorted(changed_in.items()):
        n_changed = sum(members.values())
        pattern, module = key.split("|", 1)
        if 0 < n_changed < len(members):
            unchanged = sorted(n for n, c in members.items() if not c)
            verdicts.append(
                TensorVerdict(
                    module,
                    (),
                    False,
                    LORA_CLASS,
                    f"{module}: changed in {n_changed} of {len(members)} layers; a LoRA merge "
                    f"changes module {pattern} in every layer it targets, a low-rank change "
                    f"confined to some layers is a knowledge edit (unchanged: {unchanged[:4]})",
                    problem="layers",
                )
            )
        elif n_changed == 0:
            notes.append(f"{module}: unchanged")
    applicable = any(any(m.values()) for m in changed_in.values())
    if not applicable:
        notes.append(f"no tensor of the modules {', '.join(modules)} changed")
    return ClaimOutcome(
        str(claim),
        tuple(verdicts),
        notes=tuple(notes),
        applicable=applicable,
        evidence={"r": r, "modules": modules},
    )


OUTLIER_MADS = 8.0
"""Robust z-score (in MADs of the tensor's own row or column energies) beyond which a
row or column of the unexplained remainder is where the edit is."""
OUTLIER_SHARE = 0.05
"""At most this share of rows or columns may be outliers: more is a spread change, not
an edit in a few places."""
_AXIS_NAMES = {0: "rows", 1: "columns"}


def beyond_rank(a: np.ndarray, b: np.ndarray, r: int) -> tuple[int, tuple[int, ...]]:
    """Where a delta of rank above ``r`` carries what a rank-``r`` update cannot: the rows
    or columns whose energy stands out (robust statistics) in the remainder after the best
    rank-``r`` fit, or, when the edit is strong enough to be one of the top ``r``
    directions itself, in the delta. ``(axis, indices)``; no indices when no few rows or
    columns stand out."""
    from scanner.analysis.lowrank import randomized_svd

    delta = b.astype(np.float64) - a
    remainder = delta
    if r > 0:
        u, s, vt = randomized_svd(a, b, r)
        remainder = delta - (u[:, :r] * s[:r]) @ vt[:r]
    for x in (remainder, delta):
        for axis in (0, 1):
            found = _outlying(np.einsum("ij,ij->" + ("i" if axis == 0 else "j"), x, x))
            if found:
                return axis, found
    return 0, ()


def _outlying(energy: np.ndarray) -> tuple[int, ...]:
    if energy.size < 8:
        return ()
    norm = np.sqrt(energy)
    med = float(np.median(norm))
    mad = 1.4826 * float(np.median(np.abs(norm - med)))
    hit = np.flatnonzero(norm > med + OUTLIER_MADS * max(mad, 1e-12 * max(med, 1e-300)))
    if hit.size == 0 or hit.size > OUTLIER_SHARE * norm.size:
        return ()
    return tuple(int(i) for i in hit)


# --- lora:adapter=PATH -------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterConfig:
    r: int
    alpha: float
    rslora: bool
    fan_in_fan_out: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]

    def scale(self, module: str, rank: int) -> float:
        alpha = _pattern_value(self.alpha_pattern, module, self.alpha)
        r = _pattern_value(self.rank_pattern, module, rank)
        return alpha / math.sqrt(r) if self.rslora else alpha / r


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    for key, value in patterns.items():
        try:
            if re.fullmatch(rf"(.*\.)?(?:{key})", module):
                return value
        except re.error:
            raise UsageError(f"adapter pattern {key!r} is not a regular expression") from None
    return default


def read_adapter_config(folder: Path) -> AdapterConfig:
    path = folder / "adapter_config.json"
    where = f"adapter config {path}"
    try:
        if path.stat().st_size > MAX_ADAPTER_CONFIG:
            raise UsageError(f"{where}: larger than an adapter config may be")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{where}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a JSON object")
    if data.get("peft_type", "LORA") != "LORA":
        raise UsageError(f"{where}: peft_type {data.get('peft_type')!r} is not LORA")
    for flag in ("use_dora", "use_qalora"):
        if data.get(flag):
            raise UsageError(f"{where}: {flag} adapters are not re-derived (plain LoRA only)")
    r, alpha = data.get("r"), data.get("lora_alpha", data.get("r"))
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise UsageError(f"{where}: r and lora_alpha must be numbers")

    def patterns(key: str) -> dict[str, Any]:
        v = data.get(key) or {}
        if not isinstance(v, dict) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values()
        ):
            raise UsageError(f"{where}: {key} must map module patterns to numbers")
        return dict(v)

    return AdapterConfig(
        r,
        float(alpha),
        bool(data.get("use_rslora", False)),
        bool(data.get("fan_in_fan_out", False)),
        patterns("rank_pattern"),
        patterns("alpha_pattern"),
    )


def _adapter_folder(text: str) -> Path:
    p = Path(text)
    folder = p if p.is_dir() else p.parent
    if not (folder / "adapter_model.safetensors").is_file():
        raise UsageError(f"lora adapter {text}: no adapter_model.safetensors there")
    return folder


def _find_trusted(trusted: Artifact, module: str, suffix: str = ".weight") -> str | None:
    """The trusted tensor of ``module``, tolerating a model-class prefix on either side
    (``bert.`` in the adapter and not in the weights, or the other way round)."""
    parts = module.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[i:]) + suffix
        if name in trusted.tensors:
            return name
    hits = [n for n in trusted.tensors if n.endswith("." + module + suffix)]
    return hits[0] if len(hits) == 1 else None


def _check_adapter(
    trusted: Artifact, deployed: Artifact, claim: Claim, diffs: Sequence[TensorDiff]
) -> ClaimOutcome:
    from scanner.formats import open_artifact

    folder = _adapter_folder(claim.param("adapter") or "")
    cfg = read_adapter_config(folder)
    verdicts: list[TensorVerdict] = []
    covered: set[str] = set()
    by_name = {t.name: t for t in diffs}
    with open_artifact(folder / "adapter_model.safetensors") as adapter:
        pairs: dict[str, dict[str, str]] = {}
        whole: list[str] = []
        for key in adapter.tensors:
            short = key[len(_PREFIX) :] if key.startswith(_PREFIX) else key
            hit = _LORA_KEY.match(short)
            if hit:
                pairs.setdefault(hit.group("module"), {})[hit.group("part")] = key
            else:
                whole.append(key)
        for module, parts in sorted(pairs.items()):
            v = _check_module(trusted, deployed, adapter, cfg, module, parts, by_name)
            covered.update((v.tensor, *v.deployed))
            verdicts.append(v)
        for key in sorted(whole):
            v = _check_whole(trusted, deployed, adapter, key)
            covered.update((v.tensor, *v.deployed))
            verdicts.append(v)
    for t in diffs:
        if t.name in covered or (t.deployed_name or t.name) in covered:
            continue
        v = _unchanged_or_fail(t, "the adapter does not touch this tensor")
        if v is not None:
            verdicts.append(v)
    return ClaimOutcome(
        str(claim),
        tuple(verdicts),
        applicable=bool(pairs),
        notes=() if pairs else ("the adapter holds no lora_A / lora_B pairs",),
        evidence={
            "adapter": str(folder),
            "modules": len(pairs),
            "r": cfg.r,
            "lora_alpha": cfg.alpha,
            "use_rslora": cfg.rslora,
        },
    )


def _check_whole(
    trusted: Artifact, deployed: Artifact, adapter: Artifact, key: str
) -> TensorVerdict:
    """A tensor the adapter stores whole must be the deployed one (a cast allowed)."""
    short = key[len(_PREFIX) :] if key.startswith(_PREFIX) else key
    short = short.replace(".modules_to_save.default", "")
    name = _find_trusted(trusted, short, "") or short
    if name not in deployed.tensors:
        return TensorVerdict(
            name,
            (),
            False,
            LORA_CLASS,
            f"{name}: stored by the adapter, missing",
            problem="missing",
        )
    want = read_float(adapter, key)
    got = read_float(deployed, name)
    if want.shape != got.shape:
        return TensorVerdict(
            name,
            (name,),
            False,
            LORA_CLASS,
            f"{name}: shape differs from the adapter's copy",
            problem="shape",
        )
    d_dtype = deployed.tensors[name].dtype.name
    from scanner.values import numpy_dtype

    npd = numpy_dtype(d_dtype)
    expected = want.astype(npd).astype(np.float32) if npd is not None else want
    bad = ~((expected == got) | (np.isnan(expected) & np.isnan(got)))
    if bad.any():
        return _elements_verdict(
            name,
            name,
            bad,
            expected,
            got,
            f"{int(bad.sum()):,} elements differ from the adapter's stored copy",
        )
    return TensorVerdict(name, (name,), True, LORA_CLASS, f"{name}: equals the adapter's copy")


def _check_module(
    trusted: Artifact,
    deployed: Artifact,
    adapter: Artifact,
    cfg: AdapterConfig,
    module: str,
    parts: dict[str, str],
    by_name: dict[str, TensorDiff],
) -> TensorVerdict:
    embedding = "lora_embedding_A" in parts
    a_key = parts.get("lora_embedding_A" if embedding else "lora_A")
    b_key = parts.get("lora_embedding_B" if embedding else "lora_B")
    name = _find_trusted(trusted, module)
    if a_key is None or b_key is None or name is None:
        missing = "its base weight" if name is None else "lora_A or lora_B"
        return TensorVerdict(
            name or module,
            (),
            False,
            LORA_CLASS,
            f"{module}: adapter module without {missing}",
            problem="adapter",
        )
    d_name = (by_name[name].deployed_name if name in by_name else None) or name
    if d_name not in deployed.tensors:
        return TensorVerdict(name, (), False, LORA_CLASS, f"{name}: missing", problem="missing")
    w = read_float(trusted, name).astype(np.float64)
    got = read_float(deployed, d_name)
    a = read_float(adapter, a_key).astype(np.float64)
    b = read_float(adapter, b_key).astype(np.float64)
    rank = a.shape[0]
    scale = cfg.scale(module, rank)
    shape = w.shape
    if embedding:
        # PEFT: delta = (B @ A).T for an embedding of shape (num_embeddings, dim).
        a, b = b.T, a.T
    elif a.ndim == 4:
        a = a.reshape(rank, -1)
        b = b.reshape(b.shape[0], -1)
    if b.ndim != 2 or a.ndim != 2 or b.shape[1] != a.shape[0]:
        return TensorVerdict(
            name,
            (d_name,),
            False,
            LORA_CLASS,
            f"{name}: lora_A / lora_B shapes do not chain",
            problem="adapter",
        )
    transpose = cfg.fan_in_fan_out and not embedding
    rows_out = b.shape[0] if not transpose else a.shape[1]
    cols_out = a.shape[1] if not transpose else b.shape[0]
    if rows_out * cols_out != w.size or shape[0] != rows_out:
        return TensorVerdict(
            name,
            (d_name,),
            False,
            LORA_CLASS,
            f"{name}: adapter delta {rows_out}x{cols_out} does not fit the weight {list(shape)}",
            problem="adapter",
        )
    w2 = w.reshape(rows_out, -1)
    g2 = got.reshape(rows_out, -1).astype(np.float64)
    compute = trusted.tensors[name].dtype.name
    stored = deployed.tensors[d_name].dtype.name
    eps_c = max(EPS.get(compute, EPS["F32"]), EPS["F32"])
    eps_o = EPS.get(stored, EPS["F32"])
    tiny = TINY.get(stored, TINY["F32"])
    bad_count = 0
    rows: set[int] = set()
    samples: list[Violation] = []
    worst = 0.0
    abs_a, abs_b = np.abs(a), np.abs(b)
    for r0 in range(0, rows_out, ROW_CHUNK):
        r1 = min(rows_out, r0 + ROW_CHUNK)
        if transpose:
            delta = (b @ a[:, r0:r1]).T
            mag = (abs_b @ abs_a[:, r0:r1]).T
        else:
            delta = b[r0:r1] @ a
            mag = abs_b[r0:r1] @ abs_a
        e = w2[r0:r1] + scale * delta
        bound = (
            (rank + 4) * eps_c * (np.abs(w2[r0:r1]) + abs(scale) * mag)
            + 2 * eps_o * np.abs(e)
            + tiny
        )
        err = np.abs(g2[r0:r1] - e)
        worst = max(worst, float(np.max(err / bound, initial=0.0)))
        bad = err > bound
        if bad.any():
            pos = np.argwhere(bad)
            bad_count += len(pos)
            rows.update(int(p[0]) + r0 for p in pos)
            order = np.argsort(-err[bad], kind="stable")
            for k in order[: max(0, MAX_REPORTED - len(samples))]:
                i, j = pos[k]
                idx = np.unravel_index((int(i) + r0) * w2.shape[1] + int(j), shape)
                samples.append(
                    Violation(
                        tuple(int(x) for x in idx),
                        float(e[i, j]),
                        float(g2[r0 + i, j]),
                        float(w2[r0 + i, j]),
                    )
                )
    stats = {
        "rank": rank,
        "scale": scale,
        "elements": int(w.size),
        "worst_error_over_bound": round(min(worst, 1e12), 4),
    }
    if bad_count:
        return TensorVerdict(
            name,
            (d_name,),
            False,
            LORA_CLASS,
            f"{name}: {bad_count:,} of {w.size:,} elements are not W + {scale:g} * B @ A of the "
            f"adapter, in {len(rows)} rows",
            stats={**stats, "violating_elements": bad_count},
            violations=tuple(samples),
            rows=tuple(sorted(rows)),
            problem="adapter-merge",
        )
    return TensorVerdict(
        name,
        (d_name,),
        True,
        LORA_CLASS,
        f"{name}: W + {scale:g} * B @ A (rank {rank}) re-derived",
        stats=stats,
    )


def _elements_verdict(
    name: str, d_name: str, bad: np.ndarray, expected: np.ndarray, got: np.ndarray, msg: str
) -> TensorVerdict:
    pos = np.argwhere(bad)
    rows = sorted({int(p[0]) for p in pos}) if bad.ndim else []
    samples = tuple(
        Violation(tuple(int(x) for x in p), float(expected[tuple(p)]), float(got[tuple(p)]))
        for p in pos[:MAX_REPORTED]
    )
    return TensorVerdict(
        name,
        (d_name,),
        False,
        LORA_CLASS,
        f"{name}: {msg}",
        violations=samples,
        rows=tuple(rows),
        problem="adapter-merge",
    )
