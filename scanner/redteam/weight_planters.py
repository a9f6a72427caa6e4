"""Planters of weight attacks and of generic tampering."""

from __future__ import annotations

import numpy as np

from scanner.errors import UsageError
from scanner.redteam.io import ModelCopy
from scanner.redteam.plan import (
    Context,
    NotApplicableError,
    Plan,
    Planter,
    _chain,
    _float32_weights,
    _matrices,
    _orient,
    _pick,
)

# ------------------------------------------------------------------ weight attacks


def _sra(last: bool) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        from scanner.redteam.weights import plant_sra

        chain = _chain(copy)
        # span: how many layers (from the end) the chain covers; the attacker chooses it.
        span = ctx.param("span")
        if span is not None:
            if int(span) < 2:
                raise UsageError("span must be at least 2 layers")
            chain = chain[-int(span) :]
        elif last:
            chain = chain[-3:]
        rescale = (ctx.param("rescale") or ("1" if last else "0")) not in ("0", "false", "no")
        width = int(ctx.strength)
        too_narrow = [
            c.weight
            for c in chain[:-1]
            if copy.shape(c.weight)[0] <= width
            or (copy.shape(c.weight)[1] <= width and len(copy.shape(c.weight)) == 2)
        ]
        if too_narrow:
            raise NotApplicableError(
                f"layers too narrow for a {width}-channel chain: {', '.join(too_narrow[:3])}"
            )
        names = [c.weight for c in chain] + [p for c in chain for p in c.params]
        base = copy.weights(names)
        out, truth = plant_sra(base, chain, seed=ctx.seed, rescale=rescale, width=width)
        return Plan(
            {n: out[n] for n in names},
            details={"chain": truth.details["chain"], "rescaled": rescale, "span": len(chain)},
        )

    return run


def _handcrafted(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import plant_handcrafted

    chain = _chain(copy)[-3:]
    names = [c.weight for c in chain]
    base = copy.weights(names)
    # The planter indexes neurons of 2-D matrices; 1x1 convolutions are matrices too.
    squeezed = {}
    for n in names:
        w = base[n]
        if w.ndim > 2 and all(d == 1 for d in w.shape[2:]):
            w = w.reshape(w.shape[:2])
        if w.ndim != 2:
            raise NotApplicableError(
                f"{n}: the handcrafted path needs matrices or 1x1 convolutions, not {copy.shape(n)}"
            )
        squeezed[n] = w
    out, truth = plant_handcrafted(squeezed, chain, ctx.seed, suppress=ctx.strength)
    return Plan({n: out[n].reshape(copy.shape(n)) for n in names}, details=dict(truth.details))


def _rank1(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import plant_rank1

    mats = _matrices(copy)
    name = _pick(copy, ctx, mats, "a rank-1 edit")
    # tensors: the edit spread over N matrices (each at rel / N), an attacker's way to
    # keep every single tensor's change small.
    count = max(1, int(ctx.param("tensors", "1") or 1))
    names = [name, *[n for n in mats if n != name][: count - 1]]
    changed: dict[str, np.ndarray] = {}
    for i, n in enumerate(names):
        out, _ = plant_rank1({n: copy.weight(n)}, n, ctx.seed + i, rel=ctx.strength / len(names))
        changed[n] = out[n]
    return Plan(changed, details={"tensor": name, "tensors": names, "rank": 1})


def _abliteration(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import plant_abliteration

    mats = _matrices(copy, two_d=True)
    oriented = {}
    flips = {}
    for n in mats:
        oriented[n], flips[n] = _orient(copy, n, copy.weight(n))
    widths: dict[int, list[str]] = {}
    for n, w in oriented.items():
        widths.setdefault(w.shape[0], []).append(n)
    # The residual stream is the output width most matrices share.
    width, names = max(widths.items(), key=lambda kv: (len(kv[1]), kv[0]), default=(0, []))
    if len(names) < 2:
        raise NotApplicableError(
            f"{copy.path}: fewer than two matrices share an output "
            "width (no residual stream to edit)"
        )
    names = sorted(names)
    # span: the share of the residual-writing matrices edited (an attacker may edit a
    # few layers only).
    share = float(ctx.param("span", "1") or 1)
    if share < 1:
        keep = max(1, round(share * len(names)))
        names = sorted(str(n) for n in ctx.rng().choice(names, size=keep, replace=False))
    out, _ = plant_abliteration({n: oriented[n] for n in names}, names, ctx.seed)
    changed = {n: (out[n].T.copy() if flips[n] else out[n]) for n in names}
    return Plan(changed, details={"direction_dim": width, "tensors": names})


def _lowbyte(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import plant_lowbyte_payload

    if copy.format == "gguf":
        raise NotApplicableError("low-byte payloads need float32 storage (not GGUF blocks)")
    name = _pick(
        copy,
        ctx,
        sorted(_float32_weights(copy), key=lambda n: -int(np.prod(copy.shape(n)))),
        "a payload",
    )
    n_bytes = int(ctx.param("bytes", "2") or 2)
    # tensors: the payload split over N tensors (each carries fraction / N of its words).
    count = max(1, int(ctx.param("tensors", "1") or 1))
    pool = sorted(_float32_weights(copy), key=lambda n: -int(np.prod(copy.shape(n))))
    names = [name, *[n for n in pool if n != name][: count - 1]]
    changed: dict[str, np.ndarray] = {}
    spans = []
    for i, n in enumerate(names):
        out, truth = plant_lowbyte_payload(
            {n: copy.weight(n)},
            n,
            ctx.seed + i,
            fraction=ctx.strength / len(names),
            n_bytes=n_bytes,
        )
        changed[n] = out[n]
        spans.append({"tensor": n, **truth.details})
    return Plan(changed, details={"tensor": name, "payload": spans, "bytes": n_bytes})


def _exponent(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import flip_exponent_bits

    if copy.format == "gguf":
        raise NotApplicableError("exponent flips need float32 storage (not GGUF blocks)")
    names = _float32_weights(copy)
    if not names:
        raise NotApplicableError(f"{copy.path}: no float32 weight")
    base = copy.weights(names)
    out, truth = flip_exponent_bits(base, names, ctx.seed, count=int(ctx.strength))
    return Plan({n: out[n] for n in truth.tensors}, details=dict(truth.details))


def _prune_activated(copy: ModelCopy, ctx: Context) -> Plan:
    from scanner.redteam.weights import plant_prune_activated

    name = _pick(copy, ctx, _matrices(copy, min_size=4096), "a prune-activated edit")
    sparsity = float(ctx.param("sparsity", "0.5") or 0.5)
    out, truth = plant_prune_activated(
        {name: copy.weight(name)}, name, ctx.seed, sparsity=sparsity, rel=ctx.strength
    )
    return Plan({name: out[name]}, details={"tensor": name, **truth.details})


def _gap(scheme: str) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        from scanner.redteam import quant

        multiple = 1 if scheme == "int8" else 32
        names = _matrices(copy, min_size=4096, multiple=multiple)
        count = int(ctx.param("tensors", "1") or 1)
        first = _pick(copy, ctx, names, "the quantization-gap attack")
        chosen = [first, *[n for n in names if n != first][: count - 1]]
        changed: dict[str, np.ndarray] = {}
        codes_equal: dict[str, bool] = {}
        for i, name in enumerate(chosen):
            w = copy.weight(name)
            if scheme == "int8":
                new = quant.project_into_int8_boxes(w, ctx.strength, seed=ctx.seed + i)
            else:
                project = (
                    quant.project_into_q8_0_boxes
                    if scheme == "q8_0"
                    else quant.project_into_q4_0_boxes
                )
                new = project(w, ctx.strength, seed=ctx.seed + i)
            new = _pin_codes(w, new, scheme)
            same = bool(np.array_equal(_codes(new, scheme), _codes(w, scheme)))
            changed[name] = new
            codes_equal[name] = same
        return Plan(
            changed,
            details={"scheme": scheme, "margin": ctx.strength, "tensors": chosen},
            verification={"codes_equal_malicious_quantization": codes_equal},
        )

    return run


def _codes(w: np.ndarray, scheme: str) -> np.ndarray:
    """Per-element dequantized values of ``w`` under the scheme (equal values = equal
    codes, since the scales are kept)."""
    from scanner.redteam.quant import quantize_int8

    if scheme == "int8":
        q = quantize_int8(w)
        return q.codes.astype(np.float32) * q.scale.reshape((-1,) + (1,) * (w.ndim - 1))
    import gguf

    qt = gguf.GGMLQuantizationType[scheme.upper()]
    flat = np.ascontiguousarray(w, dtype=np.float32).reshape(-1, 32)
    return gguf.quants.dequantize(gguf.quants.quantize(flat, qt), qt).reshape(w.shape)


def _pin_codes(w: np.ndarray, new: np.ndarray, scheme: str) -> np.ndarray:
    """The projection puts values a float32 rounding away from the bin walls, so a few
    (about 3 in 100,000) land in the next bin; those take back their original value,
    so the attacked tensor quantizes exactly to the malicious codes of ``w``."""
    new = np.array(new, dtype=np.float32, copy=True)
    target = _codes(w, scheme)
    for _ in range(3):
        bad = _codes(new, scheme) != target
        if not bad.any():
            break
        new[bad] = w[bad]
    return new


# ---------------------------------------------------------------- generic tampering


def tamper_targets(copy: ModelCopy) -> dict[str, list[str]]:
    """Tensors a generic tamper may hit, by kind (:data:`scanner.redteam.tamper.KINDS`)."""
    from scanner.redteam.tamper import tensor_kind

    out: dict[str, list[str]] = {}
    for n in copy.float_names():
        kind = tensor_kind(n, copy.shape(n), copy.dtype(n))
        if kind is not None:
            out.setdefault(kind, []).append(n)
    return out


def _tamper(shape_kind: str) -> Planter:
    def run(copy: ModelCopy, ctx: Context) -> Plan:
        from scanner.redteam.tamper import tamper

        targets = tamper_targets(copy)
        kind = ctx.param("kind")
        if kind is not None and kind not in targets:
            raise NotApplicableError(
                f"{copy.path}: no {kind} tensor (kinds here: {', '.join(sorted(targets))})"
            )
        names = sorted(targets[kind] if kind else [n for v in targets.values() for n in v])
        if not names:
            raise NotApplicableError(f"{copy.path}: no tensor to tamper with")
        rng = ctx.rng()
        name = ctx.param("tensor") or str(rng.choice(names))
        if name not in copy.artifact.tensors:
            raise UsageError(f"tensor {name!r} is not in {copy.path}")
        new, n = tamper(copy.weight(name), shape_kind, ctx.strength, rng)
        return Plan(
            {name: new},
            details={"tensor": name, "region": shape_kind, "elements": n, "kind": kind or ""},
        )

    return run
