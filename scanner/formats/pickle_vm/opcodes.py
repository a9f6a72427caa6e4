"""One handler per pickle opcode, and the dispatch table the interpreter loops over."""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scanner.errors import ResourceLimitError
from scanner.formats.pickle_vm.values import (
    Opaque,
    PickleDict,
    describe,
)

if TYPE_CHECKING:
    from scanner.formats.pickle_vm.vm import PickleVM


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


DISPATCH: dict[int, Callable[[PickleVM, int], None]] = {
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

OPCODE_BYTES = frozenset(DISPATCH) | {0x2E}
