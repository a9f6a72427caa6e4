"""A restricted pickle interpreter: reads pickles without Python's ``pickle`` module.

Python's unpickler imports whatever module a pickle names and calls whatever it is told
to call (``GLOBAL`` + ``REDUCE``, ``BUILD``, ``INST``, ``OBJ``, ``NEWOBJ``), so loading a
checkpoint is running code. This module interprets the opcode stream itself and builds
only a small vocabulary: plain containers and scalars, ``collections.OrderedDict``, the
torch tensor rebuild functions, storage types and dtypes, and (inside TorchScript
archives) opaque ``__torch__`` module objects. Every global the stream names is recorded
with its opcode offset; a global outside the vocabulary is never imported: the object it
would build becomes an :class:`Opaque` placeholder, so a hostile pickle can still be
audited (and its tensors read) without anything being executed.

The interpreter is a loop over opcodes with an explicit stack; nothing recurses on the
input's structure. Sizes claimed by the stream are checked against the bytes left before
anything is sliced, and the number of operations, memo entries, stack items, marks and
the wall-clock time are all capped (:class:`PickleLimits`).
"""

from __future__ import annotations

import _compat_pickle
import codecs
import mmap
import os
import re
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from scanner.errors import MalformedArtifactError, ResourceLimitError, UsageError

# -- limits -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PickleLimits:
    """Caps on one pickle stream and on one PyTorch file; exceeded caps are errors.

    Each can be set from the environment (see :meth:`from_env`), so an operator can
    widen a cap for a known-large checkpoint without code changes.
    """

    max_pickle_bytes: int = 256 << 20
    """Largest pickle stream (``data.pkl``) read into memory."""
    max_ops: int = 50_000_000
    max_memo: int = 4_000_000
    max_stack: int = 4_000_000
    max_marks: int = 100_000
    max_string_bytes: int = 16 << 20
    max_int_bytes: int = 1024
    """Longest ``LONG`` / ``LONG4`` integer; torch never writes more than 8 bytes."""
    max_depth: int = 512
    """Deepest container nesting followed when collecting tensors."""
    max_walk: int = 1_000_000
    """Most container visits when collecting tensors (shared sub-objects count again)."""
    max_inline_bytes: int = 1 << 30
    """Most bytes materialized in memory for strided / compressed / big-endian tensors."""
    time_budget_s: float = 120.0
    """Wall-clock seconds one file may take to interpret."""
    max_dims: int = 16
    max_tensors: int = 1_000_000

    ENV = {
        "max_pickle_bytes": "MODELSEAL_MAX_PICKLE_BYTES",
        "max_inline_bytes": "MODELSEAL_MAX_INLINE_BYTES",
        "time_budget_s": "MODELSEAL_TIME_BUDGET",
        "max_ops": "MODELSEAL_MAX_PICKLE_OPS",
        "max_depth": "MODELSEAL_MAX_PICKLE_DEPTH",
    }

    @classmethod
    def from_env(cls, base: Any = None, env: Mapping[str, str] | None = None) -> PickleLimits:
        """Defaults, overridden by ``base`` (a reader ``Limits``) and the environment."""
        env = os.environ if env is None else env
        limits = cls()
        if base is not None:
            limits = replace(
                limits,
                max_string_bytes=base.max_string_bytes,
                max_dims=base.max_dims,
                max_tensors=base.max_tensors,
            )
        for attr, var in cls.ENV.items():
            text = env.get(var)
            if not text:
                continue
            try:
                value: float = float(text) if attr == "time_budget_s" else int(text)
            except ValueError:
                raise UsageError(f"{var}={text!r} is not a number") from None
            if value <= 0:
                raise UsageError(f"{var}={text!r} must be positive")
            limits = replace(limits, **{attr: value})
        return limits


class Deadline:
    """A per-file time budget shared by every stream and step of one read."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self, path: Any, what: str) -> None:
        if time.monotonic() > self.end:
            raise ResourceLimitError(
                path,
                f"{what} took longer than the {self.seconds:g} s time budget "
                "(raise MODELSEAL_TIME_BUDGET for a larger file)",
            )


# -- values the interpreter builds ------------------------------------------------------


@dataclass(frozen=True)
class Global:
    """A reference to an allowlisted global (a callable or a type token)."""

    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True, eq=False)
class Opaque:
    """What a non-allowlisted global, or a call of one, would have produced."""

    what: str
    offset: int


@dataclass(frozen=True)
class TorchDtype:
    """A ``torch.<dtype>`` object; ``name`` is the canonical dtype name or ``None``."""

    torch_name: str
    name: str | None


@dataclass(frozen=True)
class StorageType:
    """A ``torch.<X>Storage`` class: a dtype for the storage's elements."""

    torch_name: str
    dtype: str | None
    """Canonical dtype name; ``U8`` for ``UntypedStorage``; ``None`` for unsupported."""


@dataclass(frozen=True, eq=False)
class StorageRef:
    """A storage named by a persistent id; the reader resolves it to file bytes."""

    key: str
    dtype: str
    numel: int
    location: str
    itemsize: int
    info: Any = None
    """Reader-specific resolution (zip member, legacy file offset)."""

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(frozen=True, eq=False)
class TensorRef:
    """A tensor as ``torch._utils._rebuild_tensor*`` would build it."""

    storage: StorageRef
    offset: int
    """In elements of ``dtype``."""
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    itemsize: int
    requires_grad: bool = False
    parameter: bool = False


@dataclass(eq=False)
class ScriptObject:
    """A TorchScript module object (``__torch__.*``): its attributes, never its code."""

    qualname: str
    attrs: dict[str, Any] = field(default_factory=dict)


class PickleDict(dict):  # type: ignore[type-arg]
    """A dict or ``OrderedDict`` from the stream; ``attrs`` holds BUILD state (``_metadata``)."""

    attrs: dict[str, Any]


# -- the vocabulary ---------------------------------------------------------------------

# torch dtype attribute name -> canonical dtype name (None: known to torch, not supported).
TORCH_DTYPES: dict[str, str | None] = {
    "float32": "F32",
    "float": "F32",
    "float64": "F64",
    "double": "F64",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "long": "I64",
    "int32": "I32",
    "int": "I32",
    "int16": "I16",
    "short": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "complex64": "C64",
    "cfloat": "C64",
    "complex128": "C128",
    "cdouble": "C128",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
    "complex32": None,
    "chalf": None,
    "qint8": None,
    "qint32": None,
    "quint8": None,
    "quint4x2": None,
    "quint2x4": None,
    "float4_e2m1fn_x2": None,
    "bits8": None,
    "bits16": None,
    "bits1x8": None,
    "bits2x4": None,
    "bits4x2": None,
}

STORAGE_TYPES: dict[str, str | None] = {
    "FloatStorage": "F32",
    "DoubleStorage": "F64",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64",
    "ComplexDoubleStorage": "C128",
    "UntypedStorage": "U8",
    "QInt8Storage": None,
    "QInt32Storage": None,
    "QUInt8Storage": None,
    "QUInt4x2Storage": None,
    "QUInt2x4Storage": None,
}

ITEMSIZE = {
    "F32": 4,
    "F64": 8,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "C64": 8,
    "C128": 16,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
    "F8_E8M0": 1,
}

_REBUILD = "torch._utils"
_JIT = "torch.jit._pickle"
ALLOWED_CALLABLES = {
    ("collections", "OrderedDict"),
    (_REBUILD, "_rebuild_tensor"),
    (_REBUILD, "_rebuild_tensor_v2"),
    (_REBUILD, "_rebuild_tensor_v3"),
    (_REBUILD, "_rebuild_parameter"),
    (_REBUILD, "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Size"),
    ("torch", "device"),
    ("_codecs", "encode"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "bytes"),
    ("builtins", "complex"),
    (_JIT, "build_intlist"),
    (_JIT, "build_floatlist"),
    (_JIT, "build_doublelist"),
    (_JIT, "build_boollist"),
    (_JIT, "build_tensorlist"),
    (_JIT, "build_genericlist"),
    (_JIT, "restore_type_tag"),
}
_TYPE_TOKENS = {("torch", "Tensor"), ("torch.nn.parameter", "Parameter")}

# Used only to grade a finding's severity: anything outside the allowlist is reported
# whether or not it appears here (this is not a denylist).
CODE_EXECUTION_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "socket",
        "shutil",
        "importlib",
        "runpy",
        "pty",
        "commands",
        "webbrowser",
        "pickle",
        "_pickle",
        "marshal",
        "types",
        "ctypes",
        "code",
        "codeop",
        "multiprocessing",
        "asyncio",
        "urllib",
        "http",
        "ftplib",
        "smtplib",
        "telnetlib",
        "tempfile",
        "platform",
        "signal",
        "threading",
        "_thread",
        "inspect",
        "pdb",
        "bdb",
        "timeit",
        "trace",
        "profile",
        "cProfile",
        "pydoc",
        "dill",
        "cloudpickle",
        "joblib",
        "torch.hub",
        "torch.serialization",
        "numpy.load",
        "sqlite3",
        "zipimport",
    }
)
CODE_EXECUTION_NAMES = frozenset(
    {
        ("builtins", n)
        for n in (
            "eval",
            "exec",
            "compile",
            "getattr",
            "setattr",
            "delattr",
            "__import__",
            "open",
            "input",
            "breakpoint",
            "globals",
            "locals",
            "vars",
            "execfile",
            "apply",
            "file",
            "memoryview",
            "type",
            "object",
            "classmethod",
            "staticmethod",
            "super",
            "help",
            "exit",
            "quit",
        )
    }
    | {
        ("operator", "attrgetter"),
        ("operator", "methodcaller"),
        ("operator", "itemgetter"),
        ("functools", "partial"),
        ("functools", "reduce"),
        ("copyreg", "_reconstructor"),
        ("numpy", "load"),
        ("numpy.lib.npyio", "load"),
        ("torch", "load"),
        ("torch.storage", "_load_from_bytes"),
    }
)


def classify_global(module: str, name: str, torchscript: bool = False) -> str:
    """``allowed``, ``torchscript``, ``code-execution`` or ``unknown``."""
    if (module, name) in ALLOWED_CALLABLES or (module, name) in _TYPE_TOKENS:
        return "allowed"
    if module == "torch" and (name in TORCH_DTYPES or name in STORAGE_TYPES):
        return "allowed"
    if module == "torch.storage" and name == "UntypedStorage":
        return "allowed"
    if (
        torchscript
        and (module == "__torch__" or module.startswith("__torch__."))
        # A single leading underscore is an ordinary private class (torch 1.x scripted
        # MultiheadAttention as _LinearWithBias); dunders are attribute tricks.
        and ("__" not in name.strip("_") and not name.startswith("__"))
    ):
        return "torchscript"
    root = module.split(".")[0]
    if (
        root in CODE_EXECUTION_MODULES
        or module in CODE_EXECUTION_MODULES
        or (module, name) in CODE_EXECUTION_NAMES
        or (module, name.split(".")[0]) in CODE_EXECUTION_NAMES
        or "__" in name  # dunder getattr chains: "__class__.__base__", "__subclasses__"
    ):
        return "code-execution"
    return "unknown"


# -- the interpreter ---------------------------------------------------------------------


class PickleError(MalformedArtifactError):
    """The stream cannot be interpreted: truncated, an unknown opcode, a bad argument."""


@dataclass(frozen=True)
class GlobalRef:
    """One global named by the stream, where, and how it was judged."""

    module: str
    name: str
    offset: int
    opcode: str
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "name": self.name,
            "offset": self.offset,
            "opcode": self.opcode,
            "status": self.status,
        }


@dataclass
class Audit:
    """What one stream named and did, recorded while it was interpreted."""

    stream: str
    protocol: int = 0
    globals: list[GlobalRef] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    """Calls / BUILDs applied to opaque objects (what a real unpickler would run)."""
    issues: list[dict[str, Any]] = field(default_factory=list)
    """Constructs outside the vocabulary that are not a global (EXT codes, PERSID)."""
    ops: int = 0
    length: int = 0
    base_offset: int | None = None
    """File offset where the stream starts, when it is stored raw in the file."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "base_offset": self.base_offset,
            "protocol": self.protocol,
            "length": self.length,
            "ops": self.ops,
            "globals": [g.to_dict() for g in self.globals],
            "calls": list(self.calls),
            "issues": list(self.issues),
        }


_MARK = object()
_MAX_KEY_ITEMS = 64


def describe(value: Any, limit: int = 80, depth: int = 0) -> str:
    """A bounded description of a pickled value for messages and evidence.

    Never ``repr`` a value from the stream: it can nest deeper than the C stack.
    """
    if isinstance(value, (str, bytes)):
        text = repr(value[:limit])
        return text + ("..." if len(value) > limit else "")
    if isinstance(value, (int, float, bool)) or value is None:
        return repr(value)[:limit]
    if isinstance(value, Opaque):
        return f"<{value.what[:limit]}>"
    if isinstance(value, Global):
        return value.qualname
    if isinstance(value, tuple) and depth < 2:
        inner = ", ".join(describe(v, 40, depth + 1) for v in value[:4])
        return "(" + inner + (", ..." if len(value) > 4 else "") + ")"
    return f"<{type(value).__name__}>"


class PickleVM:
    """Interpret one pickle stream from ``data[start:]`` up to and including ``STOP``.

    ``persistent_load(pid, offset)`` resolves ``PERSID`` / ``BINPERSID``; without it a
    persistent id is recorded as an issue and becomes opaque. ``torchscript`` admits
    ``__torch__.*`` classes as :class:`ScriptObject`.
    """

    def __init__(
        self,
        data: bytes | mmap.mmap,
        *,
        path: Any,
        stream: str,
        limits: PickleLimits,
        deadline: Deadline | None = None,
        persistent_load: Callable[[Any, int], Any] | None = None,
        torchscript: bool = False,
        start: int = 0,
    ) -> None:
        self.data = data
        self.path = path
        self.limits = limits
        self.deadline = deadline or Deadline(limits.time_budget_s)
        self.persistent_load = persistent_load
        self.torchscript = torchscript
        self.pos = start
        self.start = start
        self.audit = Audit(stream)
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}

    # -- helpers -------------------------------------------------------------------------
    def _fail(self, problem: str, offset: int | None = None) -> PickleError:
        at = self.pos if offset is None else offset
        return PickleError(
            self.path, f"{self.audit.stream}: {problem} (at pickle offset {at - self.start})"
        )

    def _read(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise self._fail(
                f"pickle stream is truncated: {n} bytes wanted, {len(self.data) - self.pos} left"
            )
        chunk = bytes(self.data[self.pos : end])
        self.pos = end
        return chunk

    def _readline(self) -> bytes:
        data = self.data
        limit = min(len(data), self.pos + self.limits.max_string_bytes + 1)
        nl = data.find(b"\n", self.pos, limit)
        if nl < 0:
            raise self._fail("pickle stream is truncated inside a text argument")
        line = bytes(data[self.pos : nl])
        self.pos = nl + 1
        return line

    def _sized(self, fmt: str, what: str) -> bytes:
        (n,) = struct.unpack(fmt, self._read(struct.calcsize(fmt)))
        if n > self.limits.max_string_bytes:
            raise ResourceLimitError(
                self.path,
                f"{self.audit.stream}: {what} of {n} bytes exceeds the "
                f"{self.limits.max_string_bytes}-byte limit",
            )
        return self._read(n)

    def _push(self, value: Any) -> None:
        if len(self.stack) >= self.limits.max_stack:
            raise ResourceLimitError(
                self.path,
                f"{self.audit.stream}: pickle stack exceeds {self.limits.max_stack} items",
            )
        self.stack.append(value)

    def _pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise self._fail("pickle stack underflow")
        return self.stack.pop()

    def _top(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise self._fail("pickle stack underflow")
        return self.stack[-1]

    def _pop_mark(self) -> list[Any]:
        if not self.marks:
            raise self._fail("pickle opcode needs a MARK but none is open")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def _memo_put(self, key: int, value: Any) -> None:
        if key not in self.memo and len(self.memo) >= self.limits.max_memo:
            raise ResourceLimitError(
                self.path,
                f"{self.audit.stream}: pickle memo exceeds {self.limits.max_memo} entries",
            )
        self.memo[key] = value

    def _memo_get(self, key: int) -> Any:
        try:
            return self.memo[key]
        except KeyError:
            raise self._fail(f"memo key {key} was never stored") from None

    def _key(self, key: Any) -> Any:
        """Dict keys / set items must hash without recursion: scalars or shallow tuples."""
        todo = [(key, 0)]
        seen = 0
        while todo:
            item, depth = todo.pop()
            seen += 1
            if item is None or isinstance(
                item, (str, bytes, int, float, bool, complex, TorchDtype, Global, Opaque)
            ):
                continue
            if isinstance(item, tuple) and depth < 4 and seen < _MAX_KEY_ITEMS:
                todo.extend((v, depth + 1) for v in item)
                continue
            raise self._fail(f"unsupported dict key or set item of type {type(item).__name__}")
        return key

    # -- globals and calls ---------------------------------------------------------------
    def _global(self, module: str, name: str, opcode: str, offset: int) -> Any:
        if self.audit.protocol < 3 and (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif self.audit.protocol < 3 and module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        status = classify_global(module, name, self.torchscript)
        self.audit.globals.append(GlobalRef(module, name, offset - self.start, opcode, status))
        if status == "allowed":
            if module == "torch" and name in TORCH_DTYPES:
                return TorchDtype(name, TORCH_DTYPES[name])
            if module in ("torch", "torch.storage") and name in STORAGE_TYPES:
                return StorageType(name, STORAGE_TYPES[name])
            return Global(module, name)
        if status == "torchscript":
            return Global(module, name)
        return Opaque(f"{module}.{name}", offset - self.start)

    def _call(self, func: Any, args: Any, offset: int, how: str) -> Any:
        if isinstance(func, Opaque):
            self.audit.calls.append(
                {
                    "callable": func.what,
                    "offset": offset - self.start,
                    "how": how,
                    "args": describe(args),
                }
            )
            return Opaque(f"{func.what}(...)", offset - self.start)
        if not isinstance(func, Global):
            raise self._fail(
                f"{how} applied to a {type(func).__name__}, which is not callable", offset
            )
        if not isinstance(args, tuple):
            raise self._fail(f"{how} arguments are a {type(args).__name__}, not a tuple", offset)
        if func.module.startswith("__torch__"):
            if how not in ("NEWOBJ", "NEWOBJ_EX") or args:
                raise self._fail(f"TorchScript class {func.qualname} built by {how}", offset)
            return ScriptObject(func.qualname)
        impl = _IMPLS.get((func.module, func.name))
        if impl is not None and any(isinstance(a, Opaque) for a in args):
            # An allowlisted function fed an opaque object: keep going so the audit can
            # finish; the opaque object's own global is already a finding.
            return Opaque(f"{func.qualname}(<opaque>)", offset - self.start)
        if impl is None:  # type tokens (torch.Tensor) are not callable here
            raise self._fail(f"{func.qualname} cannot be called", offset)
        try:
            return impl(self, args)
        except (TypeError, ValueError, IndexError) as exc:
            raise self._fail(f"bad arguments to {func.qualname}: {exc}", offset) from None

    def _build(self, inst: Any, state: Any, offset: int) -> None:
        if isinstance(inst, Opaque):
            # A __setstate__ on an unknown object is code a real unpickler would run.
            self.audit.calls.append(
                {
                    "callable": inst.what,
                    "offset": offset - self.start,
                    "how": "BUILD",
                    "args": describe(state),
                }
            )
            return
        if isinstance(inst, PickleDict) and isinstance(state, dict):
            inst.attrs = dict(state)
            return
        if isinstance(inst, ScriptObject) and isinstance(state, dict):
            for k in state:
                if not isinstance(k, str):
                    raise self._fail(
                        "TorchScript object state has a non-string attribute name", offset
                    )
            inst.attrs.update(state)
            return
        if isinstance(inst, TensorRef) and (state is None or isinstance(state, (dict, tuple))):
            return  # Tensor.__setstate__: requires_grad / hooks / python attributes
        raise self._fail(f"BUILD on a {type(inst).__name__} is not supported", offset)

    def _issue(self, kind: str, offset: int, detail: str) -> None:
        self.audit.issues.append({"kind": kind, "offset": offset - self.start, "detail": detail})

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> Any:
        """Interpret to ``STOP``; return the top of the stack. ``self.pos`` ends past STOP."""
        data = self.data
        n = len(data)
        ops = 0
        limits = self.limits
        dispatch = _DISPATCH
        while True:
            if self.pos >= n:
                raise self._fail("pickle stream is truncated: it ends without a STOP opcode")
            offset = self.pos
            code = data[offset]
            self.pos += 1
            ops += 1
            if ops & 0xFFF == 0:
                if ops > limits.max_ops:
                    raise ResourceLimitError(
                        self.path,
                        f"{self.audit.stream}: more than {limits.max_ops} pickle operations",
                    )
                self.deadline.check(self.path, f"interpreting {self.audit.stream}")
            if code == 0x2E:  # STOP
                self.audit.ops = ops
                self.audit.length = self.pos - self.start
                value = self._pop()
                return value
            handler = dispatch.get(code)
            if handler is None:
                raise self._fail(f"unknown pickle opcode 0x{code:02x}", offset)
            handler(self, offset)


# -- opcode handlers ----------------------------------------------------------------------
# Each takes (vm, offset of the opcode). Grouped as in pickletools.


def _op_proto(vm: PickleVM, off: int) -> None:
    proto = vm._read(1)[0]
    if proto > 5:
        raise vm._fail(f"unsupported pickle protocol {proto}", off)
    vm.audit.protocol = proto


def _op_frame(vm: PickleVM, off: int) -> None:
    (length,) = struct.unpack("<Q", vm._read(8))
    if length > len(vm.data) - vm.pos:
        raise vm._fail(f"FRAME of {length} bytes runs past the end of the stream", off)


def _op_mark(vm: PickleVM, off: int) -> None:
    if len(vm.marks) >= vm.limits.max_marks:
        raise ResourceLimitError(
            vm.path, f"{vm.audit.stream}: more than {vm.limits.max_marks} nested MARKs"
        )
    vm.marks.append(len(vm.stack))


def _op_pop(vm: PickleVM, off: int) -> None:
    if vm.stack and (not vm.marks or len(vm.stack) > vm.marks[-1]):
        vm.stack.pop()
    elif vm.marks and len(vm.stack) == vm.marks[-1]:
        vm.marks.pop()  # POP of a MARK, as pickle.py does
    else:
        raise vm._fail("POP on an empty stack", off)


def _op_pop_mark(vm: PickleVM, off: int) -> None:
    vm._pop_mark()


def _op_dup(vm: PickleVM, off: int) -> None:
    vm._push(vm._top())


def _int_arg(fmt: str) -> Callable[[PickleVM, int], None]:
    size = struct.calcsize(fmt)

    def handler(vm: PickleVM, off: int) -> None:
        vm._push(struct.unpack(fmt, vm._read(size))[0])

    return handler


def _op_int(vm: PickleVM, off: int) -> None:
    line = vm._readline()
    if line == b"00":
        vm._push(False)
    elif line == b"01":
        vm._push(True)
    else:
        vm._push(_parse_int(vm, line, off))


def _parse_int(vm: PickleVM, text: bytes, off: int) -> int:
    if len(text) > vm.limits.max_int_bytes * 3:
        raise vm._fail(f"integer literal of {len(text)} digits is too long", off)
    try:
        return int(text, 0) if text.lower().startswith((b"0x", b"-0x")) else int(text)
    except ValueError:
        raise vm._fail(f"bad integer literal {text[:40]!r}", off) from None


def _op_long(vm: PickleVM, off: int) -> None:
    line = vm._readline()
    if line.endswith(b"L"):
        line = line[:-1]
    vm._push(_parse_int(vm, line, off))


def _op_long1(vm: PickleVM, off: int) -> None:
    n = vm._read(1)[0]
    vm._push(int.from_bytes(vm._read(n), "little", signed=True))


def _op_long4(vm: PickleVM, off: int) -> None:
    (n,) = struct.unpack("<i", vm._read(4))
    if n < 0:
        raise vm._fail("LONG4 with a negative length", off)
    if n > vm.limits.max_int_bytes:
        raise ResourceLimitError(
            vm.path,
            f"{vm.audit.stream}: LONG4 integer of {n} bytes at pickle offset {off - vm.start}",
        )
    vm._push(int.from_bytes(vm._read(n), "little", signed=True))


def _op_float(vm: PickleVM, off: int) -> None:
    line = vm._readline()
    try:
        vm._push(float(line))
    except ValueError:
        raise vm._fail(f"bad float literal {line[:40]!r}", off) from None


def _op_binfloat(vm: PickleVM, off: int) -> None:
    vm._push(struct.unpack(">d", vm._read(8))[0])


def _op_none(vm: PickleVM, off: int) -> None:
    vm._push(None)


def _op_true(vm: PickleVM, off: int) -> None:
    vm._push(True)


def _op_false(vm: PickleVM, off: int) -> None:
    vm._push(False)


def _op_string(vm: PickleVM, off: int) -> None:
    line = vm._readline()
    if len(line) >= 2 and line[0] == line[-1] and line[:1] in (b"'", b'"'):
        try:
            vm._push(codecs.escape_decode(line[1:-1])[0].decode("latin-1"))
        except ValueError:
            raise vm._fail("bad escape in STRING", off) from None
    else:
        raise vm._fail("STRING argument is not quoted", off)


def _decode(vm: PickleVM, raw: bytes, off: int, encoding: str = "utf-8") -> str:
    try:
        return raw.decode(encoding, "surrogatepass")
    except UnicodeDecodeError:
        raise vm._fail("string is not valid UTF-8", off) from None


def _op_binstring(vm: PickleVM, off: int) -> None:
    vm._push(vm._sized("<i", "BINSTRING").decode("latin-1"))


def _op_short_binstring(vm: PickleVM, off: int) -> None:
    vm._push(vm._sized("<B", "SHORT_BINSTRING").decode("latin-1"))


def _op_unicode(vm: PickleVM, off: int) -> None:
    vm._push(_decode(vm, vm._readline(), off, "raw-unicode-escape"))


def _op_binunicode(vm: PickleVM, off: int) -> None:
    vm._push(_decode(vm, vm._sized("<I", "BINUNICODE"), off))


def _op_short_binunicode(vm: PickleVM, off: int) -> None:
    vm._push(_decode(vm, vm._sized("<B", "SHORT_BINUNICODE"), off))


def _op_binunicode8(vm: PickleVM, off: int) -> None:
    vm._push(_decode(vm, vm._sized("<Q", "BINUNICODE8"), off))


def _op_binbytes(vm: PickleVM, off: int) -> None:
    vm._push(vm._sized("<I", "BINBYTES"))


def _op_short_binbytes(vm: PickleVM, off: int) -> None:
    vm._push(vm._sized("<B", "SHORT_BINBYTES"))


def _op_binbytes8(vm: PickleVM, off: int) -> None:
    vm._push(vm._sized("<Q", "BINBYTES8"))


def _op_bytearray8(vm: PickleVM, off: int) -> None:
    vm._push(bytearray(vm._sized("<Q", "BYTEARRAY8")))


def _op_out_of_band(vm: PickleVM, off: int) -> None:
    raise vm._fail("out-of-band buffer opcode without buffers (not a file format)", off)


def _op_empty_tuple(vm: PickleVM, off: int) -> None:
    vm._push(())


def _op_tuple(vm: PickleVM, off: int) -> None:
    vm._push(tuple(vm._pop_mark()))


def _tuple_n(count: int) -> Callable[[PickleVM, int], None]:
    def handler(vm: PickleVM, off: int) -> None:
        items = [vm._pop() for _ in range(count)]
        vm._push(tuple(reversed(items)))

    return handler


def _op_empty_list(vm: PickleVM, off: int) -> None:
    vm._push([])


def _op_list(vm: PickleVM, off: int) -> None:
    vm._push(vm._pop_mark())


def _op_append(vm: PickleVM, off: int) -> None:
    value = vm._pop()
    target = vm._top()
    if not isinstance(target, list):
        raise vm._fail(f"APPEND to a {type(target).__name__}", off)
    target.append(value)


def _op_appends(vm: PickleVM, off: int) -> None:
    items = vm._pop_mark()
    target = vm._top()
    if not isinstance(target, list):
        raise vm._fail(f"APPENDS to a {type(target).__name__}", off)
    target.extend(items)


def _op_empty_dict(vm: PickleVM, off: int) -> None:
    vm._push(PickleDict())


def _op_dict(vm: PickleVM, off: int) -> None:
    items = vm._pop_mark()
    if len(items) % 2:
        raise vm._fail("DICT with an odd number of items", off)
    d = PickleDict()
    for i in range(0, len(items), 2):
        d[vm._key(items[i])] = items[i + 1]
    vm._push(d)


def _op_setitem(vm: PickleVM, off: int) -> None:
    value = vm._pop()
    key = vm._pop()
    target = vm._top()
    if not isinstance(target, dict):
        raise vm._fail(f"SETITEM on a {type(target).__name__}", off)
    target[vm._key(key)] = value


def _op_setitems(vm: PickleVM, off: int) -> None:
    items = vm._pop_mark()
    target = vm._top()
    if not isinstance(target, dict):
        raise vm._fail(f"SETITEMS on a {type(target).__name__}", off)
    if len(items) % 2:
        raise vm._fail("SETITEMS with an odd number of items", off)
    for i in range(0, len(items), 2):
        target[vm._key(items[i])] = items[i + 1]


def _op_empty_set(vm: PickleVM, off: int) -> None:
    vm._push(set())


def _op_additems(vm: PickleVM, off: int) -> None:
    items = vm._pop_mark()
    target = vm._top()
    if not isinstance(target, set):
        raise vm._fail(f"ADDITEMS on a {type(target).__name__}", off)
    for item in items:
        target.add(vm._key(item))


def _op_frozenset(vm: PickleVM, off: int) -> None:
    vm._push(frozenset(vm._key(i) for i in vm._pop_mark()))


def _op_get(vm: PickleVM, off: int) -> None:
    vm._push(vm._memo_get(_parse_int(vm, vm._readline(), off)))


def _op_binget(vm: PickleVM, off: int) -> None:
    vm._push(vm._memo_get(vm._read(1)[0]))


def _op_long_binget(vm: PickleVM, off: int) -> None:
    vm._push(vm._memo_get(struct.unpack("<I", vm._read(4))[0]))


def _op_put(vm: PickleVM, off: int) -> None:
    key = _parse_int(vm, vm._readline(), off)
    if key < 0:
        raise vm._fail("negative PUT index", off)
    vm._memo_put(key, vm._top())


def _op_binput(vm: PickleVM, off: int) -> None:
    vm._memo_put(vm._read(1)[0], vm._top())


def _op_long_binput(vm: PickleVM, off: int) -> None:
    vm._memo_put(struct.unpack("<I", vm._read(4))[0], vm._top())


def _op_memoize(vm: PickleVM, off: int) -> None:
    vm._memo_put(len(vm.memo), vm._top())


def _op_global(vm: PickleVM, off: int) -> None:
    module = _decode(vm, vm._readline(), off)
    name = _decode(vm, vm._readline(), off)
    vm._push(vm._global(module, name, "GLOBAL", off))


def _op_stack_global(vm: PickleVM, off: int) -> None:
    name = vm._pop()
    module = vm._pop()
    if not isinstance(module, str) or not isinstance(name, str):
        raise vm._fail("STACK_GLOBAL needs two strings", off)
    vm._push(vm._global(module, name, "STACK_GLOBAL", off))


def _op_inst(vm: PickleVM, off: int) -> None:
    module = _decode(vm, vm._readline(), off)
    name = _decode(vm, vm._readline(), off)
    args = tuple(vm._pop_mark())
    cls = vm._global(module, name, "INST", off)
    vm._push(vm._call(cls, args, off, "INST"))


def _op_obj(vm: PickleVM, off: int) -> None:
    items = vm._pop_mark()
    if not items:
        raise vm._fail("OBJ without a class", off)
    vm._push(vm._call(items[0], tuple(items[1:]), off, "OBJ"))


def _op_reduce(vm: PickleVM, off: int) -> None:
    args = vm._pop()
    func = vm._pop()
    vm._push(vm._call(func, args, off, "REDUCE"))


def _op_newobj(vm: PickleVM, off: int) -> None:
    args = vm._pop()
    cls = vm._pop()
    vm._push(vm._call(cls, args, off, "NEWOBJ"))


def _op_newobj_ex(vm: PickleVM, off: int) -> None:
    kwargs = vm._pop()
    args = vm._pop()
    cls = vm._pop()
    if kwargs and not isinstance(cls, Opaque):
        raise vm._fail("NEWOBJ_EX with keyword arguments", off)
    vm._push(vm._call(cls, args, off, "NEWOBJ_EX"))


def _op_build(vm: PickleVM, off: int) -> None:
    state = vm._pop()
    inst = vm._top()
    vm._build(inst, state, off)


def _op_ext(size: int) -> Callable[[PickleVM, int], None]:
    fmt = {1: "<B", 2: "<H", 4: "<i"}[size]

    def handler(vm: PickleVM, off: int) -> None:
        (code,) = struct.unpack(fmt, vm._read(size))
        # The copyreg extension registry maps codes to arbitrary globals at load time.
        vm._issue("extension-code", off, f"EXT{size} code {code} names a global through copyreg")
        vm._push(Opaque(f"copyreg extension {code}", off - vm.start))

    return handler


def _op_persid(vm: PickleVM, off: int) -> None:
    pid = _decode(vm, vm._readline(), off, "ascii")
    vm._push(_persistent(vm, pid, off))


def _op_binpersid(vm: PickleVM, off: int) -> None:
    vm._push(_persistent(vm, vm._pop(), off))


def _persistent(vm: PickleVM, pid: Any, off: int) -> Any:
    if vm.persistent_load is None:
        vm._issue("persistent-id", off, f"persistent id {describe(pid)} outside a torch container")
        return Opaque("persistent id", off - vm.start)
    return vm.persistent_load(pid, off - vm.start)


_DISPATCH: dict[int, Callable[[PickleVM, int], None]] = {
    0x80: _op_proto,
    0x95: _op_frame,
    ord("("): _op_mark,
    ord("0"): _op_pop,
    ord("1"): _op_pop_mark,
    ord("2"): _op_dup,
    ord("I"): _op_int,
    ord("J"): _int_arg("<i"),
    ord("K"): _int_arg("<B"),
    ord("M"): _int_arg("<H"),
    ord("L"): _op_long,
    0x8A: _op_long1,
    0x8B: _op_long4,
    ord("F"): _op_float,
    ord("G"): _op_binfloat,
    ord("N"): _op_none,
    0x88: _op_true,
    0x89: _op_false,
    ord("S"): _op_string,
    ord("T"): _op_binstring,
    ord("U"): _op_short_binstring,
    ord("V"): _op_unicode,
    ord("X"): _op_binunicode,
    0x8C: _op_short_binunicode,
    0x8D: _op_binunicode8,
    ord("B"): _op_binbytes,
    ord("C"): _op_short_binbytes,
    0x8E: _op_binbytes8,
    0x96: _op_bytearray8,
    0x97: _op_out_of_band,
    0x98: _op_out_of_band,
    ord(")"): _op_empty_tuple,
    ord("t"): _op_tuple,
    0x85: _tuple_n(1),
    0x86: _tuple_n(2),
    0x87: _tuple_n(3),
    ord("]"): _op_empty_list,
    ord("l"): _op_list,
    ord("a"): _op_append,
    ord("e"): _op_appends,
    ord("}"): _op_empty_dict,
    ord("d"): _op_dict,
    ord("s"): _op_setitem,
    ord("u"): _op_setitems,
    0x8F: _op_empty_set,
    0x90: _op_additems,
    0x91: _op_frozenset,
    ord("g"): _op_get,
    ord("h"): _op_binget,
    ord("j"): _op_long_binget,
    ord("p"): _op_put,
    ord("q"): _op_binput,
    ord("r"): _op_long_binput,
    0x94: _op_memoize,
    ord("c"): _op_global,
    0x93: _op_stack_global,
    ord("i"): _op_inst,
    ord("o"): _op_obj,
    ord("R"): _op_reduce,
    0x81: _op_newobj,
    0x92: _op_newobj_ex,
    ord("b"): _op_build,
    0x82: _op_ext(1),
    0x83: _op_ext(2),
    0x84: _op_ext(4),
    ord("P"): _op_persid,
    ord("Q"): _op_binpersid,
}

OPCODE_BYTES = frozenset(_DISPATCH) | {0x2E}


# -- safe implementations of the allowlisted callables -----------------------------------


def _ints(vm: PickleVM, value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > vm.limits.max_dims:
        raise ValueError(f"{what} is not a tuple of at most {vm.limits.max_dims} integers")
    out = tuple(value)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in out):
        raise ValueError(f"{what} {describe(out)} has a negative or non-integer entry")
    return out


def _tensor(
    vm: PickleVM,
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    dtype: str | None = None,
) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise ValueError(f"storage is a {type(storage).__name__}, not a persistent storage")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"storage offset {describe(offset)} is not a non-negative integer")
    shape = _ints(vm, size, "size")
    strides = _ints(vm, stride, "stride")
    if len(shape) != len(strides):
        raise ValueError(f"size has {len(shape)} dims but stride has {len(strides)}")
    if dtype is None:
        dtype = storage.dtype
        itemsize = storage.itemsize
    else:
        itemsize = ITEMSIZE[dtype]
    numel = 1
    last = offset
    for d, s in zip(shape, strides, strict=True):
        numel *= d
        last += (d - 1) * s
    if numel and (last + 1) * itemsize > storage.nbytes:
        raise ValueError(
            f"tensor of size {shape} stride {strides} at offset {offset} reaches element "
            f"{last} but its storage {storage.key!r} holds {storage.nbytes // itemsize}"
        )
    return TensorRef(storage, offset, shape, strides, dtype, itemsize, bool(requires_grad))


def _hooks_ok(hooks: Any) -> None:
    if hooks is None or isinstance(hooks, Opaque):
        return  # the hook's global is already recorded as a finding
    if not isinstance(hooks, dict) or hooks:
        raise ValueError("backward hooks must be empty")


def _impl_ordered_dict(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    d = PickleDict()
    if args:
        if len(args) != 1 or not isinstance(args[0], (list, tuple)):
            raise ValueError("OrderedDict takes one list of pairs")
        for pair in args[0]:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError("OrderedDict items must be pairs")
            d[vm._key(pair[0])] = pair[1]
    return d


def _impl_rebuild_tensor(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    if len(args) != 4:
        raise ValueError(f"_rebuild_tensor takes 4 arguments, got {len(args)}")
    return _tensor(vm, *args, requires_grad=False)


def _impl_rebuild_tensor_v2(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    if len(args) not in (6, 7):
        raise ValueError(f"_rebuild_tensor_v2 takes 6 or 7 arguments, got {len(args)}")
    _hooks_ok(args[5])
    return _tensor(vm, *args[:5])


def _impl_rebuild_tensor_v3(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    if len(args) not in (7, 8):
        raise ValueError(f"_rebuild_tensor_v3 takes 7 or 8 arguments, got {len(args)}")
    _hooks_ok(args[5])
    dt = args[6]
    if not isinstance(dt, TorchDtype) or dt.name is None:
        raise ValueError(f"dtype {describe(dt)} is not a supported torch dtype")
    if not isinstance(args[0], StorageRef) or args[0].dtype != "U8":
        raise ValueError("_rebuild_tensor_v3 needs an untyped storage")
    return _tensor(vm, *args[:5], dtype=dt.name)


def _impl_rebuild_parameter(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    if len(args) not in (3, 4):
        raise ValueError(f"_rebuild_parameter takes 3 or 4 arguments, got {len(args)}")
    data = args[0]
    if not isinstance(data, TensorRef):
        raise ValueError("parameter data is not a tensor")
    _hooks_ok(args[2])
    return replace(data, requires_grad=bool(args[1]), parameter=True)


def _impl_rebuild_from_type_v2(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    if len(args) != 4:
        raise ValueError("_rebuild_from_type_v2 takes 4 arguments")
    func, new_type, inner, state = args
    if not isinstance(new_type, Global) or (new_type.module, new_type.name) not in _TYPE_TOKENS:
        raise ValueError(f"tensor subclass {describe(new_type)} is not supported")
    if state not in (None, {}) and not (isinstance(state, dict) and not state):
        raise ValueError("tensor python state is not supported")
    if not isinstance(func, Global) or func.module != _REBUILD or not isinstance(inner, tuple):
        raise ValueError(f"rebuild function {describe(func)} is not a tensor rebuild function")
    result = vm._call(func, inner, vm.pos, "REDUCE")
    if isinstance(result, TensorRef) and new_type.name == "Parameter":
        result = replace(result, parameter=True)
    return result


def _impl_size(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    if len(args) != 1:
        raise ValueError("torch.Size takes one sequence")
    return _ints(vm, args[0], "torch.Size")


def _impl_device(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    if not args or not isinstance(args[0], str) or len(args) > 2:
        raise ValueError("torch.device takes a string and an optional index")
    return f"device:{args[0]}" + (f":{args[1]}" if len(args) == 2 else "")


def _impl_encode(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0].encode("utf-8")
    if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], str):
        raise ValueError("_codecs.encode takes a string and an encoding")
    if args[1].lower().replace("_", "-") not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise ValueError(f"encoding {args[1][:20]!r} is not supported")
    return args[0].encode(args[1])


def _impl_set(kind: type) -> Callable[[PickleVM, tuple[Any, ...]], Any]:
    def impl(vm: PickleVM, args: tuple[Any, ...]) -> Any:
        if not args:
            return kind()
        if len(args) != 1 or not isinstance(args[0], (list, tuple, set, frozenset)):
            raise ValueError(f"{kind.__name__} takes one sequence")
        return kind(vm._key(v) for v in args[0])

    return impl


def _impl_bytearray(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    if not args:
        return bytearray()
    if len(args) != 1 or not isinstance(args[0], (bytes, bytearray)):
        raise ValueError("bytearray takes bytes")
    return bytearray(args[0])


def _impl_bytes(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    # Protocols 0-2 pickle b"" as bytes(); never bytes(n), which allocates n bytes.
    if not args:
        return b""
    if len(args) != 1 or not isinstance(args[0], (bytes, bytearray)):
        raise ValueError("bytes takes no arguments or bytes")
    return bytes(args[0])


def _impl_complex(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args):
        raise ValueError("complex takes two numbers")
    return complex(args[0], args[1])


def _impl_jit_list(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    if len(args) != 1 or not isinstance(args[0], list):
        raise ValueError("TorchScript list builders take one list")
    return args[0]


def _impl_restore_type_tag(vm: PickleVM, args: tuple[Any, ...]) -> Any:
    if len(args) != 2 or not isinstance(args[1], str):
        raise ValueError("restore_type_tag takes a value and a type string")
    return args[0]


_IMPLS: dict[tuple[str, str], Callable[[PickleVM, tuple[Any, ...]], Any]] = {
    ("collections", "OrderedDict"): _impl_ordered_dict,
    (_REBUILD, "_rebuild_tensor"): _impl_rebuild_tensor,
    (_REBUILD, "_rebuild_tensor_v2"): _impl_rebuild_tensor_v2,
    (_REBUILD, "_rebuild_tensor_v3"): _impl_rebuild_tensor_v3,
    (_REBUILD, "_rebuild_parameter"): _impl_rebuild_parameter,
    (_REBUILD, "_rebuild_parameter_with_state"): _impl_rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _impl_rebuild_from_type_v2,
    ("torch", "Size"): _impl_size,
    ("torch", "device"): _impl_device,
    ("_codecs", "encode"): _impl_encode,
    ("builtins", "set"): _impl_set(set),
    ("builtins", "frozenset"): _impl_set(frozenset),
    ("builtins", "bytearray"): _impl_bytearray,
    ("builtins", "bytes"): _impl_bytes,
    ("builtins", "complex"): _impl_complex,
    (_JIT, "build_intlist"): _impl_jit_list,
    (_JIT, "build_floatlist"): _impl_jit_list,
    (_JIT, "build_doublelist"): _impl_jit_list,
    (_JIT, "build_boollist"): _impl_jit_list,
    (_JIT, "build_tensorlist"): _impl_jit_list,
    (_JIT, "build_genericlist"): _impl_jit_list,
    (_JIT, "restore_type_tag"): _impl_restore_type_tag,
}
assert set(_IMPLS) == ALLOWED_CALLABLES


# -- collecting tensors ------------------------------------------------------------------


def collect_tensors(
    root: Any, *, path: Any, limits: PickleLimits, deadline: Deadline | None = None
) -> list[tuple[str, TensorRef]]:
    """Every tensor reachable from ``root`` with its dotted path (``layer.0.weight``).

    Walks dicts, lists, tuples and TorchScript objects iteratively, in order. A container
    already on the current path is a cycle and is skipped; a container reached through
    several paths is visited once per path (so aliases keep every name torch would give
    them), bounded by ``max_walk`` visits and ``max_depth`` levels.
    """
    found: list[tuple[str, TensorRef]] = []
    on_path: set[int] = set()
    # Entries are (object, path, depth) to enter, or (None, id, 0) to leave a container.
    # A path is a linked (key, parent) pair, so deep chains cost O(1) per level.
    stack: list[tuple[Any, Any, int]] = [(root, None, 0)]
    visits = 0
    while stack:
        obj, parts, depth = stack.pop()
        if obj is None:
            on_path.discard(parts)
            continue
        if isinstance(obj, TensorRef):
            found.append((_join(parts), obj))
            if len(found) > limits.max_tensors:
                raise ResourceLimitError(path, f"more than {limits.max_tensors} tensors")
            continue
        if isinstance(obj, ScriptObject):
            items: list[tuple[str, Any]] = list(obj.attrs.items())
        elif isinstance(obj, dict):
            items = [(_part(k), v) for k, v in obj.items()]
        elif isinstance(obj, (list, tuple)):
            items = [(str(i), v) for i, v in enumerate(obj)]
        else:
            continue
        if id(obj) in on_path:
            continue  # a cycle: torch would build it, but it holds nothing new
        visits += 1
        if visits > limits.max_walk:
            raise ResourceLimitError(
                path,
                f"object graph has more than {limits.max_walk} container visits "
                "(shared sub-objects multiplying)",
            )
        if visits & 0xFFF == 0 and deadline is not None:
            deadline.check(path, "collecting tensors")
        if depth >= limits.max_depth:
            raise ResourceLimitError(
                path, f"pickled objects nest more than {limits.max_depth} levels deep"
            )
        on_path.add(id(obj))
        stack.append((None, id(obj), 0))
        for key, value in reversed(items):
            if isinstance(value, (dict, list, tuple, ScriptObject, TensorRef)):
                stack.append((value, (key, parts), depth + 1))
    return found


def _join(parts: Any) -> str:
    keys: list[str] = []
    while parts is not None:
        keys.append(parts[0])
        parts = parts[1]
    return ".".join(reversed(keys))


def _part(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (int, float, bool)) or key is None:
        return str(key)
    return describe(key)


_TEXT_GLOBAL = re.compile(rb"(?:^|[\n(])[ci][A-Za-z_][\w.]{0,60}\n[A-Za-z_][\w.]{0,60}\n")


def looks_like_pickle(head: bytes) -> bool:
    """Whether bytes start like a pickle stream: a protocol 2+ header, or a protocol 0/1
    stream that names a global (``cos\nsystem\n``) within its first bytes."""
    if len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2] in OPCODE_BYTES:
        return True
    return head[:1] in (b"(", b"c", b"i", b"]", b"}") and _TEXT_GLOBAL.search(head) is not None
