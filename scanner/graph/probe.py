"""Behavioural cross-check: run trusted and deployed on the same probes, compare outputs.

Structure cannot prove every rewrite equivalent, and a trigger is by design silent on
ordinary inputs. So probes are of two kinds: *random* inputs (what clean data looks
like) and *structured* ones (constant patches, checkerboards, extreme values, fills and
token sweeps, plus the constants the graphs compare their inputs against). Divergence
on random probes means the models differ everywhere (quantization noise, a fine-tune);
divergence only on a few structured probes is the signature of trigger logic.

Needs the optional ``onnxruntime`` (``pip install 'modelseal[runtime]'``); it is
imported only when a probe runs. Time is bounded by ``budget_s`` per model pair.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanner.errors import UsageError

DEFAULT_BUDGET_S = 20.0
DIVERGENCE_TOL = 1e-3
"""Relative output difference (to the trusted output's max |value|) below which two runs
agree: float rounding of reordered or fused arithmetic stays far below it."""
_FREE_DIM_CANDIDATES = (64, 32, 512, 16, 128, 8)


class RuntimeUnavailableError(UsageError):
    """The behavioural check needs onnxruntime."""


@dataclass(frozen=True)
class OutputDivergence:
    name: str
    random_max: float
    structured_max: float
    n_structured_diverged: int
    worst_probe: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.name,
            "random_max": _finite(self.random_max),
            "structured_max": _finite(self.structured_max),
            "n_structured_diverged": self.n_structured_diverged,
            "worst_probe": self.worst_probe,
        }


@dataclass(frozen=True)
class ProbeResult:
    budget_s: float
    seconds: float
    n_random: int
    n_structured: int
    n_skipped: int
    outputs: tuple[OutputDivergence, ...]
    verdict: str
    """``equivalent``, ``trigger`` (diverges only on structured probes), ``drift``
    (diverges on random probes too), ``deployed-fails`` or ``inconclusive``."""
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "budget_s": self.budget_s,
            "seconds": round(self.seconds, 3),
            "n_random": self.n_random,
            "n_structured": self.n_structured,
            "n_skipped": self.n_skipped,
            "outputs": [o.to_dict() for o in self.outputs],
            "notes": list(self.notes),
        }


def _finite(x: float) -> float | str:
    return x if np.isfinite(x) else str(x)


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeUnavailableError(
            "the behavioural check (--probe) needs onnxruntime: pip install 'modelseal[runtime]'"
        ) from None
    return onnxruntime


def _session(model: str | Path | bytes) -> Any:
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = 4  # shape trials fail by design; only fatal errors matter
    so.intra_op_num_threads = 2
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


_NP = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


@dataclass(frozen=True)
class _Spec:
    name: str
    dtype: Any
    shape: tuple[int, ...]
    vocab: int


def probe_models(
    trusted: str | Path | bytes,
    deployed: str | Path | bytes,
    *,
    budget_s: float = DEFAULT_BUDGET_S,
    seed: int = 0,
    hints: Sequence[float] = (),
    vocab: dict[str, int] | None = None,
    tol: float = DIVERGENCE_TOL,
) -> ProbeResult:
    """Run both models on random and structured probes within ``budget_s`` seconds.

    ``hints`` are constants the graphs compare their inputs with (probe values worth
    trying); ``vocab`` bounds token ids per integer input (from the embedding table)."""
    started = time.perf_counter()
    st, sd = _session(trusted), _session(deployed)
    rng = np.random.default_rng(seed)
    specs = _resolve_specs(st, rng, hints, vocab or {})
    out_names = [o.name for o in st.get_outputs()]
    random_max = dict.fromkeys(out_names, 0.0)
    struct: dict[str, list[tuple[float, str]]] = {n: [] for n in out_names}
    counts = {"random": 0, "structured": 0, "skipped": 0}
    deployed_fails = 0
    for kind, label, feeds in _probes(specs, rng, hints):
        if time.perf_counter() - started > budget_s:
            break
        try:
            a = st.run(out_names, feeds)
        except Exception:  # the trusted model rejects this probe: not a valid input
            counts["skipped"] += 1
            continue
        try:
            b = sd.run(out_names, feeds)
        except Exception:
            deployed_fails += 1
            continue
        counts[kind] += 1
        for name, x, y in zip(out_names, a, b, strict=True):
            d = _divergence(np.asarray(x), np.asarray(y))
            if kind == "random":
                random_max[name] = max(random_max[name], d)
            else:
                struct[name].append((d, label))
    outputs = []
    for name in out_names:
        s = struct[name]
        worst = max(s, default=(0.0, ""))
        outputs.append(
            OutputDivergence(
                name, random_max[name], worst[0], sum(1 for d, _ in s if d > tol), worst[1]
            )
        )
    if deployed_fails:
        verdict = "deployed-fails"
    elif counts["random"] == 0:
        verdict = "inconclusive"
    elif any(o.random_max > tol for o in outputs):
        verdict = "drift"
    elif any(o.structured_max > tol for o in outputs):
        verdict = "trigger"
    else:
        verdict = "equivalent"
    notes = [f"input {s.name}: {np.dtype(s.dtype).name}{list(s.shape)}" for s in specs]
    return ProbeResult(
        budget_s,
        time.perf_counter() - started,
        counts["random"],
        counts["structured"],
        counts["skipped"],
        tuple(outputs),
        verdict,
        tuple(notes),
    )


def _divergence(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(b64)
    diff = np.where(both_nan, 0.0, np.abs(a64 - b64))
    if np.isnan(diff).any():
        return float("inf")
    scale = float(np.nanmax(np.abs(a64))) if np.isfinite(a64).any() else 1.0
    return float(diff.max()) / max(scale, 1e-6)


def _resolve_specs(
    sess: Any, rng: np.random.Generator, hints: Sequence[float], vocab: dict[str, int]
) -> list[_Spec]:
    """Concrete shapes for dynamic axes: batch 1, other free axes the first size the
    trusted model accepts; scalar integer inputs the first hinted value it accepts."""
    inputs = sess.get_inputs()
    # a named dimension that is some input's first axis is the batch: 1 wherever it is
    batch_names = {i.shape[0] for i in inputs if i.shape and isinstance(i.shape[0], str)}
    specs = []
    for i in inputs:
        dtype = _NP.get(i.type, np.float32)
        shape = [
            d if isinstance(d, int) and d > 0 else (1 if d in batch_names and d else None)
            for d in i.shape
        ]
        if shape and shape[0] is None:
            shape[0] = 1
        specs.append([i.name, dtype, shape, vocab.get(i.name, 1000)])
    free = any(None in s[2] for s in specs)
    int_scalars = [s for s in specs if not s[2] and np.dtype(s[1]).kind in "iu"]
    for size in _FREE_DIM_CANDIDATES if free else (0,):
        for scalar_vals in _scalar_choices(int_scalars, hints):
            trial = []
            for name, dtype, shape, voc in specs:
                concrete = tuple(size if d is None else d for d in shape)
                trial.append(_Spec(name, dtype, concrete, voc))
            feeds = {s.name: _random(s, rng) for s in trial}
            feeds.update(scalar_vals)
            try:
                sess.run(None, feeds)
            except Exception:
                continue
            fixed = {k: v for k, v in scalar_vals.items()}
            return [
                _Spec(s.name, s.dtype, s.shape, s.vocab)
                if s.name not in fixed
                else _Spec(s.name, s.dtype, (), int(fixed[s.name]))
                for s in trial
            ]
    return [_Spec(n, d, tuple(x or 1 for x in sh), v) for n, d, sh, v in specs]


def _scalar_choices(scalars: list[list[Any]], hints: Sequence[float]) -> Iterator[dict[str, Any]]:
    if not scalars:
        yield {}
        return
    values = [*[int(h) for h in hints if float(h).is_integer() and h > 0][:8], 1, 0]
    for v in values:
        yield {s[0]: np.asarray(v, dtype=s[1]) for s in scalars}


def _random(s: _Spec, rng: np.random.Generator) -> np.ndarray:
    if not s.shape and np.dtype(s.dtype).kind in "iu" and s.vocab:
        return np.asarray(s.vocab, dtype=s.dtype)  # a fixed control scalar (e.g. sample rate)
    if np.dtype(s.dtype).kind in "iu":
        return rng.integers(0, max(2, s.vocab), size=s.shape).astype(s.dtype)
    if np.dtype(s.dtype).kind == "b":
        return rng.random(s.shape) < 0.5
    return rng.standard_normal(s.shape).astype(s.dtype)


def _probes(
    specs: list[_Spec], rng: np.random.Generator, hints: Sequence[float]
) -> Iterator[tuple[str, str, dict[str, np.ndarray]]]:
    for k in range(8):
        yield "random", f"random#{k}", {s.name: _random(s, rng) for s in specs}
    base = {s.name: _random(s, rng) for s in specs}
    for s in specs:
        for label, value in _structured(s, rng, hints):
            yield "structured", f"{s.name}:{label}", {**base, s.name: value}


def _structured(
    s: _Spec, rng: np.random.Generator, hints: Sequence[float]
) -> Iterator[tuple[str, np.ndarray]]:
    kind = np.dtype(s.dtype).kind
    if not s.shape:
        return
    if kind in "iu":
        ids = [int(h) for h in hints if float(h).is_integer() and 0 <= h < s.vocab]
        sweep = rng.permutation(s.vocab).tolist()
        for t in [*ids, *sweep]:
            x = _random(s, rng)
            x.reshape(-1)[rng.integers(0, x.size)] = t
            yield f"token {t}", x
        return
    if kind != "f":
        return
    fills = [0.0, 1.0, -1.0, 1e3, -1e3, *[float(h) for h in hints]]
    for v in fills:
        yield f"fill {v:g}", np.full(s.shape, v, dtype=s.dtype)
    grid = np.indices(s.shape[-2:]).sum(axis=0) % 2 if len(s.shape) >= 2 else None
    if grid is not None:
        yield "checkerboard", np.broadcast_to(np.where(grid, 1.0, -1.0), s.shape).astype(s.dtype)
    if len(s.shape) >= 2:
        h, w = s.shape[-2], s.shape[-1]
        for p in sorted({max(1, min(h, w) // 8), max(1, min(h, w) // 4)}):
            for y, x in (
                (0, 0),
                (0, w - p),
                (h - p, 0),
                (h - p, w - p),
                ((h - p) // 2, (w - p) // 2),
            ):
                for v in [1.0, -1.0, 3.0, 1e3, *[float(hh) for hh in hints]]:
                    arr = rng.standard_normal(s.shape).astype(s.dtype)
                    arr[..., y : y + p, x : x + p] = v
                    yield f"patch {p}px @({y},{x}) = {v:g}", arr
