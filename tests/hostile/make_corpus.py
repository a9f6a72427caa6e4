"""Write the hostile-input corpus: small files, one per attack class, each with its verdict.

Run ``python tests/hostile/make_corpus.py`` to (re)write ``tests/hostile/corpus/`` and
``corpus/expected.json``. Every file is built byte by byte (the format libraries refuse to
write most of them) and deterministically, so ``test_corpus.py`` can check that the
committed corpus is exactly what this script writes. Cases that need symlinks or hard
links cannot live in git; :func:`build_link_cases` makes them in a temporary folder.

Each expected outcome is either ``{"exit": 1, "rule": "MS..."}`` (a finding that fails
the scan) or ``{"exit": 2, "error": "<regex>"}`` (the file is refused with a one-line
message). No hostile file may scan clean.

The pickle payloads run ``touch /tmp/modelseal-corpus-pwned``: harmless, and the tests
check that the marker never appears.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "corpus"
MARKER = "/tmp/modelseal-corpus-pwned"
PAYLOAD = f"touch {MARKER}"
_DATE = (2024, 1, 1, 0, 0, 0)

Expected = dict[str, Any]


def exit1(rule: str) -> Expected:
    return {"exit": 1, "rule": rule}


def exit2(error: str) -> Expected:
    return {"exit": 2, "error": error}


# -- pickle opcodes -------------------------------------------------------------------------

P2 = b"\x80\x02"
STOP = b"."


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def num(n: int) -> bytes:
    return b"K" + bytes([n]) if 0 <= n < 256 else b"J" + struct.pack("<i", n)


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + b"R"


def storage(key: str, numel: int, stype: str = "FloatStorage", location: str = "cpu") -> bytes:
    return tup(text("storage"), glob("torch", stype), text(key), text(location), num(numel)) + b"Q"


def tensor(
    key: str,
    numel: int,
    *,
    size: tuple[int, ...] | None = None,
    stride: tuple[int, ...] | None = None,
    offset: int = 0,
    stype: str = "FloatStorage",
    numel_bytes: bytes | None = None,
) -> bytes:
    size = size if size is not None else (numel,)
    stride = stride if stride is not None else (1,) * len(size)
    st = (
        tup(text("storage"), glob("torch", stype), text(key), text("cpu"), numel_bytes) + b"Q"
        if numel_bytes is not None
        else storage(key, numel, stype)
    )
    return call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        st,
        num(offset),
        tup(*map(num, size)),
        tup(*map(num, stride)),
        b"\x89",
        call(glob("collections", "OrderedDict")),
    )


def state_dict(*entries: tuple[str, bytes]) -> bytes:
    body = b"".join(text(k) + v for k, v in entries)
    return P2 + b"}(" + body + b"u" + STOP


def system(cmd: str = PAYLOAD, module: str = "posix") -> bytes:
    return call(glob(module, "system"), text(cmd))


F32_4 = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)


def torch_zip(
    pkl: bytes,
    storages: dict[str, bytes] | None = None,
    *,
    prefix: str = "archive",
    extra: list[tuple[str, bytes]] | None = None,
    byteorder: bytes = b"little",
) -> bytes:
    """A zip laid out as torch.save writes it (stored members, fixed timestamps)."""
    buf = io.BytesIO()
    members = [("data.pkl", pkl), ("byteorder", byteorder)]
    members += [(f"data/{k}", v) for k, v in (storages or {}).items()]
    members += [("version", b"3\n"), *(extra or [])]
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(f"{prefix}/{name}", _DATE), data)
    return buf.getvalue()


def legacy(obj_pkl: bytes, storages: list[tuple[str, int, bytes]], tail: bytes = b"") -> bytes:
    """The pre-1.6 format: magic, protocol, sys info, object, keys, storages."""
    magic = P2 + b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + STOP
    proto = P2 + b"M\xe9\x03" + STOP
    sys_info = (
        P2 + b"}(" + text("protocol_version") + b"M\xe9\x03" + text("little_endian") + b"\x88u."
    )
    keys = P2 + b"(" + b"".join(text(k) for k, _, _ in storages) + b"l."
    data = b"".join(struct.pack("<q", n) + raw for _, n, raw in storages)
    return magic + proto + sys_info + obj_pkl + keys + data + tail


def legacy_tensor(key: str, numel: int) -> bytes:
    pid = (
        tup(
            text("storage"),
            glob("torch", "FloatStorage"),
            text(key),
            text("cuda:0"),
            num(numel),
            b"N",
        )
        + b"Q"
    )
    return call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        pid,
        num(0),
        tup(num(numel)),
        tup(num(1)),
        b"\x89",
        b"N",
    )


def deep_lists(depth: int) -> bytes:
    """Lists nested ``depth`` deep with a constant stack and one memo slot."""
    loop = b"]h\x00aq\x00"  # new list, append the previous one, remember the new one
    return P2 + b"]q\x00" + loop * depth + b"0}(" + text("x") + b"h\x00u."


def laughs(levels: int) -> bytes:
    """Each level is a list holding the previous level twice: 2**levels paths."""
    out = P2 + b"]q\x00"
    for _ in range(levels):
        out += b"]h\x00h\x00\x86aq\x00"  # [ (prev, prev) ]
    return out + b"0}(" + text("x") + b"h\x00u."


# -- pytorch / pickle cases -------------------------------------------------------------------


def pytorch_cases() -> dict[str, tuple[bytes, Expected]]:
    ok_weight = ("w", tensor("0", 4))
    c: dict[str, tuple[bytes, Expected]] = {}
    c["zip_reduce_os_system.pt"] = (
        torch_zip(state_dict(ok_weight, ("evil", system())), {"0": F32_4}),
        exit1("MS701"),
    )
    c["zip_reduce_subprocess.pt"] = (
        torch_zip(
            state_dict(
                ok_weight,
                (
                    "evil",
                    call(
                        glob("subprocess", "check_output"),
                        b"(" + text("touch") + text(MARKER) + b"l",
                    ),
                ),
            ),
            {"0": F32_4},
        ),
        exit1("MS701"),
    )
    c["legacy_reduce_os_system.pth"] = (
        legacy(
            P2 + b"}(" + text("w") + legacy_tensor("1", 4) + text("evil") + system() + b"u.",
            [("1", 4, F32_4)],
        ),
        exit1("MS701"),
    )
    c["bare_p2_os_system.pkl"] = (P2 + system() + STOP, exit1("MS701"))
    c["bare_p0_global_reduce.pkl"] = (
        b"cos\nsystem\n(S'" + PAYLOAD.encode() + b"'\ntR.",
        exit1("MS701"),
    )
    c["bare_p0_inst.pkl"] = (b"(S'" + PAYLOAD.encode() + b"'\nios\nsystem\n.", exit1("MS701"))
    c["bare_p1_obj.pkl"] = (b"(cos\nsystem\nS'" + PAYLOAD.encode() + b"'\no.", exit1("MS701"))
    c["bare_p4_stack_global_eval.pkl"] = (
        b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00"  # FRAME (length not enforced by readers)
        + b"\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94"
        + b"\x8c\x10__import__('os')\x94\x85\x94R\x94.",
        exit1("MS701"),
    )
    c["bare_getattr_chain.pkl"] = (
        P2
        + call(
            call(
                glob("builtins", "getattr"),
                call(glob("builtins", "__import__"), text("os")),
                text("system"),
            ),
            text(PAYLOAD),
        )
        + STOP,
        exit1("MS701"),
    )
    c["bare_newobj_popen.pkl"] = (
        P2
        + glob("subprocess", "Popen")
        + tup(b"(" + text("touch") + text(MARKER) + b"l")
        + b"\x81.",
        exit1("MS701"),
    )
    c["bare_dunder_name.pkl"] = (
        b"\x80\x04" + b"\x8c\x08builtins\x8c\x12__class__.__base__\x93)R.",
        exit1("MS701"),
    )
    c["zip_build_setstate.pt"] = (
        torch_zip(
            state_dict(
                ok_weight,
                (
                    "cfg",
                    glob("mylib.config", "Loader")
                    + b")\x81"
                    + b"}("
                    + text("cmd")
                    + text(PAYLOAD)
                    + b"ub",
                ),
            ),
            {"0": F32_4},
        ),
        exit1("MS702"),
    )
    c["zip_unknown_global_namespace.pt"] = (
        torch_zip(
            state_dict(ok_weight, ("args", glob("argparse", "Namespace") + b")R")), {"0": F32_4}
        ),
        exit1("MS702"),
    )
    c["zip_hooks_payload.pt"] = (
        torch_zip(
            state_dict(
                (
                    "w",
                    call(
                        glob("torch._utils", "_rebuild_tensor_v2"),
                        storage("0", 4),
                        num(0),
                        tup(num(4)),
                        tup(num(1)),
                        b"\x89",
                        system(),
                    ),
                )
            ),
            {"0": F32_4},
        ),
        exit1("MS701"),
    )
    c["bare_ext1.pkl"] = (P2 + b"\x82\xf0)R.", exit1("MS706"))
    c["bare_persid.pkl"] = (P2 + b"Pstorage0\n.", exit1("MS706"))
    nested = P2 + system() + STOP
    nested += b"\x00" * (-len(nested) % 4)
    c["zip_nested_pickle_in_storage.pt"] = (
        torch_zip(state_dict(("w", tensor("0", len(nested) // 4))), {"0": nested}),
        exit1("MS705"),
    )
    c["zip_unreferenced_storage.pt"] = (
        torch_zip(state_dict(ok_weight), {"0": F32_4, "99": b"\x00" * 64}),
        exit1("MS707"),
    )
    c["zip_extra_pickle_member.pt"] = (
        torch_zip(state_dict(ok_weight), {"0": F32_4}, extra=[("extra.pkl", P2 + system() + STOP)]),
        exit1("MS701"),
    )
    c["torchscript_os_system.pt"] = (
        torch_zip(
            P2
            + glob("__torch__.m", "M")
            + b")\x81}("
            + text("w")
            + tensor("0", 4)
            + text("hook")
            + system()
            + b"ub.",
            {"0": F32_4},
            extra=[
                ("code/__torch__/m.py", b"class M(Module):\n  pass\n"),
                ("constants.pkl", P2 + b")."),
            ],
        ),
        exit1("MS701"),
    )
    # -- refused outright
    c["trunc_no_stop.pt"] = (
        torch_zip(state_dict(ok_weight)[:-1], {"0": F32_4}),
        exit2("truncated"),
    )
    c["trunc_mid_string.pkl"] = (P2 + b"X\xff\x00\x00\x00abc", exit2("truncated"))
    c["unknown_opcode.pt"] = (torch_zip(P2 + b"\xff.", {}), exit2("unknown pickle opcode"))
    c["deep_nesting.pt"] = (torch_zip(deep_lists(5000), {}), exit2("nest more than"))
    c["deep_marks.pkl"] = (P2 + b"(" * 200_000 + b"N.", exit2("nested MARKs"))
    c["billion_laughs.pt"] = (torch_zip(laughs(60), {}), exit2("container visits"))
    c["huge_string_len.pkl"] = (P2 + b"\x8d" + struct.pack("<Q", 1 << 40) + b"x.", exit2("exceeds"))
    c["huge_long4.pkl"] = (P2 + b"\x8b" + struct.pack("<i", 1 << 30) + b".", exit2("LONG4"))
    c["memo_get_undefined.pkl"] = (P2 + b"h\x07.", exit2("never stored"))
    c["out_of_band_buffer.pkl"] = (b"\x80\x05\x97.", exit2("out-of-band"))
    c["storage_numel_2p40.pt"] = (
        torch_zip(
            state_dict(("w", tensor("0", 4, numel_bytes=b"\x8a\x06\x00\x00\x00\x00\x00\x01"))),
            {"0": F32_4},
        ),
        exit2("claims"),
    )
    c["tensor_outside_storage.pt"] = (
        torch_zip(state_dict(("w", tensor("0", 4, size=(8,)))), {"0": F32_4}),
        exit2("reaches element"),
    )
    c["expand_2p40_elements.pt"] = (
        torch_zip(
            state_dict(
                (
                    "w",
                    call(
                        glob("torch._utils", "_rebuild_tensor_v2"),
                        storage("0", 1),
                        num(0),
                        tup(b"J\x00\x00\x10\x00", b"J\x00\x00\x10\x00"),
                        tup(num(0), num(0)),
                        b"\x89",
                        b"N",
                    ),
                )
            ),
            {"0": F32_4[:4]},
        ),
        exit2("cap"),
    )
    c["zip_duplicate_member.pt"] = (_duplicate_member_zip(), exit2("two members"))
    c["zip_name_mismatch.pt"] = (_name_mismatch_zip(), exit2("disagree"))
    c["legacy_trailing_payload.pth"] = (
        legacy(
            P2 + b"}(" + text("w") + legacy_tensor("1", 4) + b"u.",
            [("1", 4, F32_4)],
            tail=b"PK\x03\x04hidden",
        ),
        exit2("after the last storage"),
    )
    c["legacy_storage_overrun.pth"] = (
        legacy(P2 + b"}(" + text("w") + legacy_tensor("1", 4) + b"u.", [("1", 4, F32_4[:8])]),
        exit2("runs past|more than the file"),
    )
    c["bad_utf8_global.pkl"] = (P2 + b"c\xff\xfe\nx\n.", exit2("UTF-8"))
    c["dict_key_list.pkl"] = (P2 + b"}]Ns.", exit2("unsupported dict key"))
    return c


def _duplicate_member_zip() -> bytes:
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(
                zipfile.ZipInfo("archive/data.pkl", _DATE), state_dict(("w", tensor("0", 4)))
            )
            zf.writestr(zipfile.ZipInfo("archive/data/0", _DATE), F32_4)
            zf.writestr(zipfile.ZipInfo("archive/data.pkl", _DATE), P2 + system() + STOP)
    return buf.getvalue()


def _name_mismatch_zip() -> bytes:
    raw = torch_zip(state_dict(("w", tensor("0", 4))), {"0": F32_4})
    # Rename the first local header's member (same length) but not the central entry.
    return raw.replace(b"archive/data.pkl", b"archive/data.pk_", 1)


# -- safetensors ------------------------------------------------------------------------------


def st(header: dict[str, Any] | str, data: bytes, header_len: int | None = None) -> bytes:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


def safetensors_cases() -> dict[str, tuple[bytes, Expected]]:
    one = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    zip_payload = torch_zip(P2 + system() + STOP, {})
    c: dict[str, tuple[bytes, Expected]] = {
        "huge_header_len.safetensors": (
            st({"a": one}, F32_4, header_len=1 << 62),
            exit2("header length"),
        ),
        "duplicate_keys.safetensors": (
            st(
                '{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
                '"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}',
                F32_4 * 2,
            ),
            exit2("duplicate key"),
        ),
        "overlapping_offsets.safetensors": (
            st({"a": one, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, F32_4),
            exit2("overlaps"),
        ),
        "gapped_offsets.safetensors": (
            st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, F32_4),
            exit2("unreferenced bytes"),
        ),
        "out_of_range_offsets.safetensors": (
            st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}, F32_4),
            exit2("outside"),
        ),
        "negative_offsets.safetensors": (
            st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}}, F32_4),
            exit2("outside"),
        ),
        "shape_bytes_mismatch.safetensors": (
            st({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, F32_4),
            exit2("needs 12 bytes"),
        ),
        "huge_dims.safetensors": (
            st(
                {"a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}}, F32_4
            ),
            exit2("needs"),
        ),
        "non_string_metadata.safetensors": (
            st({"__metadata__": {"n": 3}, "a": one}, F32_4),
            exit2("__metadata__"),
        ),
        "appended_zip_in_gap.safetensors": (
            st(
                {
                    "a": {
                        "dtype": "F32",
                        "shape": [4],
                        "data_offsets": [len(zip_payload), len(zip_payload) + 16],
                    }
                },
                zip_payload + F32_4,
            ),
            exit2("unreferenced bytes"),
        ),
        "appended_tail.safetensors": (
            st({"a": one}, F32_4 + zip_payload),
            exit2("after the last tensor"),
        ),
        "deep_json.safetensors": (
            st('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", b""),
            exit2("nests too deeply|not valid JSON"),
        ),
        "truncated.safetensors": (struct.pack("<Q", 2) + b"{", exit2("truncated|runs past")),
    }
    return c


# -- GGUF -------------------------------------------------------------------------------------

GGUF_STRING, GGUF_ARRAY, GGUF_U32 = 8, 9, 4


def gstr(s: str | bytes, length: int | None = None) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def gguf(
    kvs: list[bytes],
    tensors: list[bytes],
    data: bytes,
    *,
    n_tensors: int | None = None,
    n_kv: int | None = None,
) -> bytes:
    head = b"GGUF" + struct.pack(
        "<IQQ",
        3,
        len(tensors) if n_tensors is None else n_tensors,
        len(kvs) if n_kv is None else n_kv,
    )
    body = head + b"".join(kvs) + b"".join(tensors)
    body += b"\x00" * (-len(body) % 32)
    return body + data


def kv_str(key: str, value: str) -> bytes:
    return gstr(key) + struct.pack("<I", GGUF_STRING) + gstr(value)


def tinfo(name: str, dims: tuple[int, ...], offset: int, ggml_type: int = 0) -> bytes:
    return (
        gstr(name)
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def gguf_cases() -> dict[str, tuple[bytes, Expected]]:
    arch = kv_str("general.architecture", "llama")
    ok_t = tinfo("w", (4,), 0)
    ssti = (
        "{% for m in messages %}{{ m.content }}{% endfor %}"
        "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    )
    return {
        "absurd_string_length.gguf": (
            gguf(
                [gstr("general.name") + struct.pack("<I", GGUF_STRING) + gstr(b"x", 1 << 60)],
                [],
                b"",
            ),
            exit2("over the limit"),
        ),
        "absurd_key_length.gguf": (gguf([gstr(b"k", 1 << 60)], [], b""), exit2("")),
        "absurd_array_length.gguf": (
            gguf(
                [gstr("a") + struct.pack("<II", GGUF_ARRAY, GGUF_U32) + struct.pack("<Q", 1 << 61)],
                [],
                b"",
            ),
            exit2(""),
        ),
        "absurd_tensor_count.gguf": (gguf([arch], [], b"", n_tensors=1 << 50), exit2("tensors")),
        "absurd_kv_count.gguf": (gguf([arch], [], b"", n_kv=1 << 50), exit2("metadata keys")),
        "tensor_offset_out_of_range.gguf": (
            gguf([arch], [tinfo("w", (4,), 1 << 40)], F32_4),
            exit2(""),
        ),
        "tensor_huge_dims.gguf": (
            gguf([arch], [tinfo("w", (1 << 40, 1 << 40), 0)], F32_4),
            exit2(""),
        ),
        "duplicate_keys.gguf": (gguf([arch, arch], [ok_t], F32_4), exit2("[Dd]uplicate")),
        "truncated_header.gguf": (b"GGUF\x03\x00\x00\x00", exit2("truncated")),
        "chat_template_ssti.gguf": (
            gguf([arch, kv_str("tokenizer.chat_template", ssti)], [ok_t], F32_4),
            exit1("MS704"),
        ),
        "chat_template_attr_filter.gguf": (
            gguf(
                [
                    arch,
                    kv_str(
                        "tokenizer.chat_template",
                        "{{ (messages|attr('\\x5f\\x5fclass\\x5f\\x5f')) }}",
                    ),
                ],
                [ok_t],
                F32_4,
            ),
            exit1("MS704"),
        ),
        "chat_template_cycler_globals.gguf": (
            gguf(
                [
                    arch,
                    kv_str(
                        "tokenizer.chat_template.tool_use",
                        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
                    ),
                ],
                [ok_t],
                F32_4,
            ),
            exit1("MS704"),
        ),
    }


# -- ONNX -------------------------------------------------------------------------------------


def onnx_cases() -> dict[str, tuple[bytes, Expected]]:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def model(graph: Any, opsets: list[Any] | None = None) -> bytes:
        m = helper.make_model(
            graph, opset_imports=opsets or [helper.make_opsetid("", 17)], producer_name="corpus"
        )
        m.ir_version = 8
        return m.SerializeToString(deterministic=True)

    def external(location: str) -> bytes:
        t = numpy_helper.from_array(np.ones(4, np.float32), "w")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", "0"), ("length", "16")):
            e = t.external_data.add()
            e.key, e.value = k, v
        return _identity_graph(helper, TensorProto, [t])

    huge = TensorProto(
        name="w", data_type=TensorProto.FLOAT, dims=[1 << 40, 1 << 40], raw_data=F32_4
    )
    custom = helper.make_graph(
        [helper.make_node("Detect", ["x"], ["y"], domain="com.evil", name="trigger")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return {
        "external_dotdot.onnx": (model(external("../secret.bin")), exit2("climbs out")),
        "external_a_dotdot_dotdot_b.onnx": (model(external("a/../../b.bin")), exit2("climbs out")),
        "external_absolute.onnx": (model(external("/etc/passwd")), exit2("absolute")),
        "external_windows_absolute.onnx": (
            model(external("C:\\Windows\\win.ini")),
            exit2("absolute"),
        ),
        "huge_dims.onnx": (model(_identity_graph(helper, TensorProto, [huge])), exit2("need|dims")),
        "recursive_subgraphs.onnx": (_if_chain(200), exit2("nest|protobuf|ONNX")),
        "custom_domain.onnx": (
            model(custom, [helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)]),
            exit1("MS102"),
        ),
    }


def _pb(field: int, payload: bytes | int) -> bytes:
    """One protobuf field: varint for ints, length-delimited for bytes."""

    def varint(n: int) -> bytes:
        out = b""
        while True:
            out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                return out

    if isinstance(payload, int):
        return varint(field << 3) + varint(payload)
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def _if_chain(depth: int) -> bytes:
    """If nodes nested ``depth`` deep, encoded by hand: protobuf refuses to build it."""
    graph = _pb(1, _pb(1, b"x") + _pb(2, b"y") + _pb(4, b"Identity"))
    for _ in range(depth):
        attr = _pb(1, b"then_branch") + _pb(6, graph) + _pb(20, 5)
        node = _pb(1, b"c") + _pb(2, b"y") + _pb(4, b"If") + _pb(5, attr)
        graph = _pb(1, node)
    return _pb(1, 8) + _pb(7, graph) + _pb(8, _pb(2, 17))


def _identity_graph(helper: Any, TensorProto: Any, inits: list[Any]) -> Any:
    return helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )


def build_link_cases(folder: Path) -> dict[Path, Expected]:
    """ONNX external data through a symlink and a hard link (not storable in git)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    outside = folder / "outside"
    outside.mkdir(parents=True, exist_ok=True)
    secret = outside / "secret.bin"
    secret.write_bytes(F32_4)
    cases: dict[Path, Expected] = {}
    for kind in ("symlink", "hardlink"):
        model_dir = folder / kind
        model_dir.mkdir(exist_ok=True)
        link = model_dir / "weights.bin"
        if kind == "symlink":
            link.symlink_to(secret)
        else:
            os.link(secret, link)
        t = numpy_helper.from_array(np.ones(4, np.float32), "w")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", "16")):
            e = t.external_data.add()
            e.key, e.value = k, v
        m = helper.make_model(
            _identity_graph(helper, TensorProto, [t]), opset_imports=[helper.make_opsetid("", 17)]
        )
        m.ir_version = 8
        path = model_dir / "model.onnx"
        path.write_bytes(m.SerializeToString())
        cases[path] = exit2("resolves outside" if kind == "symlink" else "hard link")
    return cases


# -- driver -----------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[], dict[str, tuple[bytes, Expected]]]] = {
    "pytorch": pytorch_cases,
    "safetensors": safetensors_cases,
    "gguf": gguf_cases,
    "onnx": onnx_cases,
}


def build(dest: Path) -> dict[str, Expected]:
    """Write every corpus file under ``dest``; return ``{relpath: expected}``."""
    expected: dict[str, Expected] = {}
    for fmt, builder in BUILDERS.items():
        (dest / fmt).mkdir(parents=True, exist_ok=True)
        for name, (data, outcome) in sorted(builder().items()):
            (dest / fmt / name).write_bytes(data)
            expected[f"{fmt}/{name}"] = outcome
    crashes = dest / "crashes"
    if crashes.is_dir():  # fuzz finds, kept as they were found (see docs/hostile-input.md)
        for path in sorted(crashes.iterdir()):
            if path.suffix != ".json":
                meta = json.loads(path.with_name(path.name + ".json").read_text())
                expected[f"crashes/{path.name}"] = meta
    (dest / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    return expected


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS
    result = build(out)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(result)} corpus files to {out} ({total:,} bytes)")
