"""What `modelseal --help` and `modelseal scan model.safetensors` import.

The format libraries, onnxruntime, sigstore and jinja2 take most of a second to import;
commands that do not use them must not load them. This tests what is imported, in a
fresh interpreter, not how long it takes (benchmarks/bench_startup.py prints timings).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]

NEVER_UNTIL_USED = ("onnx", "onnxruntime", "gguf", "sigstore", "jinja2", "torch", "ml_dtypes")
NOT_FOR_HELP = (
    *NEVER_UNTIL_USED,
    "numpy",
    "rich",
    "cryptography",
    "safetensors",
    "scanner.formats",
)

_PROBE = """
import json, sys
from scanner.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
tops = {m.split('.')[0] for m in sys.modules}
loaded = sorted(tops | {m for m in sys.modules if m.startswith('scanner.')})
print(json.dumps({"code": code, "modules": loaded}), file=sys.stderr)
"""


def _imported(*args: str | Path, cwd: Path = ROOT) -> tuple[int, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    record = json.loads(done.stderr.strip().splitlines()[-1])
    return record["code"], set(record["modules"])


def test_help_imports_no_library() -> None:
    for args in (("--help",), ("scan", "--help"), ("sign", "--help"), ("gate", "--help")):
        code, modules = _imported(*args)
        assert code == 0, args
        assert not modules & set(NOT_FOR_HELP), (args, sorted(modules & set(NOT_FOR_HELP)))


def test_scanning_safetensors_imports_no_other_format_library(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    rng = np.random.default_rng(0)
    save_file({"w": rng.standard_normal((16, 8)).astype(np.float32)}, str(model))
    for fmt in ("text", "json", "sarif"):
        code, modules = _imported("scan", model, "--format", fmt)
        assert code == 0
        assert not modules & set(NEVER_UNTIL_USED), (fmt, sorted(modules & set(NEVER_UNTIL_USED)))
        assert "cryptography" not in modules
        assert "scanner.formats.safetensors_reader" in modules  # it did read the file


def test_hashing_commands_import_no_numpy(tmp_path: Path) -> None:
    """``manifest``, ``sign`` and ``verify`` read bytes and hash them: numpy (about a
    fifth of their start-up) stays unloaded."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    model = tmp_path / "model.safetensors"
    save_file({"w": np.arange(64, dtype=np.float16).reshape(8, 8)}, str(model))
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    sig = tmp_path / "model.sig"
    for args in (
        ("manifest", model, "-o", tmp_path / "manifest.json", "-q"),
        ("sign", model, "--key", tmp_path / "key.pem", "-o", sig),
        ("verify", model, "--signature", sig, "--public-key", tmp_path / "pub.pem", "-q"),
    ):
        code, modules = _imported(*args)
        assert code == 0, args
        assert "numpy" not in modules, args
        assert "scanner.formats.safetensors_reader" in modules or args[0] != "manifest"


def test_the_probe_sees_a_library_that_is_used(tmp_path: Path) -> None:
    """The check above can fail: scanning an ONNX file does load onnx."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    code, modules = _imported("scan", tmp_path / "m.onnx")
    assert code == 0 and "onnx" in modules
