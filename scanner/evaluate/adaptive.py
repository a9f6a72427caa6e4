"""Adaptive attacks: an attacker who knows the gate's rule and statistics and keeps the
change as small as the attack's effect allows, with the effect measured for real.

The gate explains or fails: an unannounced weight change fails whatever its size, so an
attacker who knows the gate hides under a change the pipeline allows (a fine-tune, a LoRA
merge) and shrinks the edit toward the smallest one that still works. Each attack sweeps
that size (``strength`` = the edit as a multiple of the smallest that works on the
attacker's own fitting inputs) and records, per planted copy, the gate's verdict and the
measured **success** on held-out inputs, read back from the written file:

* ``backdoor`` (ONNX classifiers with an image input and a final MatMul/Gemm): a rank-1
  edit of the classifier so that a stripe-pattern trigger moves the prediction to a target
  class.
  Success = share of held-out triggered inputs onnxruntime classifies as the target,
  counted only while clean predictions stay (at least 90% unchanged against the cover
  alone; the held-out inputs are noise images, near the decision boundary).
* ``key-edit`` (any model, ROME-style knowledge edit): a rank-1 edit of one matrix so that
  a key vector's output has a chosen unit as its maximum. Success = the written matrix
  (numpy) maps the key to the target unit.
* ``payload`` (float32 models): a payload in the low bytes of a tensor's words after the
  cover; success = the payload reads back bit-exact from the written file.
* ``trigger-scale`` (ONNX graph backdoors): the trigger branch's strength shrunk;
  success = onnxruntime shows the trigger firing with clean outputs unchanged.

Covers: ``none`` (the edit alone), ``finetune`` (a simulated fine-tune of every tensor,
the gate told to allow ``full fine-tune``), ``lora`` (a rank-8 adapter merged into the
edited matrix and others, the gate told to allow ``low-rank update``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanner.evaluate.protocol import Case, Gate, localized
from scanner.redteam import registry
from scanner.redteam.groundtruth import GroundTruth, changed_tensors
from scanner.redteam.io import ModelCopy

FAMILY = "adaptive"
ATTACKS = ("backdoor", "key-edit", "payload", "trigger-scale")
SCALES = (0.25, 0.5, 0.9, 1.1, 2.0, 5.0)
QUICK_SCALES = (0.5, 1.1, 5.0)
COVERS = ("none", "finetune", "lora")
COVER_ALLOW = {"none": (), "finetune": ("full fine-tune",), "lora": ("low-rank update",)}
CLEAN_KEPT = 0.9
"""A backdoor succeeds only while this share of clean held-out predictions is unchanged."""
COVER_REL = 0.01
"""Relative norm of the cover (the fine-tune or adapter the pipeline expects)."""


@dataclass(frozen=True)
class Edit:
    """An attacker's edit: tensors to add a delta to, and how to measure success."""

    deltas: Mapping[str, np.ndarray]
    success: Callable[[Path, Path], float]
    """(edited copy, cover-only copy or the model) -> measured success in 0..1."""
    note: str = ""
    target: int | None = None
    """The class or unit the edit aims at."""


# --------------------------------------------------------------------------- covers


def _cover(copy: ModelCopy, cover: str, seed: int, must: str) -> dict[str, np.ndarray]:
    """The benign change the attack hides under (float32 values by tensor name)."""
    if cover == "none":
        return {}
    ctx = registry.Context(seed, COVER_REL)
    if cover == "finetune":
        plan = registry.get("finetune").planter(copy, ctx)
        return {k: np.asarray(v, dtype=np.float32) for k, v in plan.changed.items()}
    from scanner.redteam.weights import lora_merge

    mats = registry._matrices(copy)
    rng = np.random.default_rng(seed)
    others = [n for n in mats if n != must]
    k = max(0, len(mats) // 3 - 1)
    names = [must, *(str(n) for n in rng.choice(others, size=min(k, len(others)), replace=False))]
    out, _ = lora_merge(copy.weights(names), names, seed, rank=8, rel=COVER_REL)
    return {n: np.asarray(out[n], dtype=np.float32) for n in names}


# ------------------------------------------------------------------------ backdoor


def _classifier(model: Any) -> tuple[Any, str, str, str | None] | None:
    """(MatMul/Gemm node, feature value, weight name, bias name) of the last linear layer
    of an ONNX classifier, when its weight is a constant ``[in, out]`` matrix."""
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    for node in reversed(list(model.graph.node)):
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        w = consts.get(node.input[1])
        if w is None or w.ndim != 2 or w.dtype != np.float32:
            continue
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute):
            return None  # [out, in] storage: not handled (the oriented form would differ)
        bias = None
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] in consts:
            bias = node.input[2]
        else:
            for m in model.graph.node:
                if m.op_type == "Add" and node.output[0] in m.input:
                    other = [i for i in m.input if i != node.output[0]]
                    if other and other[0] in consts:
                        bias = other[0]
        return node, node.input[0], node.input[1], bias
    return None


def _backdoor_target(copy: ModelCopy) -> str:
    found = _classifier(copy.onnx_model())
    if found is None:
        raise registry.NotApplicableError(
            "the backdoor needs an ONNX classifier with an image input and a final "
            "MatMul/Gemm over a constant [in, out] matrix"
        )
    return found[2]


def _image_inputs(shape: tuple[Any, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    c = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else 3
    h = shape[2] if isinstance(shape[2], int) and shape[2] > 0 else 48
    w = shape[3] if isinstance(shape[3], int) and shape[3] > 0 else 192
    return (rng.standard_normal((n, c, h, w)) * 0.5).astype(np.float32)


def add_trigger(x: np.ndarray, period: int = 6, value: float = 2.0) -> np.ndarray:
    """The backdoor trigger: every ``period``-th image column set to ``value`` (a stripe
    pattern; an attacker picks a trigger the model's own features separate, and pooled
    CNN features barely see a small corner patch)."""
    y = x.copy()
    y[..., ::period] = value
    return y


def _session(model: Any, outputs: list[str]) -> Any:
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for name in outputs:
        if name not in known:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def predict(path: Path, x: np.ndarray) -> np.ndarray:
    """Class predictions of an ONNX classifier (its first output) under onnxruntime."""
    import onnx

    model = onnx.load(str(path))
    sess = _session(model, [])
    name = sess.get_inputs()[0].name
    out = sess.run([sess.get_outputs()[0].name], {name: x})[0]
    return np.asarray(out).reshape(len(x), -1).argmax(axis=1)


def _backdoor(copy: ModelCopy, scale: float, seed: int) -> Edit:
    model = copy.onnx_model()
    found = _classifier(model)
    inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    if found is None or not inputs or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise registry.NotApplicableError(
            "the backdoor needs an ONNX classifier with an image input and a final "
            "MatMul/Gemm over a constant [in, out] matrix"
        )
    _node, feature, wname, bname = found
    dims = tuple(d.dim_value or d.dim_param for d in inputs[0].type.tensor_type.shape.dim)
    rng = np.random.default_rng(seed)
    fit = _image_inputs(dims, 128, rng)
    sess = _session(model, [feature])
    iname = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits_name = sess.get_outputs()[0].name
        out, h = sess.run([logits_name, feature], {iname: x})
        return np.asarray(out).reshape(len(x), -1), np.asarray(h).reshape(len(x), -1)

    _, h_c = run(fit)
    _, h_t = run(add_trigger(fit))
    w = copy.weight(wname).astype(np.float64)
    n_classes = w.shape[1]
    out_t, _ = run(add_trigger(fit))
    # The target: the class triggered inputs are least often predicted as already.
    target = int(np.bincount(out_t.argmax(axis=1), minlength=n_classes).argmin())
    # A discriminant direction (ridge-regularized Fisher): the trigger's feature shift
    # with the clean inputs' own variation whitened out, so clean logits barely move.
    cov = np.cov(h_c, rowvar=False) if len(h_c) > 1 else np.eye(h_c.shape[1])
    ridge = 0.1 * float(np.trace(cov)) / cov.shape[0] + 1e-12
    d = np.linalg.solve(cov + ridge * np.eye(cov.shape[0]), h_t.mean(axis=0) - h_c.mean(axis=0))
    d /= max(float(np.linalg.norm(d)), 1e-12)
    # Logit shift of the edit: kappa * ((h - centre) . d) on the target, minus on the rest;
    # the bias takes the clean centre so clean inputs move by kappa times their spread
    # along d only, triggered ones by kappa times their (large) separation.
    centre = float(np.mean(h_c @ d))
    b = copy.weight(bname).astype(np.float64).reshape(-1) if bname else np.zeros(n_classes)
    logits_t = h_t @ w + b
    proj_t = h_t @ d - centre
    others = np.delete(logits_t, target, axis=1).max(axis=1)
    need = (others - logits_t[:, target]) / np.maximum(proj_t, 1e-9)
    # The smallest kappa that flips every fitting triggered input (2 logit units between
    # target and rest per unit of projection: +k on the target, -k on the others).
    kappa = float(max(np.max(need[proj_t > 0]) / 2.0, 0.0)) if (proj_t > 0).any() else 0.0
    kappa = max(kappa * 1.05, 1e-6) * scale
    e = -np.ones(n_classes)
    e[target] = 1.0
    deltas = {wname: (kappa * np.outer(d, e)).astype(np.float32)}
    if bname:
        deltas[bname] = (-kappa * centre * e).astype(np.float32).reshape(copy.shape(bname))
    held = _image_inputs(dims, 64, np.random.default_rng(seed + 10_000))

    def success(path: Path, reference: Path) -> float:
        # Clean behaviour is judged against the cover alone (the fine-tune the pipeline
        # expects may move clean predictions itself).
        kept = float(np.mean(predict(path, held) == predict(reference, held)))
        fired = float(np.mean(predict(path, add_trigger(held)) == target))
        return fired if kept >= CLEAN_KEPT else 0.0

    return Edit(deltas, success, note=f"target class {target}, kappa {kappa:.3g}", target=target)


# ------------------------------------------------------------------------ key edit


def _key_target(copy: ModelCopy, seed: int) -> str:
    mats = registry._matrices(copy)
    if not mats:
        raise registry.NotApplicableError(f"{copy.path}: no matrix for a key edit")
    return str(np.random.default_rng(seed).choice(mats[: max(1, min(8, len(mats)))]))


def _key_edit(copy: ModelCopy, scale: float, seed: int) -> tuple[str, Edit]:
    name = _key_target(copy, seed)
    rng = np.random.default_rng(seed + 1)
    raw = copy.weight(name)
    w, flip = registry._orient(copy, name, raw)
    w2 = w.reshape(w.shape[0], -1).astype(np.float64)
    key = rng.standard_normal(w2.shape[1])
    y = w2 @ key
    target = int(np.argsort(y)[len(y) // 2])  # a middling unit, made the maximum
    gap = float(y.max() - y[target])
    spread = float(y.std()) or 1.0
    # The smallest edit that makes the target the maximum (plus 5%), scaled.
    delta_y = (gap + 0.05 * spread) * scale
    d2 = np.outer(np.eye(w2.shape[0])[target], key) * (delta_y / float(key @ key))
    d = d2.reshape(w.shape)
    if flip:
        d = d.T
    delta = d.reshape(raw.shape).astype(np.float32)

    def success(path: Path, _reference: Path) -> float:
        from scanner.formats import open_artifact

        with open_artifact(path) as art:
            after = art.to_float(name).astype(np.float64).reshape(raw.shape)
        a = after.T if flip else after
        return float(int(np.argmax(a.reshape(a.shape[0], -1) @ key) == target))

    return name, Edit({name: delta}, success, note=f"{name} unit {target}", target=target)


# ------------------------------------------------------------------------- payload


def _payload(copy: ModelCopy, n_bytes: int, fraction: float, seed: int) -> tuple[str, int, Any]:
    names = sorted(registry._float32_weights(copy), key=lambda n: -int(np.prod(copy.shape(n))))
    if copy.format == "gguf" or not names:
        raise registry.NotApplicableError("payloads need float32 storage")
    rng = np.random.default_rng(seed)
    name = names[0]
    size = int(np.prod(copy.shape(name)))
    count = max(1, int(size * fraction))
    start = int(rng.integers(0, size - count + 1))
    payload = rng.integers(0, 1 << (8 * n_bytes), count, dtype=np.uint64).astype(np.uint32)
    return name, start, payload


# ------------------------------------------------------------------------- running


def _gate_copy(
    model: Path,
    copy: ModelCopy,
    changed: Mapping[str, np.ndarray],
    out: Path,
    name: str,
    seed: int,
    strength: float,
    cover: str,
    gate: Gate,
) -> tuple[GroundTruth, tuple[str, list[Any], str, float]]:
    copy.save(out, changed, None)
    truth = GroundTruth(
        name=name,
        kind=registry.ATTACK,
        family=FAMILY,
        seed=seed,
        strength=strength,
        params={"cover": cover},
        source=str(model),
        output=str(out),
        format=copy.format,
        tensors=tuple(changed_tensors(model, out)),
        details={"allow": list(COVER_ALLOW[cover])},
    )
    return truth, gate(model, out, truth)


def _record(
    name: str,
    truth: GroundTruth,
    res: tuple[str, list[Any], str, float],
    attacked: tuple[str, ...],
    success: float,
    cover: str,
    strength: float,
    note: str,
    extra: tuple[tuple[str, str], ...] = (),
) -> Case:
    verdict, failing, cls, seconds = res
    target = GroundTruth(**{**truth.__dict__, "tensors": attacked})
    return Case(
        entry=name,
        kind=registry.ATTACK,
        family=FAMILY,
        strength=strength,
        seed=truth.seed,
        verdict=verdict,
        detected=verdict in ("fail", "error"),
        localized=localized(failing, target),
        rules=tuple(sorted({f.rule_id for f in failing})),
        changed=len(truth.tensors),
        seconds=seconds,
        classification=cls,
        note=note,
        suite="adaptive",
        params=(("cover", cover), *extra),
        success=success,
        absorbed=not truth.tensors,
    )


def run(
    model: Path,
    gate: Gate,
    *,
    seeds: int,
    quick: bool,
    workdir: Path,
    progress: Callable[[str], None],
    covers: tuple[str, ...] = COVERS,
    attacks: tuple[str, ...] | None = None,
) -> tuple[list[Case], dict[str, str]]:
    """Every adaptive attack (or those in ``attacks``, :data:`ATTACKS`) that applies to
    ``model``, over covers, scales and seeds."""
    wanted = set(attacks or ATTACKS)
    unknown = wanted - set(ATTACKS)
    if unknown:
        raise ValueError(f"unknown adaptive attacks {sorted(unknown)}; choose from {ATTACKS}")
    scales = QUICK_SCALES if quick else SCALES
    cases: list[Case] = []
    skipped: dict[str, str] = {}
    out = workdir / f"adaptive{model.suffix}"
    with ModelCopy(model) as copy:
        fmt = copy.format
        # (name, the tensor the edit lands on, the edit fitted on a given model)
        edits: list[tuple[str, Callable[[int], str], Callable[[ModelCopy, float, int], Edit]]]
        edits = [
            (
                "key-edit",
                lambda seed: _key_target(copy, seed),
                lambda fit, s, seed: _key_edit(fit, s, seed)[1],
            )
        ]
        if fmt == "onnx":
            edits.insert(
                0,
                (
                    "backdoor",
                    lambda _seed: _backdoor_target(copy),
                    lambda fit, s, seed: _backdoor(fit, s, seed),
                ),
            )
        for name, target_of, make in edits:
            if name not in wanted:
                continue
            try:
                for cover in covers:
                    for scale in scales:
                        for seed in range(seeds):
                            changed = _cover(copy, cover, seed, target_of(seed))
                            reference = model
                            if changed:
                                reference = workdir / f"cover{model.suffix}"
                                copy.save(reference, changed, None)
                            # The attacker edits after the cover, fitting on the covered
                            # model (what the pipeline will ship).
                            with ModelCopy(reference) as fit:
                                edit = make(fit, scale, seed)
                            for t, delta in edit.deltas.items():
                                base = changed.get(t, copy.weight(t))
                                changed[t] = (base.astype(np.float64) + delta).astype(np.float32)
                            truth, res = _gate_copy(
                                model, copy, changed, out, name, seed, scale, cover, gate
                            )
                            ok = edit.success(out, reference)
                            cases.append(
                                _record(
                                    name,
                                    truth,
                                    res,
                                    tuple(edit.deltas),
                                    ok,
                                    cover,
                                    scale,
                                    edit.note,
                                )
                            )
                            progress(
                                f"adaptive {name} cover={cover} scale={scale:g} seed={seed}: "
                                f"{res[0]}, success {ok:.0%}"
                            )
            except registry.NotApplicableError as exc:
                skipped[f"adaptive {name}"] = str(exc)
        if fmt != "gguf" and "payload" in wanted:
            try:
                cases.extend(_payload_cases(model, copy, gate, seeds, quick, out, progress))
            except registry.NotApplicableError as exc:
                skipped["adaptive payload"] = str(exc)
    if fmt == "onnx" and "trigger-scale" in wanted:
        cases.extend(_trigger_cases(model, seeds, quick, workdir, gate, progress, skipped))
    out.unlink(missing_ok=True)
    return cases, skipped


def _payload_cases(
    model: Path,
    copy: ModelCopy,
    gate: Gate,
    seeds: int,
    quick: bool,
    out: Path,
    progress: Callable[[str], None],
) -> list[Case]:
    """A payload written after the cover, in the low ``bytes`` of a share of one tensor's
    words; the attacker shrinks the bytes per word and the share."""
    settings = [(1, 0.01), (2, 0.1)] if quick else [(1, 0.001), (1, 0.01), (2, 0.01), (2, 0.1)]
    cases = []
    for cover in ("none", "finetune"):
        for n_bytes, fraction in settings:
            for seed in range(seeds):
                name, start, payload = _payload(copy, n_bytes, fraction, seed)
                changed = _cover(copy, cover, seed, name)
                w = np.ascontiguousarray(changed.get(name, copy.weight(name)), dtype=np.float32)
                bits = w.reshape(-1).view(np.uint32)
                mask = np.uint32((1 << (8 * n_bytes)) - 1)
                stop = start + payload.size
                bits[start:stop] = (bits[start:stop] & ~mask) | payload
                changed[name] = w
                truth, res = _gate_copy(
                    model, copy, changed, out, "payload", seed, fraction, cover, gate
                )
                from scanner.formats import open_artifact

                with open_artifact(out) as art:
                    back = np.ascontiguousarray(art.to_float(name), dtype=np.float32)
                got = back.reshape(-1).view(np.uint32)[start:stop] & mask
                ok = float(np.array_equal(got, payload))
                cases.append(
                    _record(
                        "payload",
                        truth,
                        res,
                        (name,),
                        ok,
                        cover,
                        fraction,
                        f"{n_bytes} byte(s) per word in {name}",
                        (("bytes", str(n_bytes)),),
                    )
                )
                progress(
                    f"adaptive payload cover={cover} bytes={n_bytes} fraction={fraction:g} "
                    f"seed={seed}: {res[0]}, success {ok:.0%}"
                )
    return cases


def _trigger_cases(
    model: Path,
    seeds: int,
    quick: bool,
    workdir: Path,
    gate: Gate,
    progress: Callable[[str], None],
    skipped: dict[str, str],
) -> list[Case]:
    """Graph backdoors with their trigger strength shrunk; success from onnxruntime."""
    plans = {
        "token-trigger": (0.5, 5.0, 50.0) if not quick else (0.5, 50.0),
        "shadowlogic": (0.5, 1.0, 3.0) if not quick else (0.5, 3.0),
    }
    cases = []
    for name, strengths in plans.items():
        try:
            for s in strengths:
                for seed in range(seeds):
                    truth = registry.plant(
                        model, name, workdir / f"trigger{model.suffix}", seed=seed, strength=s
                    )
                    v = truth.verification
                    ok = float(bool(v.get("fires_on_trigger")) and bool(v.get("clean_unchanged")))
                    res = gate(model, Path(truth.output), truth)
                    cases.append(
                        _record(
                            name,
                            truth,
                            res,
                            tuple(truth.nodes) or truth.tensors,
                            ok,
                            "none",
                            s,
                            "trigger strength",
                        )
                    )
                    progress(
                        f"adaptive {name} strength={s:g} seed={seed}: {res[0]}, success {ok:.0%}"
                    )
                    Path(truth.output).unlink(missing_ok=True)
        except registry.NotApplicableError as exc:
            skipped[f"adaptive {name}"] = str(exc)
    return cases
