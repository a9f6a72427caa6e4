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

Modules: ``limits`` (caps and deadline), ``values`` (what the interpreter builds),
``vocabulary`` (what it reconstructs and what names code execution), ``vm`` (the opcode
loop), ``reconstruct`` (safe stand-ins for the allowlisted callables), ``collect`` (tensors
reachable from the result, and sniffing a stream).
"""

from scanner.formats.pickle_vm.collect import collect_tensors, looks_like_pickle
from scanner.formats.pickle_vm.limits import Deadline, PickleLimits
from scanner.formats.pickle_vm.values import (
    Global,
    Opaque,
    PickleDict,
    ScriptObject,
    StorageRef,
    StorageType,
    TensorRef,
    TorchDtype,
    describe,
)
from scanner.formats.pickle_vm.vm import Audit, GlobalRef, PickleError, PickleVM
from scanner.formats.pickle_vm.vocabulary import (
    ALLOWED_CALLABLES,
    CODE_EXECUTION_MODULES,
    CODE_EXECUTION_NAMES,
    ITEMSIZE,
    classify_global,
)

__all__ = [
    "ALLOWED_CALLABLES",
    "CODE_EXECUTION_MODULES",
    "CODE_EXECUTION_NAMES",
    "ITEMSIZE",
    "Audit",
    "Deadline",
    "Global",
    "GlobalRef",
    "Opaque",
    "PickleDict",
    "PickleError",
    "PickleLimits",
    "PickleVM",
    "ScriptObject",
    "StorageRef",
    "StorageType",
    "TensorRef",
    "TorchDtype",
    "classify_global",
    "collect_tensors",
    "describe",
    "looks_like_pickle",
]
