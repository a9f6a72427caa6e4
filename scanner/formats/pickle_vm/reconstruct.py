"""Safe stand-ins for the allowlisted callables (torch tensor rebuilds, containers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from scanner.formats.pickle_vm.values import (
    Global,
    Opaque,
    PickleDict,
    StorageRef,
    TensorRef,
    TorchDtype,
    describe,
)
from scanner.formats.pickle_vm.vocabulary import (
    ALLOWED_CALLABLES,
    ITEMSIZE,
    TORCH_JIT_PICKLE,
    TORCH_REBUILD,
    TYPE_TOKENS,
)

if TYPE_CHECKING:
    from scanner.formats.pickle_vm.vm import PickleVM


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
    if not isinstance(new_type, Global) or (new_type.module, new_type.name) not in TYPE_TOKENS:
        raise ValueError(f"tensor subclass {describe(new_type)} is not supported")
    if state not in (None, {}) and not (isinstance(state, dict) and not state):
        raise ValueError("tensor python state is not supported")
    if not isinstance(func, Global) or func.module != TORCH_REBUILD or not isinstance(inner, tuple):
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


RECONSTRUCTORS: dict[tuple[str, str], Callable[[PickleVM, tuple[Any, ...]], Any]] = {
    ("collections", "OrderedDict"): _impl_ordered_dict,
    (TORCH_REBUILD, "_rebuild_tensor"): _impl_rebuild_tensor,
    (TORCH_REBUILD, "_rebuild_tensor_v2"): _impl_rebuild_tensor_v2,
    (TORCH_REBUILD, "_rebuild_tensor_v3"): _impl_rebuild_tensor_v3,
    (TORCH_REBUILD, "_rebuild_parameter"): _impl_rebuild_parameter,
    (TORCH_REBUILD, "_rebuild_parameter_with_state"): _impl_rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _impl_rebuild_from_type_v2,
    ("torch", "Size"): _impl_size,
    ("torch", "device"): _impl_device,
    ("_codecs", "encode"): _impl_encode,
    ("builtins", "set"): _impl_set(set),
    ("builtins", "frozenset"): _impl_set(frozenset),
    ("builtins", "bytearray"): _impl_bytearray,
    ("builtins", "bytes"): _impl_bytes,
    ("builtins", "complex"): _impl_complex,
    (TORCH_JIT_PICKLE, "build_intlist"): _impl_jit_list,
    (TORCH_JIT_PICKLE, "build_floatlist"): _impl_jit_list,
    (TORCH_JIT_PICKLE, "build_doublelist"): _impl_jit_list,
    (TORCH_JIT_PICKLE, "build_boollist"): _impl_jit_list,
    (TORCH_JIT_PICKLE, "build_tensorlist"): _impl_jit_list,
    (TORCH_JIT_PICKLE, "build_genericlist"): _impl_jit_list,
    (TORCH_JIT_PICKLE, "restore_type_tag"): _impl_restore_type_tag,
}
assert set(RECONSTRUCTORS) == ALLOWED_CALLABLES
