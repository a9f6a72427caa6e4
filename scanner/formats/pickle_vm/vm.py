"""The interpreter: a loop over opcodes with an explicit stack, and one handler per opcode."""

from __future__ import annotations

import _compat_pickle
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scanner.errors import MalformedArtifactError, ResourceLimitError
from scanner.formats.pickle_vm.limits import Deadline, PickleLimits
from scanner.formats.pickle_vm.opcodes import DISPATCH
from scanner.formats.pickle_vm.reconstruct import RECONSTRUCTORS
from scanner.formats.pickle_vm.values import (
    Global,
    Opaque,
    PickleDict,
    ScriptObject,
    StorageType,
    TensorRef,
    TorchDtype,
    describe,
)
from scanner.formats.pickle_vm.vocabulary import STORAGE_TYPES, TORCH_DTYPES, classify_global


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


_MAX_KEY_ITEMS = 64


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
        impl = RECONSTRUCTORS.get((func.module, func.name))
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
        dispatch = DISPATCH
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
