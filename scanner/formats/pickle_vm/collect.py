"""Walking an interpreted object graph for its tensors, and sniffing pickle streams."""

from __future__ import annotations

import re
from typing import Any

from scanner.errors import ResourceLimitError
from scanner.formats.pickle_vm.limits import Deadline, PickleLimits
from scanner.formats.pickle_vm.opcodes import OPCODE_BYTES
from scanner.formats.pickle_vm.values import ScriptObject, TensorRef, describe


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
