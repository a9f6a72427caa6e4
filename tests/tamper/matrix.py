"""The tamper matrix: plain tampering on real models, judged through the CLI as a user
runs it.

A cell is (model, storage, host, shape, magnitude). One trial tampers one region of one
tensor of the host's output, writes the file the way the storage's tool writes it, and
runs ``modelseal diff TRUSTED DEPLOYED`` with the claim or ``--allow`` a user of that
host gives. The attack is *detected* when the verdict fails (exit 1) and a finding at
or above the failing severity names the tampered tensor and, for a row, output channel
or column of a matrix, that row or column.

Benign twins are the same hosts without a tamper: each must pass with its claim or
``--allow``, and without it must carry no attack or outlier finding (it may still fail
by policy: an unallowed fine-tune does).

Magnitudes, per tensor: ``Nu`` is N x the storage's rounding bound (half an ulp at the
tensor's largest |w|), ``Xmed`` adds X x median |w| (random signs), ``Xmax`` adds X x
max |w|, ``5max`` overwrites with values up to 5 x max |w|. Code storages move codes by
1 or 3 steps or to the far rail.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.tamper import hosts, storage
from tests.tamper.regions import REGIONS, add_delta, overwrite, region_mask
from tests.tamper.subjects import Subject, gguf_quantized, gguf_target

FLOAT_STORAGES = ("F32", "F16", "BF16")
CODE_STORAGES = ("int8", "Q8_0", "Q4_K", "Q6_K")
STORAGES = FLOAT_STORAGES + CODE_STORAGES
HOSTS = ("alone", "finetune", "lora", "cast", "quantized")
FLOAT_MAGNITUDES = ("8u", "64u", "0.1med", "0.5med", "1max", "5max")
CODE_MAGNITUDES = ("1", "3", "rail")

ATTACK_RULES = frozenset(
    {"MS301", "MS302", "MS303", "MS304", "MS305", "MS306", "MS307", "MS409"}
    | {"MS402", "MS403", "MS404", "MS405", "MS406", "MS407", "MS420", "MS421"}
)
"""Findings that accuse: attack detectors, outliers, and a claim that does not hold."""

FAILING = ("medium", "high", "critical")
QUIET_RULES = frozenset({"MS410", "MS502", "MS208"})
"""Left out of summaries: grids not tested, graph matches, metadata notes."""

FINETUNE_LR = 1e-4
"""The fine-tune a tamper hides under: AdamW, 6 steps (every element moves ~ 5e-4, about
1-2% of MiniLM's median |w|)."""
CAST_TARGET = {"F16": "fp16", "BF16": "bf16"}
LORA_RANK = 8
LORA_REL = 0.02


@dataclass(frozen=True)
class Cell:
    model: str
    storage: str
    host: str
    shape: str
    magnitude: str

    @property
    def label(self) -> str:
        return f"{self.model}/{self.storage}/{self.host}/{self.shape}/{self.magnitude}"


@dataclass(frozen=True)
class Verdict:
    code: int
    findings: tuple[dict, ...]

    def failing(self) -> list[dict]:
        return [f for f in self.findings if f["severity"] in FAILING]

    def attacks(self) -> list[dict]:
        return [f for f in self.findings if f["rule_id"] in ATTACK_RULES]

    def summary(self) -> str:
        """The weightiest findings first (what failed, then how the change was
        classified); notes about untested grids or graph matches left out."""
        rank = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}
        shown = sorted(
            (f for f in self.findings if f["rule_id"] not in QUIET_RULES),
            key=lambda f: rank.get(f["severity"], 5),
        )
        return "; ".join(f"{f['rule_id']} {f['severity']}: {f['message'][:90]}" for f in shown[:3])


@dataclass(frozen=True)
class Trial:
    cell: Cell
    seed: int
    tensor: str
    rows: tuple[int, ...]
    """Tampered rows (first axis) for row / channel shapes, else empty."""
    cols: tuple[int, ...]
    """Tampered columns of a 2-D tensor for the column shape, else empty."""
    verdict: Verdict

    @property
    def detected(self) -> bool:
        return self.verdict.code == 1 and any(self._localizes(f) for f in self.verdict.failing())

    @property
    def reason(self) -> str:
        """Why a trial counts as missed (empty when detected)."""
        if self.detected:
            return ""
        if self.verdict.code != 1:
            return f"exit {self.verdict.code}"
        named = [
            f
            for f in self.verdict.failing()
            for loc in f.get("locations", [])
            if _same_tensor(loc.get("tensor"), self.tensor)
        ]
        if not named:
            return "fails, tampered tensor not named"
        return "fails, tensor named, " + ("rows" if self.rows else "columns") + " not located"

    def _localizes(self, finding: dict) -> bool:
        for loc in finding.get("locations", []):
            if not _same_tensor(loc.get("tensor"), self.tensor):
                continue
            if not self.rows and not self.cols:
                return True
            region = loc.get("region") or {}
            if self.rows and _covers(region, 0, self.rows):
                return True
            if self.cols and _covers(region, 1, self.cols):
                return True
        return False


def _same_tensor(reported: str | None, tampered: str) -> bool:
    """The scanner names int8 codes by their float tensor's name (or with a suffix)."""
    return reported is not None and (reported == tampered or reported.startswith(tampered))


def _covers(region: dict, axis: int, wanted: tuple[int, ...]) -> bool:
    if region.get("axis") == axis and set(wanted) <= set(region.get("indices", [])):
        return True
    block = region.get("block") or []
    if len(block) > axis:
        lo, hi = block[axis]
        return all(lo <= i < hi for i in wanted)
    return False


def run_diff(trusted: Path, deployed: Path, args: Sequence[str]) -> Verdict:
    """``modelseal diff`` in-process, JSON report read back."""
    from scanner.cli.main import main

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        argv = ["diff", str(trusted), str(deployed), *args, "-f", "json", "-o", str(out), "-q"]
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
        findings = tuple(json.loads(out.read_text())["findings"]) if out.is_file() else ()
    return Verdict(code, findings)


# -- which cells exist ----------------------------------------------------------------


def storages_for(model: str, host: str) -> tuple[str, ...]:
    """Storages a host has on a model (ONNX models are float32 files; GGUF is tampered
    in its F32 base or in llama.cpp's blocks; int8 codes on the encoder)."""
    if host == "alone":
        return {
            "encoder": ("F32", "F16", "BF16", "int8"),
            "gguf": ("F32", "Q8_0", "Q4_K", "Q6_K"),
        }.get(model, ("F32",))
    if host == "finetune":
        return ("F32",)
    if host == "lora":
        return ("F32",) if model in ("encoder", "gguf") else ()
    if host == "cast":
        return ("F16", "BF16") if model == "encoder" else ()
    if host == "quantized":
        return {"encoder": ("int8",), "gguf": ("Q8_0", "Q4_K", "Q6_K")}.get(model, ())
    raise ValueError(host)


def magnitudes_for(storage: str) -> tuple[str, ...]:
    return CODE_MAGNITUDES if storage in CODE_STORAGES else FLOAT_MAGNITUDES


def shapes_for(model: str) -> tuple[str, ...]:
    return REGIONS


def all_cells(models: Sequence[str]) -> Iterator[Cell]:
    for model in models:
        for host in HOSTS:
            for st in storages_for(model, host):
                for shape in shapes_for(model):
                    for mag in magnitudes_for(st):
                        yield Cell(model, st, host, shape, mag)


# -- one trial ------------------------------------------------------------------------


def _host_weights(subject: Subject, host: str, seed: int) -> dict[str, np.ndarray]:
    if host == "finetune":
        key = f"ft{seed}"
        if key not in subject._cache:
            scope = subject.tuned if subject.tuned is not None else subject.trainable
            subject._cache[key] = hosts.finetune(subject.weights, FINETUNE_LR, seed, only=scope)
        return subject._cache[key]
    if host == "lora":
        key = f"lora{seed}"
        if key not in subject._cache:
            subject._cache[key] = hosts.lora_merge(
                subject.weights, subject.lora_modules, LORA_RANK, LORA_REL, seed
            )
        return subject._cache[key]
    return subject.weights


def host_args(subject: Subject, host: str, st: str) -> list[str]:
    """The claim or ``--allow`` a user of this host gives."""
    if host == "finetune":
        return ["--allow", "finetune"]
    if host == "lora":
        return ["--claim", f"lora:r={LORA_RANK}:modules={','.join(subject.lora_modules)}"]
    if host == "cast":
        return ["--claim", f"cast:{CAST_TARGET[st]}"]
    if host == "quantized":
        if st == "int8":
            return ["--claim", "quantize:int8:per-channel:symmetric"]
        return ["--claim", f"gguf:{storage_filetype(st).lower()}"]
    return []


def storage_filetype(st: str) -> str:
    from tests.tamper.subjects import GGUF_FILETYPE

    return GGUF_FILETYPE[st]


def float_size(w: np.ndarray, magnitude: str, st: str) -> float:
    a = np.abs(np.asarray(w, dtype=np.float64))
    if magnitude.endswith("u"):
        return float(magnitude[:-1]) * storage.rounding_bound(w, st)
    if magnitude.endswith("med"):
        return float(magnitude[:-3]) * float(np.median(a))
    if magnitude.endswith("max"):
        return float(magnitude[:-3]) * float(a.max())
    raise ValueError(magnitude)


def _mask2d(shape: tuple[int, ...], kind: str, rng: np.random.Generator) -> np.ndarray:
    """A region on the 2-D view (first axis x the rest), as the tensor's own shape."""
    view = (shape[0], int(np.prod(shape[1:]))) if len(shape) > 1 else (1, shape[0])
    return region_mask(kind, view, rng).reshape(shape)


def _where(mask: np.ndarray, kind: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if kind in ("row", "channel"):
        return tuple(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)).tolist()), ()
    if kind == "column" and mask.ndim == 2:
        return (), tuple(np.flatnonzero(mask.any(axis=0)).tolist())
    return (), ()


def _tamper_float(w: np.ndarray, mask: np.ndarray, cell: Cell, rng, scale_w) -> np.ndarray:  # type: ignore[no-untyped-def]
    if cell.magnitude == "5max":
        return overwrite(w, mask, 5.0, rng)
    size = float_size(scale_w, cell.magnitude, cell.storage)
    return add_delta(w, mask, size, rng)


def trial(subject: Subject, cell: Cell, seed: int, work: Path) -> Trial:
    rng = np.random.default_rng(seed)
    base = _host_weights(subject, cell.host, seed)
    args = host_args(subject, cell.host, cell.storage)
    out = work / f"tampered{_suffix(subject)}"
    if cell.storage in ("Q8_0", "Q4_K", "Q6_K"):
        name = gguf_target(subject, cell.storage, rng)
        quant = gguf_quantized(subject, cell.storage)
        blocks = storage.gguf_tensors(quant)[name][1]
        rows, cols = subject.weights[name].shape
        mask = region_mask(cell.shape, (rows, cols), rng)
        changed = storage.shift_ggml(blocks, cell.storage, mask, cell.magnitude, rng)
        deployed = storage.write_gguf(quant, out, {name: changed})
        trusted = quant if cell.host == "alone" else subject.trusted
    elif cell.storage == "int8":
        name = subject.targets[int(rng.integers(len(subject.targets)))]
        codes, _ = storage.int8_rows(base[name])
        mask = _mask2d(codes.shape, cell.shape, rng)
        tampered = dict(base)
        tampered[name] = storage.shift_codes(codes, mask, cell.magnitude, rng, -128, 127)
        tampered[name + "_float"] = base[name]
        deployed = storage.write_int8(out, tampered, subject.matrices)
        trusted = (
            subject.file(
                "int8.safetensors", lambda p: storage.write_int8(p, base, subject.matrices)
            )
            if cell.host == "alone"
            else subject.trusted
        )
    else:
        names = _targets(subject, cell.host)
        name = names[int(rng.integers(len(names)))]
        w = base[name]
        mask = _mask2d(w.shape, cell.shape, rng)
        src = (
            w
            if cell.host != "alone" or cell.storage == "F32"
            else storage.as_stored(w, cell.storage)
        )
        new = _tamper_float(src, mask, cell, rng, subject.weights[name])
        deployed, trusted = _write_float(subject, base, {name: new}, cell, out)
    rows_, cols_ = _where(mask, cell.shape)
    verdict = run_diff(trusted, deployed, args)
    return Trial(cell, seed, name, rows_, cols_, verdict)


def _targets(subject: Subject, host: str) -> tuple[str, ...]:
    """Tensors a tamper under ``host`` goes to: inside what the host changed."""
    if host == "lora":
        return subject.lora_targets
    if host == "finetune" and subject.tuned is not None:
        inside = tuple(n for n in subject.targets if n in subject.tuned)
        return inside or subject.targets
    return subject.targets


def _suffix(subject: Subject) -> str:
    return {"safetensors": ".safetensors", "onnx": ".onnx", "gguf": ".gguf"}[subject.fmt]


def _write_float(
    subject: Subject,
    base: dict[str, np.ndarray],
    changed: dict[str, np.ndarray],
    cell: Cell,
    out: Path,
) -> tuple[Path, Path]:
    """(deployed, trusted) for a float storage."""
    full = dict(base)
    full.update({n: a.astype(np.float32) for n, a in changed.items()})
    host_changed = {n: a for n, a in full.items() if n in changed or base is not subject.weights}
    if subject.fmt == "safetensors":
        deployed = storage.write_safetensors(out, full, cell.storage)
        if cell.host == "alone" and cell.storage != "F32":
            key = f"{cell.storage}.safetensors"
            trusted = subject.file(
                key, lambda p: storage.write_safetensors(p, subject.weights, cell.storage)
            )
        else:
            trusted = subject.trusted
        return deployed, trusted
    floats = {n: a for n, a in host_changed.items() if a.dtype.kind == "f"}
    if subject.fmt == "onnx":
        return storage.write_onnx(subject.trusted, out, floats), subject.trusted
    return storage.write_gguf(subject.trusted, out, floats), subject.trusted


# -- benign twins -----------------------------------------------------------------------

FINETUNE_LRS = (1e-5, 1e-4, 1e-3)
LORA_RELS = (0.01, 0.05)


@dataclass(frozen=True)
class Twin:
    model: str
    name: str
    args: tuple[str, ...]
    """The claim or ``--allow`` that explains it."""
    verdict: Verdict
    """With ``args``: must pass."""
    bare: Verdict
    """Without: may fail by policy, never with an attack or outlier finding."""

    @property
    def false_alarm(self) -> bool:
        return self.verdict.code != 0 or bool(self.bare.attacks())


def twin_specs(subject: Subject, quick: bool) -> list[str]:
    """Names of the benign twins of ``subject`` (``quick``: one per kind)."""
    lrs = FINETUNE_LRS if not quick else (FINETUNE_LRS[0], FINETUNE_LRS[-1])
    specs = [f"finetune:{lr:g}" for lr in lrs]
    if subject.lora_modules:
        specs += [f"lora:{rel:g}" for rel in (LORA_RELS if not quick else LORA_RELS[-1:])]
    if subject.fmt == "safetensors":
        specs += ["cast:F16", "cast:BF16", "int8"]
    if subject.fmt == "gguf":
        specs += [f"gguf:{st}" for st in ("Q8_0", "Q4_K", "Q6_K")]
    specs += ["prune:0.5"]
    if quick and subject.fmt == "gguf":
        specs = [s for s in specs if not s.startswith("finetune")]
    return specs


def benign_twin(subject: Subject, spec: str, work: Path, seed: int = 0) -> Twin:
    kind, _, param = spec.partition(":")
    out = work / f"twin{_suffix(subject)}"
    trusted = subject.trusted
    if kind == "finetune":
        new = hosts.finetune(subject.weights, float(param), seed, only=subject.trainable)
        args: tuple[str, ...] = ("--allow", "finetune")
        deployed = _write_all(subject, new, out, "F32")
    elif kind == "lora":
        new = hosts.lora_merge(subject.weights, subject.lora_modules, LORA_RANK, float(param), seed)
        args = ("--claim", f"lora:r={LORA_RANK}:modules={','.join(subject.lora_modules)}")
        deployed = _write_all(subject, new, out, "F32")
    elif kind == "cast":
        args = ("--claim", f"cast:{CAST_TARGET[param]}")
        deployed = storage.write_safetensors(out, subject.weights, param)
    elif kind == "int8":
        args = ("--claim", "quantize:int8:per-channel:symmetric")
        deployed = storage.write_int8(out, subject.weights, subject.matrices)
    elif kind == "gguf":
        args = ("--claim", f"gguf:{storage_filetype(param).lower()}")
        deployed = gguf_quantized(subject, param)
    elif kind == "prune":
        pruned = subject.matrices if subject.fmt != "onnx" else set(subject.targets)
        new = hosts.magnitude_prune(subject.weights, float(param), sorted(pruned))
        args = ("--claim", f"prune:magnitude:{param}")
        deployed = _write_all(subject, new, out, "F32")
    else:
        raise ValueError(spec)
    return Twin(
        subject.key, spec, args, run_diff(trusted, deployed, args), run_diff(trusted, deployed, ())
    )


def _write_all(subject: Subject, new: dict[str, np.ndarray], out: Path, st: str) -> Path:
    changed = {n: a for n, a in new.items() if a is not subject.weights.get(n)}
    if subject.fmt == "safetensors":
        return storage.write_safetensors(out, new, st)
    if subject.fmt == "onnx":
        return storage.write_onnx(subject.trusted, out, changed)
    return storage.write_gguf(subject.trusted, out, changed)


# -- the stated bound -----------------------------------------------------------------

BOUND = {"alone": "8u", "cast": "8u", "quantized": "1", "finetune": "0.5med", "lora": "0.5med"}
"""The smallest magnitude each host is asserted to catch in every shape.

Alone, after a cast, or in codes nothing but storage rounding can explain a change: 8x
the rounding bound is far above any rounding a tool makes (at most 1x), so everything
from there up is unexplained. Under a fine-tune or LoRA merge the allowed change itself
moves every element (AdamW at lr 1e-4, 6 steps: ~5e-4, 1-2% of MiniLM's median |w|); a
region moved by 0.5 median |w| is 25x that, far outside the tensor's own delta
distribution, and still small against the weights (a tenth of a typical max |w|).
"""


def at_bound(cell: Cell) -> bool:
    """Whether ``cell``'s magnitude is at or above its host's stated bound."""
    order = magnitudes_for(cell.storage)
    bound = BOUND[cell.host] if cell.storage in FLOAT_STORAGES else "1"
    return order.index(cell.magnitude) >= order.index(bound)
