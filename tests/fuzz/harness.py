"""Fuzz targets: one per reader, plus the pickle interpreter on its own.

The contract every target checks: whatever the bytes, a reader either returns an
artifact whose tensors can all be read, or raises one of the project's errors
(:class:`signing.errors.ModelsealError`: exit 2 with a one-line message). Any other
exception, a hang past the time budget, or a crash is a bug.

Run one target with atheris (coverage-guided, libFuzzer)::

    python tests/fuzz/harness.py pytorch -max_total_time=600 -artifact_prefix=/tmp/crash-

or without atheris (hypothesis byte-level strategies, seeded mutations)::

    python tests/fuzz/harness.py pytorch --hypothesis --seconds 600

``tests/fuzz/run.py`` runs every target for a bounded time (CI) or longer (local).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_NAMES = ("pytorch", "pickle_vm", "safetensors", "gguf", "onnx")
_SUFFIX = {"pytorch": ".pt", "safetensors": ".safetensors", "gguf": ".gguf", "onnx": ".onnx"}


def _scratch_dir() -> Path:
    """A scratch folder for the current input, inside the runner's work folder when one
    is given (it removes that folder), else in memory-backed /dev/shm, removed at exit."""
    given = os.environ.get("MODELSEAL_FUZZ_SCRATCH")
    shm = Path("/dev/shm")
    base = given or (shm if shm.is_dir() and os.access(shm, os.W_OK) else None)
    path = Path(tempfile.mkdtemp(prefix="modelseal-fuzz-", dir=base))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def make_target(name: str) -> Callable[[bytes], None]:
    """A function ``(bytes) -> None`` that raises only on a contract violation."""
    from scanner.errors import ArtifactError
    from scanner.formats import READERS, _open_with
    from scanner.formats.base import DEFAULT_LIMITS
    from scanner.formats.pickle_vm import PickleLimits, PickleVM, collect_tensors
    from signing.errors import ModelsealError

    # Small caps keep each execution fast; the code paths are the same as the defaults.
    limits = PickleLimits(
        max_pickle_bytes=4 << 20,
        max_ops=200_000,
        max_memo=50_000,
        max_stack=50_000,
        max_marks=5_000,
        max_string_bytes=1 << 20,
        max_walk=50_000,
        max_inline_bytes=16 << 20,
        time_budget_s=5.0,
    )
    if name == "pickle_vm":

        def run_vm(data: bytes) -> None:
            vm = PickleVM(
                data,
                path="<fuzz>",
                stream="fuzz",
                limits=limits,
                persistent_load=lambda pid, off: pid,
            )
            try:
                root = vm.run()
                collect_tensors(root, path="<fuzz>", limits=limits)
            except ArtifactError:
                pass

        return run_vm

    scratch = _scratch_dir()
    path = scratch / f"input{_SUFFIX[name]}"
    reader = next(r for r in READERS if r.format == name)
    if name == "pytorch":
        from scanner.formats.pytorch_reader import PytorchReader

        reader = PytorchReader(limits)

    def run_reader(data: bytes) -> None:
        path.write_bytes(data)
        try:
            if name == "pytorch":
                # The reader itself must raise only project errors (no net below it).
                art = reader.open(path, scratch, DEFAULT_LIMITS)
            else:
                # Other readers are held to the production path, which converts library
                # exceptions into malformed-artifact errors.
                art = _open_with(reader, path, scratch, DEFAULT_LIMITS)
        except ModelsealError:
            return
        with art:
            for tensor in art.tensors:
                bytes(art.raw(tensor))

    return run_reader


def seeds(name: str) -> list[bytes]:
    """Real fixtures and corpus files for ``name`` (small enough to mutate quickly)."""
    from tests.fuzz.seeds import seed_inputs

    return seed_inputs(name)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in TARGET_NAMES:
        sys.stderr.write(f"usage: harness.py {{{','.join(TARGET_NAMES)}}} [libFuzzer flags]\n")
        return 2
    name = argv[1]
    if "--hypothesis" in argv:
        from tests.fuzz.hypo import fuzz_for

        seconds = float(argv[argv.index("--seconds") + 1]) if "--seconds" in argv else 60.0
        execs = fuzz_for(name, seconds)
        print(f"hypothesis: {name}: {execs} executions in {seconds:g} s")
        return 0
    import atheris

    with atheris.instrument_imports(include=["scanner"]):
        target = make_target(name)
    seed_dir = Path(
        tempfile.mkdtemp(
            prefix=f"modelseal-seeds-{name}-", dir=os.environ.get("MODELSEAL_FUZZ_SCRATCH")
        )
    )
    for i, data in enumerate(seeds(name)):
        (seed_dir / f"seed{i:03d}").write_bytes(data)
    args = [argv[0], *argv[2:], str(seed_dir)]
    atheris.Setup(args, target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
