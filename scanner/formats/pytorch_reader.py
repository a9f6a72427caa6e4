"""PyTorch checkpoints and TorchScript archives, read without ``torch`` and without pickle.

Three containers are recognized by content:

* **zip** (``torch.save`` since 1.6): ``<archive>/data.pkl`` names storages by
  persistent id, each stored as ``<archive>/data/<key>``; ``byteorder`` says whether
  storages are little- or big-endian.
* **TorchScript** (``torch.jit.save``): the same zip layout plus ``constants.pkl``
  (storages under ``constants/``) and ``code/`` (TorchScript source, never run: it is
  listed in the metadata and reported by rule MS703).
* **legacy** (``_use_new_zipfile_serialization=False``): a magic-number pickle, a
  protocol-version pickle, a sys-info pickle, the object pickle, a pickle of storage
  keys, then each storage as an 8-byte little-endian element count and its bytes.

Pickles are interpreted by :mod:`scanner.formats.pickle_vm`, which records every global
they name and builds only tensors, containers and scalars. Each tensor becomes a
:class:`TensorInfo`: a :class:`FileSpan` straight into the file when it is a contiguous
slice of an uncompressed little-endian storage, otherwise bytes materialized in row-major
little-endian order (strided views, compressed members, big-endian archives), within a
memory cap. A pickle that names globals outside the vocabulary still opens: what they
would have built is opaque, the globals are in ``metadata["pickle"]`` for the scan rules,
and the tensors that could be read are there for manifest and diff. A pickle that cannot
be interpreted (truncated, unknown opcode, inconsistent storage) is malformed.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner.artifact import Artifact, FileInfo, FileSpan, InlineBytes, TensorInfo
from scanner.dtypes import DTYPES
from scanner.errors import MalformedArtifactError, ResourceLimitError, UnsupportedFormatError
from scanner.formats.base import Limits
from scanner.formats.pickle_vm import (
    ITEMSIZE,
    Audit,
    Deadline,
    Opaque,
    PickleLimits,
    PickleVM,
    StorageRef,
    StorageType,
    TensorRef,
    collect_tensors,
    describe,
    looks_like_pickle,
)
from scanner.formats.torchscript_code import (
    MAX_CODE_FILE_BYTES,
    MAX_CODE_TOTAL_BYTES,
    audit_code,
)
from scanner.lazy import lazy_module

# numpy only materializes tensors that are not stored contiguously: opening a
# checkpoint to hash or list it needs none.
np = lazy_module("numpy")

FORMAT = "pytorch"
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_LEGACY_MAGIC_BYTES = LEGACY_MAGIC.to_bytes(10, "little")
_TORCH_MEMBERS = (
    "data.pkl",
    "constants.pkl",
    "data/",
    "constants/",
    "code/",
    "version",
    "byteorder",
    ".data/",
    ".format_version",
    ".storage_alignment",
    "extra/",
    "serialization_id",
)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "params")
"""A checkpoint whose tensors all sit under one of these keys is named from inside it."""
_NESTED_HEAD = 64


class PytorchReader:
    """Reader for ``.pt`` / ``.pth`` / ``.bin`` checkpoints and TorchScript archives."""

    format = FORMAT

    def __init__(self, limits: PickleLimits | None = None) -> None:
        self._limits = limits

    def sniff(self, head: bytes) -> bool:
        if head[:4] == ZIP_MAGIC:
            return _sniff_zip(head)
        if len(head) >= 14 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2:4] == b"\x8a\x0a":
            return head[4:14] == _LEGACY_MAGIC_BYTES
        # A bare pickle (joblib / pickle.dump output): not a checkpoint, but it must be
        # audited rather than rejected as an unknown format.
        return looks_like_pickle(head)

    def open(self, path: Path, root: Path, limits: Limits) -> Artifact:
        plimits = self._limits or PickleLimits.from_env(limits)
        relpath = path.relative_to(root).as_posix() if path != root else path.name
        size = os.path.getsize(path)
        ctx = _Context(path, relpath, size, plimits, Deadline(plimits.time_budget_s), limits)
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head[:4] == ZIP_MAGIC:
                tensors, meta = _read_zip(ctx, fh)
            elif self.sniff(head) and head[2:4] == b"\x8a\x0a":
                tensors, meta = _read_legacy(ctx, fh)
            elif looks_like_pickle(head):
                tensors, meta = _read_bare(ctx, fh)
            else:
                raise UnsupportedFormatError(path, "not a PyTorch checkpoint or pickle")
        files = (FileInfo(relpath, path, size, "weights"),)
        metadata = {"pytorch": meta, "pickle": ctx.pickle_metadata()}
        return Artifact(path, root, FORMAT, files, tensors, metadata=metadata)


def _sniff_zip(head: bytes) -> bool:
    if len(head) < 31:
        return False
    name_len = struct.unpack("<H", head[26:28])[0]
    name = head[30 : 30 + name_len]
    if b"/" not in name:
        # The first member's name runs past the sniff window: let ``open`` decide.
        return len(name) < name_len
    rest = name.split(b"/", 1)[1].decode("utf-8", "replace")
    return any(m.startswith(rest) or rest.startswith(m) for m in _TORCH_MEMBERS)


# -- shared state of one read -------------------------------------------------------------


@dataclass
class _Context:
    path: Path
    relpath: str
    size: int
    limits: PickleLimits
    deadline: Deadline
    base: Limits
    audits: list[Audit] = field(default_factory=list)
    nested: list[dict[str, Any]] = field(default_factory=list)
    inline_bytes: int = 0

    def malformed(self, problem: str) -> MalformedArtifactError:
        return MalformedArtifactError(self.path, problem)

    def vm(self, data: Any, stream: str, base: int | None = None, **kw: Any) -> PickleVM:
        vm = PickleVM(
            data, path=self.path, stream=stream, limits=self.limits, deadline=self.deadline, **kw
        )
        vm.audit.base_offset = base if base is not None else kw.get("start")
        self.audits.append(vm.audit)
        return vm

    def charge_inline(self, nbytes: int, what: str) -> None:
        self.inline_bytes += nbytes
        if self.inline_bytes > self.limits.max_inline_bytes:
            raise ResourceLimitError(
                self.path,
                f"{what} needs {nbytes} bytes in memory; materialized tensors exceed the "
                f"{self.limits.max_inline_bytes}-byte cap (MODELSEAL_MAX_INLINE_BYTES)",
            )

    def pickle_metadata(self) -> dict[str, Any]:
        return {"streams": [a.to_dict() for a in self.audits], "nested": list(self.nested)}


# -- zip container ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    name: str
    data_offset: int
    compress_size: int
    file_size: int
    compressed: bool
    crc: int
    info: zipfile.ZipInfo


def _members(ctx: _Context, fh: Any) -> tuple[zipfile.ZipFile, dict[str, _Member]]:
    try:
        zf = zipfile.ZipFile(fh)
        infos = zf.infolist()
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        ValueError,
        struct.error,
        OSError,
        EOFError,
        UnicodeDecodeError,
        NotImplementedError,
    ) as exc:
        raise ctx.malformed(f"not a readable zip archive: {exc}") from None
    if len(infos) > ctx.base.max_files:
        raise ResourceLimitError(
            ctx.path, f"zip holds {len(infos)} members, over {ctx.base.max_files}"
        )
    members: dict[str, _Member] = {}
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        name = info.orig_filename
        if name in members:
            # Readers disagree on which of two same-named members wins.
            raise ctx.malformed(f"zip has two members named {name!r}")
        if info.flag_bits & 0x1:
            raise ctx.malformed(f"zip member {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ctx.malformed(
                f"zip member {name!r} uses unsupported compression {info.compress_type}"
            )
        if not 0 <= info.header_offset <= ctx.size - 30:
            raise ctx.malformed(
                f"zip member {name!r}: local header offset {info.header_offset} is outside the file"
            )
        fh.seek(info.header_offset)
        local = fh.read(30)
        if len(local) < 30 or local[:4] != ZIP_MAGIC:
            raise ctx.malformed(
                f"zip member {name!r}: no local header at offset {info.header_offset}"
            )
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        raw_name = fh.read(name_len)
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        if raw_name != name.encode(encoding, "replace"):
            raise ctx.malformed(
                f"zip member {name!r}: local header names {raw_name[:80]!r} (central directory "
                "and local header disagree)"
            )
        data_offset = info.header_offset + 30 + name_len + extra_len
        if data_offset + info.compress_size > ctx.size:
            raise ctx.malformed(f"zip member {name!r} runs past the end of the file")
        if not info.compress_type and info.compress_size != info.file_size:
            raise ctx.malformed(f"stored zip member {name!r} has two different sizes")
        members[name] = _Member(
            name,
            data_offset,
            info.compress_size,
            info.file_size,
            info.compress_type == zipfile.ZIP_DEFLATED,
            info.CRC,
            info,
        )
        spans.append((info.header_offset, data_offset + info.compress_size, name))
    spans.sort()
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        if start < end:
            raise ctx.malformed(f"zip members {a!r} and {b!r} overlap")
    return zf, members


def _read_member(
    ctx: _Context, zf: zipfile.ZipFile, fh: Any, m: _Member, cap: int, what: str
) -> bytes:
    if m.file_size > cap:
        raise ResourceLimitError(
            ctx.path, f"{what} {m.name!r} is {m.file_size} bytes, over the {cap}-byte cap"
        )
    if not m.compressed:
        fh.seek(m.data_offset)
        data = fh.read(m.file_size)
        if len(data) != m.file_size:
            raise ctx.malformed(f"zip member {m.name!r} is truncated")
        if zlib.crc32(data) != m.crc:
            raise ctx.malformed(f"zip member {m.name!r} fails its CRC check")
        return data
    try:
        with zf.open(m.info) as src:
            data = src.read(cap + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise ctx.malformed(f"zip member {m.name!r} cannot be decompressed: {exc}") from None
    if len(data) > cap:
        raise ResourceLimitError(ctx.path, f"{what} {m.name!r} inflates past the {cap}-byte cap")
    return data


def _read_zip(ctx: _Context, fh: Any) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    zf, members = _members(ctx, fh)
    prefixes = {name.split("/", 1)[0] for name in members}
    if len(prefixes) != 1 or any("/" not in n for n in members):
        raise ctx.malformed(
            f"members are not all inside one archive folder (found {sorted(prefixes)[:5]})"
        )
    prefix = prefixes.pop()
    data_pkl = members.get(f"{prefix}/data.pkl")
    constants_pkl = members.get(f"{prefix}/constants.pkl")
    code = sorted(n for n in members if n.startswith(f"{prefix}/code/"))
    torchscript = constants_pkl is not None or bool(code)
    if data_pkl is None:
        raise UnsupportedFormatError(
            ctx.path, "zip archive has no data.pkl: not a PyTorch checkpoint"
        )
    byteorder, version = _zip_records(ctx, zf, fh, members, prefix)
    storages = _ZipStorages(ctx, members, prefix)

    def run_pickle(member: _Member, folder: str, torchscript: bool) -> Any:
        pkl = _read_member(ctx, zf, fh, member, ctx.limits.max_pickle_bytes, "pickle")
        vm = ctx.vm(
            pkl,
            member.name,
            base=_raw_offset(member),
            persistent_load=storages.loader(folder),
            torchscript=torchscript,
        )
        return vm.run()

    root = run_pickle(data_pkl, "data", torchscript)
    named = collect_tensors(root, path=ctx.path, limits=ctx.limits, deadline=ctx.deadline)
    meta: dict[str, Any] = {
        "container": "torchscript" if torchscript else "zip",
        "archive": prefix,
        "byteorder": byteorder,
        "version": version,
    }
    if not torchscript:
        named, wrapper = _strip_wrapper(root, named)
        if wrapper:
            meta["state_dict_key"] = wrapper
    if constants_pkl is not None:
        constants = run_pickle(constants_pkl, "constants", True)
        for name, t in collect_tensors(constants, path=ctx.path, limits=ctx.limits):
            # TorchScript code refers to these as CONSTANTS.c0, CONSTANTS.c1 ...
            named.append((f"CONSTANTS.c{name}", t))
    expected = {data_pkl.name} | ({constants_pkl.name} if constants_pkl else set())
    _audit_zip_members(ctx, zf, fh, members, prefix, expected)
    used = {r.info.name for r in storages.refs.values()}
    unused = sorted(
        n
        for n in members
        if n.split("/", 1)[1].startswith(("data/", "constants/")) and n not in used
    )
    if unused:
        meta["unreferenced_storages"] = unused[:100]
    if torchscript:
        meta["torchscript"] = _torchscript_meta(ctx, zf, fh, members, code, prefix)
    meta["devices"] = sorted({r.location for r in storages.refs.values()})
    big = byteorder == "big"
    tensors = _tensor_infos(ctx, named, big, lambda ref: _zip_storage(ctx, zf, fh, ref))
    return tensors, meta


def _zip_records(
    ctx: _Context, zf: zipfile.ZipFile, fh: Any, members: dict[str, _Member], prefix: str
) -> tuple[str, str | None]:
    """The archive's byte order and format version records."""
    byteorder = "little"
    if f"{prefix}/byteorder" in members:
        raw = _read_member(ctx, zf, fh, members[f"{prefix}/byteorder"], 64, "byteorder record")
        byteorder = raw.decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise ctx.malformed(f"byteorder record says {byteorder[:20]!r}, not 'little' or 'big'")
    version = None
    if f"{prefix}/version" in members:
        raw = _read_member(ctx, zf, fh, members[f"{prefix}/version"], 64, "version record")
        version = raw.decode("ascii", "replace").strip()
    return byteorder, version


class _ZipStorages:
    """Resolves a zip checkpoint's storage persistent ids to its ``data/`` members."""

    def __init__(self, ctx: _Context, members: dict[str, _Member], prefix: str) -> None:
        self.ctx = ctx
        self.members = members
        self.prefix = prefix
        self.refs: dict[tuple[str, str], StorageRef] = {}

    def loader(self, folder: str) -> Any:
        return lambda pid, offset: self.resolve(folder, pid, offset)

    def resolve(self, folder: str, pid: Any, offset: int) -> Any:
        ctx = self.ctx
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
            raise ctx.malformed(
                f"{folder}.pkl: unsupported persistent id at pickle offset {offset}"
            )
        _, stype, key, location, numel = pid
        if isinstance(stype, Opaque):
            return Opaque("storage of an unknown type", offset)
        _check_storage_type(ctx, stype, f"{folder}.pkl")
        if not isinstance(key, str) or not isinstance(location, str):
            raise ctx.malformed(f"{folder}.pkl: storage key and location must be strings")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise ctx.malformed(f"{folder}.pkl: storage {key!r} has a bad element count")
        known = self.refs.get((folder, key))
        if known is not None:
            if known.dtype != stype.dtype or known.numel != numel:
                raise ctx.malformed(f"storage {key!r} is named with two different types or sizes")
            return known
        member = self.members.get(f"{self.prefix}/{folder}/{key}")
        if member is None:
            raise ctx.malformed(f"storage {key!r} has no {folder}/{key} member")
        itemsize = ITEMSIZE[stype.dtype]
        if numel * itemsize != member.file_size:
            raise ctx.malformed(
                f"storage {key!r} claims {numel} x {stype.dtype} = {numel * itemsize} bytes, "
                f"but {folder}/{key} holds {member.file_size}"
            )
        ref = StorageRef(key, stype.dtype, numel, location, itemsize, info=member)
        self.refs[(folder, key)] = ref
        return ref


def _check_storage_type(ctx: _Context, stype: Any, where: str) -> None:
    if not isinstance(stype, StorageType):
        raise ctx.malformed(f"{where}: storage type is not a torch storage class")
    if stype.dtype is None:
        raise UnsupportedFormatError(
            ctx.path, f"{stype.torch_name} (quantized storage) is not supported"
        )


def _audit_zip_members(
    ctx: _Context,
    zf: zipfile.ZipFile,
    fh: Any,
    members: dict[str, _Member],
    prefix: str,
    expected: set[str],
) -> None:
    """Audit every other pickle in the archive (debug info, or one an attacker added) and
    look inside every storage for a nested pickle or archive."""
    for name in sorted(members):
        if name.endswith("pkl") and name not in expected:
            m = members[name]
            _audit_extra(
                ctx,
                name,
                _raw_offset(m),
                lambda m=m: _read_member(ctx, zf, fh, m, ctx.limits.max_pickle_bytes, "pickle"),
            )
    for name in sorted(members):
        if name[len(prefix) + 1 :].startswith(("data/", "constants/")):
            m = members[name]
            _check_nested(
                ctx,
                name,
                _raw_offset(m),
                lambda m=m: _member_prefix(ctx, zf, fh, m, _NESTED_HEAD),
                lambda m=m: _member_prefix(ctx, zf, fh, m, ctx.limits.max_pickle_bytes),
            )


def _torchscript_meta(
    ctx: _Context,
    zf: zipfile.ZipFile,
    fh: Any,
    members: dict[str, _Member],
    code: list[str],
    prefix: str,
) -> dict[str, Any]:
    return {
        "code": _audit_torchscript_code(ctx, zf, fh, members, code, prefix),
        "code_files": [n[len(prefix) + 1 :] for n in code if not n.endswith(".debug_pkl")],
        "classes": sorted(
            {
                f"{g.module}.{g.name}"
                for a in ctx.audits
                for g in a.globals
                if g.status == "torchscript"
            }
        ),
    }


def _audit_torchscript_code(
    ctx: _Context,
    zf: zipfile.ZipFile,
    fh: Any,
    members: dict[str, _Member],
    code: list[str],
    prefix: str,
) -> dict[str, Any]:
    """What the archive's TorchScript source calls (parsed, never compiled or run)."""
    sources = [n for n in code if n.endswith(".py")]
    total = sum(members[n].file_size for n in sources)
    if total > MAX_CODE_TOTAL_BYTES:
        raise ResourceLimitError(
            ctx.path, f"TorchScript code is {total} bytes, over the {MAX_CODE_TOTAL_BYTES} cap"
        )
    return audit_code(
        (
            n[len(prefix) + 1 :],
            _read_member(ctx, zf, fh, members[n], MAX_CODE_FILE_BYTES, "TorchScript code"),
        )
        for n in sources
    ).to_dict()


def _raw_offset(m: _Member) -> int | None:
    return None if m.compressed else m.data_offset


def _member_prefix(ctx: _Context, zf: zipfile.ZipFile, fh: Any, m: _Member, n: int) -> bytes:
    """The first ``n`` bytes of a member (no CRC check: the member may be longer)."""
    if not m.compressed:
        fh.seek(m.data_offset)
        return fh.read(min(n, m.file_size))
    try:
        with zf.open(m.info) as src:
            return src.read(n)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise ctx.malformed(f"zip member {m.name!r} cannot be decompressed: {exc}") from None


@dataclass(frozen=True)
class _StorageBytes:
    """Where a storage's bytes are: a file span when stored raw, else loaded on demand."""

    file_offset: int | None
    load: Any


def _zip_storage(ctx: _Context, zf: zipfile.ZipFile, fh: Any, ref: StorageRef) -> _StorageBytes:
    m: _Member = ref.info
    if not m.compressed:
        return _StorageBytes(m.data_offset, None)
    return _StorageBytes(
        None, lambda: _read_member(ctx, zf, fh, m, ctx.limits.max_inline_bytes, "storage")
    )


# -- legacy container ---------------------------------------------------------------------


def _read_legacy(ctx: _Context, fh: Any) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    if ctx.size == 0:
        raise ctx.malformed("file is empty")
    data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _read_legacy_data(ctx, data)
    finally:
        data.close()


def _read_legacy_data(
    ctx: _Context, data: mmap.mmap
) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    pos = 0

    def next_pickle(stream: str, **kw: Any) -> Any:
        nonlocal pos
        vm = ctx.vm(data, stream, start=pos, **kw)
        value = vm.run()
        pos = vm.pos
        return value

    magic = next_pickle("magic number")
    if magic != LEGACY_MAGIC:
        raise ctx.malformed("legacy checkpoint has the wrong magic number")
    protocol = next_pickle("protocol version")
    if protocol != LEGACY_PROTOCOL:
        raise ctx.malformed(
            f"legacy protocol version {describe(protocol)} is not {LEGACY_PROTOCOL}"
        )
    sys_info = next_pickle("sys info")
    if not isinstance(sys_info, dict):
        raise ctx.malformed("legacy sys info is not a dict")
    storages = _LegacyStorages(ctx)
    obj = next_pickle("object pickle", persistent_load=storages.resolve)
    keys = next_pickle("storage keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ctx.malformed("legacy storage key list is not a list of strings")
    pos = _place_legacy_storages(ctx, data, pos, storages.roots, keys)
    if pos != ctx.size:
        raise ctx.malformed(
            f"{ctx.size - pos} bytes after the last storage are not part of the checkpoint"
        )
    named = collect_tensors(obj, path=ctx.path, limits=ctx.limits, deadline=ctx.deadline)
    named, wrapper = _strip_wrapper(obj, named)
    meta: dict[str, Any] = {
        "container": "legacy",
        "sys_info": {
            k: v
            for k, v in sys_info.items()
            if isinstance(k, str) and isinstance(v, (bool, int, str))
        },
        "devices": sorted({r.location for r in storages.roots.values()}),
    }
    if wrapper:
        meta["state_dict_key"] = wrapper
    if storages.modules:
        meta["module_sources"] = storages.modules
    # Legacy storages are written little-endian whatever the writer's byte order.
    return _tensor_infos(ctx, named, False, _legacy_storage_bytes), meta


class _LegacyStorages:
    """Resolves a legacy checkpoint's persistent ids: storages (and views of them) whose
    bytes follow the pickles, and whole modules saved with their source."""

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        self.roots: dict[str, StorageRef] = {}
        self.modules: list[str] = []

    def resolve(self, pid: Any, offset: int) -> Any:
        ctx = self.ctx
        if isinstance(pid, tuple) and len(pid) == 3 and pid[0] == "module":
            # A whole nn.Module saved with its source: the class global is audited, the
            # source text is recorded, nothing is compiled.
            self.modules.append(str(pid[1])[:200])
            return Opaque("module source", offset)
        if not isinstance(pid, tuple) or len(pid) != 6 or pid[0] != "storage":
            raise ctx.malformed(
                f"object pickle: unsupported persistent id at pickle offset {offset}"
            )
        _, stype, key, location, numel, view = pid
        if isinstance(stype, Opaque):
            return Opaque("storage of an unknown type", offset)
        _check_storage_type(ctx, stype, "object pickle")
        if not (
            isinstance(key, str)
            and isinstance(location, str)
            and isinstance(numel, int)
            and not isinstance(numel, bool)
            and numel >= 0
        ):
            raise ctx.malformed("object pickle: malformed storage persistent id")
        itemsize = ITEMSIZE[stype.dtype]
        if numel * itemsize > ctx.size:
            raise ctx.malformed(
                f"storage {key!r} claims {numel} elements, more than the file holds"
            )
        root = self.roots.get(key)
        if root is None:
            root = StorageRef(key, stype.dtype, numel, location, itemsize, info={"offset": None})
            self.roots[key] = root
        elif root.dtype != stype.dtype or root.numel != numel:
            raise ctx.malformed(f"storage {key!r} is named with two different types or sizes")
        return root if view is None else self._view(root, view)

    def _view(self, root: StorageRef, view: Any) -> StorageRef:
        if not (
            isinstance(view, tuple)
            and len(view) == 3
            and isinstance(view[0], str)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in view[1:])
        ):
            raise self.ctx.malformed("object pickle: malformed storage view")
        view_key, view_offset, view_size = view
        if view_offset + view_size > root.numel:
            raise self.ctx.malformed(f"storage view {view_key!r} runs past storage {root.key!r}")
        return StorageRef(
            view_key,
            root.dtype,
            view_size,
            root.location,
            root.itemsize,
            info={"root": root, "elem_offset": view_offset},
        )


def _place_legacy_storages(
    ctx: _Context, data: mmap.mmap, pos: int, roots: dict[str, StorageRef], keys: list[str]
) -> int:
    """Find each storage's bytes after the pickles (an element count, then the data), in
    the order of the key list; return the position after the last one."""
    if len(set(keys)) != len(keys):
        raise ctx.malformed("legacy storage key list names a storage twice")
    missing = sorted(set(roots) - set(keys))
    if missing:
        raise ctx.malformed(f"storages {missing[:5]} are referenced but have no data")
    for key in keys:
        root = roots.get(key)
        if root is None:
            raise ctx.malformed(f"storage {key!r} has data but is never referenced")
        if pos + 8 > ctx.size:
            raise ctx.malformed(f"file ends before storage {key!r}")
        (count,) = struct.unpack("<q", data[pos : pos + 8])
        if count != root.numel:
            raise ctx.malformed(
                f"storage {key!r} has {count} elements in the file, {root.numel} in the pickle"
            )
        root.info["offset"] = pos + 8
        pos += 8 + root.nbytes
        if pos > ctx.size:
            raise ctx.malformed(f"storage {key!r} runs past the end of the file")
        start = pos - root.nbytes
        _check_nested(
            ctx,
            f"storage {key}",
            start,
            lambda a=start, n=root.nbytes: bytes(data[a : a + min(_NESTED_HEAD, n)]),
            lambda a=start, n=root.nbytes: bytes(data[a : a + min(n, ctx.limits.max_pickle_bytes)]),
        )
    return pos


def _legacy_storage_bytes(ref: StorageRef) -> _StorageBytes:
    elem = 0
    if "root" in ref.info:
        elem = ref.info["elem_offset"]
        ref = ref.info["root"]
    return _StorageBytes(ref.info["offset"] + elem * ref.itemsize, None)


# -- bare pickle --------------------------------------------------------------------------


def _read_bare(ctx: _Context, fh: Any) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    if ctx.size > ctx.limits.max_pickle_bytes:
        raise ResourceLimitError(
            ctx.path,
            f"pickle of {ctx.size} bytes exceeds the {ctx.limits.max_pickle_bytes}-byte cap",
        )
    fh.seek(0)
    data = fh.read()
    # Loaders may call pickle.load repeatedly (torch's legacy format does), so every
    # stream up to the end of the file is audited; bytes that are not a pickle are an error.
    pos, count = 0, 0
    while pos < len(data):
        count += 1
        vm = ctx.vm(data, "pickle" if count == 1 else f"pickle stream {count}", base=pos, start=pos)
        vm.run()
        pos = vm.pos
    return {}, {"container": "pickle", "streams": count}


# -- helpers ------------------------------------------------------------------------------


def _audit_extra(ctx: _Context, name: str, base: int | None, read: Any) -> None:
    data = read()
    vm = PickleVM(data, path=ctx.path, stream=name, limits=ctx.limits, deadline=ctx.deadline)
    vm.audit.base_offset = base
    try:
        vm.run()
    except MalformedArtifactError as exc:
        vm.audit.issues.append(
            {"kind": "unparseable", "offset": vm.pos, "detail": exc.problem[:200]}
        )
    ctx.audits.append(vm.audit)


def _check_nested(ctx: _Context, where: str, base: int | None, head: Any, read: Any) -> None:
    """Tensor bytes that start like a pickle are a payload for a second-stage loader."""
    if not looks_like_pickle(head()):
        return
    vm = PickleVM(
        read(),
        path=ctx.path,
        stream=f"nested pickle in {where}",
        limits=ctx.limits,
        deadline=ctx.deadline,
    )
    vm.audit.base_offset = base
    complete = True
    try:
        vm.run()
    except MalformedArtifactError:
        complete = False
    if complete or vm.audit.globals:
        ctx.nested.append({"where": where, "complete": complete, **vm.audit.to_dict()})


def _strip_wrapper(
    root: Any, named: list[tuple[str, TensorRef]]
) -> tuple[list[tuple[str, TensorRef]], str | None]:
    if not isinstance(root, dict) or not named:
        return named, None
    for key in WRAPPER_KEYS:
        pre = key + "."
        if key in root and all(n.startswith(pre) for n, _ in named):
            return [(n[len(pre) :], t) for n, t in named], key
    return named, None


def _contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for d, s in zip(reversed(shape), reversed(stride), strict=True):
        if d != 1 and s != expected:
            return False
        expected *= d
    return True


def _tensor_infos(
    ctx: _Context, named: list[tuple[str, TensorRef]], big_endian: bool, locate: Any
) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    cache: dict[int, bytes] = {}
    for name, t in named:
        if name in tensors:
            raise ctx.malformed(f"two tensors are both named {name!r}")
        if len(t.shape) > ctx.base.max_dims:
            raise ctx.malformed(f"tensor {name!r} has {len(t.shape)} dims")
        numel = 1
        for d in t.shape:
            numel *= d
        nbytes = numel * t.itemsize
        dt = DTYPES[t.dtype]
        if numel == 0:
            source: FileSpan | InlineBytes = InlineBytes(b"")
        else:
            where: _StorageBytes = locate(t.storage)
            swap = big_endian and t.itemsize > 1
            if where.file_offset is not None and not swap and _contiguous(t.shape, t.stride):
                source = FileSpan(ctx.path, where.file_offset + t.offset * t.itemsize, nbytes)
            else:
                ctx.charge_inline(nbytes, f"tensor {name!r}")
                source = InlineBytes(_materialize(ctx, t, where, swap, cache))
        tensors[name] = TensorInfo(name, dt, t.shape, source, ctx.relpath)
        ctx.deadline.check(ctx.path, "reading tensors")
    return tensors


def _materialize(
    ctx: _Context, t: TensorRef, where: _StorageBytes, swap: bool, cache: dict[int, bytes]
) -> bytes:
    """Row-major little-endian bytes of a strided view (sizes already checked)."""
    last = t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride, strict=True))
    first_byte, end_byte = t.offset * t.itemsize, (last + 1) * t.itemsize
    if where.file_offset is not None:
        with open(ctx.path, "rb") as fh:
            fh.seek(where.file_offset + first_byte)
            raw = fh.read(end_byte - first_byte)
    else:
        key = id(t.storage)
        if key not in cache:
            cache[key] = where.load()
        raw = cache[key][first_byte:end_byte]
    if len(raw) != end_byte - first_byte:
        raise ctx.malformed("storage is shorter than its tensors need")
    elems = np.frombuffer(raw, dtype=np.dtype(f"V{t.itemsize}"))
    view = np.lib.stride_tricks.as_strided(
        elems, shape=t.shape, strides=tuple(s * t.itemsize for s in t.stride), writeable=False
    )
    out = np.ascontiguousarray(view)
    if swap:
        unit = t.itemsize // 2 if t.dtype in ("C64", "C128") else t.itemsize
        flat = out.view(np.uint8).reshape(-1, unit)[:, ::-1]
        return np.ascontiguousarray(flat).tobytes()
    return out.tobytes()
