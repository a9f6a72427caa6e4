"""What the code of a TorchScript archive calls, read as text and never compiled or run.

``torch.jit.save`` writes each scripted module's code as Python-syntax source under
``code/`` (``torch.relu(x)`` is the operator ``aten::relu``, ``ops.prim.NumToTensor``
is ``prim::NumToTensor``, ``ops.myns.op`` a custom operator from a loaded library,
``__torch__.torch.classes.ns.C`` a custom C++ class). ``torch.jit.load`` compiles that
code and runs it. This module parses each file with :mod:`ast` (parsing executes
nothing) and records every operator, free name, method and class the code refers to,
with where; :mod:`scanner.checks.serialization` judges them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_CODE_FILE_BYTES = 16 << 20
"""A larger code file is refused (real ones are kilobytes; the largest seen, a few MB)."""
MAX_CODE_TOTAL_BYTES = 64 << 20
MAX_WHERE = 5
"""Locations kept per reference."""

# Names the TorchScript serializer itself prints: builtins, type names, the roots of
# operator and class paths. Anything else that is called must be defined in the archive.
SERIALIZER_NAMES = frozenset(
    {
        "torch",
        "ops",
        "CONSTANTS",
        "__torch__",
        "math",
        "self",
        "annotate",
        "uninitialized",
        "unchecked_cast",
        "isinstance",
        "getattr",  # getattr(self, "0"): Sequential children, a constant name
        "hasattr",
        "fork",
        "wait",
        "awaitable",
        "awaitable_wait",
        "awaitable_nowait",
        "int",
        "float",
        "bool",
        "str",
        "complex",
        "len",
        "range",
        "print",
        "list",
        "tuple",
        "dict",
        "min",
        "max",
        "abs",
        "round",
        "divmod",
        "enumerate",
        "zip",
        "sorted",
        "hash",
        "chr",
        "ord",
        "hex",
        "oct",
        "bin",
        "all",
        "any",
        "sum",
        "iter",
        "next",
        "reversed",
        "inf",
        "nan",
        "infj",
        "nanj",
        "Tensor",
        "Optional",
        "List",
        "Tuple",
        "Dict",
        "Union",
        "Any",
        "NoneType",
        "Future",
        "Await",
        "RRef",
        "Final",
        "Module",
        "Enum",
        "NamedTuple",
        "Interface",
        "Device",
        "Generator",
        "Stream",
        "Storage",
        "ScalarType",
        "Layout",
        "MemoryFormat",
        "QScheme",
        "Number",
        "Scalar",
    }
)


@dataclass
class _Ref:
    kind: str
    count: int = 0
    where: list[str] = field(default_factory=list)


@dataclass
class CodeAudit:
    """The references of every code file of one archive."""

    files: int = 0
    lines: int = 0
    refs: dict[str, _Ref] = field(default_factory=dict)
    """Key: ``op aten::relu``, ``name os``, ``method tolist``, ``class ns::C``, ``import x``."""
    defined: set[str] = field(default_factory=set)
    """Functions, methods and classes the archive defines."""
    problems: list[dict[str, str]] = field(default_factory=list)
    """Files that could not be read as source (never silently skipped)."""

    def add(self, kind: str, name: str, where: str) -> None:
        ref = self.refs.setdefault(f"{kind} {name}", _Ref(kind))
        ref.count += 1
        if len(ref.where) < MAX_WHERE:
            ref.where.append(where)

    def to_dict(self) -> dict[str, Any]:
        # Method calls to something the archive defines are the archive's own code.
        refs = {
            key: {"kind": r.kind, "name": key.split(" ", 1)[1], "count": r.count, "where": r.where}
            for key, r in sorted(self.refs.items())
            if not (r.kind in ("method", "name") and key.split(" ", 1)[1] in self.defined)
        }
        return {
            "files": self.files,
            "lines": self.lines,
            "refs": refs,
            "problems": self.problems,
        }


def audit_code(files: Iterable[tuple[str, bytes]]) -> CodeAudit:
    """Parse each ``(name, source bytes)`` and record what it refers to."""
    audit = CodeAudit()
    for name, data in files:
        audit.files += 1
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            audit.problems.append({"file": name, "problem": "not UTF-8 text"})
            continue
        audit.lines += text.count("\n") + 1
        try:
            tree = ast.parse(text, filename=name)
        except SyntaxError as exc:
            audit.problems.append(
                {"file": name, "problem": f"not TorchScript source: {exc.msg} (line {exc.lineno})"}
            )
            continue
        except (RecursionError, MemoryError, ValueError):
            audit.problems.append({"file": name, "problem": "nests too deeply to audit"})
            continue
        _Visitor(audit, name).visit(tree)
    return audit


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None when the root is not a plain name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def qualify(chain: list[str]) -> tuple[str, str] | None:
    """The (kind, qualified name) an attribute path refers to, or None for values
    (``self.linear``, ``CONSTANTS.c0``, classes of the archive)."""
    root = chain[0]
    if root == "torch" and len(chain) >= 2:
        if chain[1] == "ops" and len(chain) >= 4:
            return "op", f"{chain[2]}::{chain[3]}"
        if chain[1] == "classes" and len(chain) >= 4:
            return "class", f"{chain[2]}::{chain[3]}"
        if len(chain) == 2:
            return "op", f"aten::{chain[1]}"
        return "name", ".".join(chain)  # torch.jit.load, torch._C ...: not operators
    if root == "ops" and len(chain) >= 3:
        return "op", f"{chain[1]}::{chain[2]}"
    if root == "__torch__" and chain[1:3] == ["torch", "classes"] and len(chain) >= 5:
        return "class", f"{chain[3]}::{chain[4]}"
    if root == "math" and len(chain) == 2:
        return "op", f"math::{chain[1]}"
    return None


class _Visitor(ast.NodeVisitor):
    def __init__(self, audit: CodeAudit, file: str) -> None:
        self.audit = audit
        self.file = file

    def _where(self, node: ast.AST) -> str:
        return f"{self.file}:{getattr(node, 'lineno', 0)}"

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.audit.defined.add(node.name)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.audit.defined.add(node.name)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.audit.add("import", alias.name, self._where(node))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self.audit.add("import", f"{node.module or ''}.{alias.name}", self._where(node))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = _chain(node)
        if chain is not None:
            resolved = qualify(chain)
            if resolved is not None:
                self.audit.add(*resolved, self._where(node))
                return  # the whole path is one reference
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        # Free names: loads of anything neither a TorchScript builtin nor bound here.
        if isinstance(node.ctx, ast.Load) and node.id not in SERIALIZER_NAMES:
            self.audit.add("name", node.id, self._where(node))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and _chain(func) is None:
            # A method of a computed value: `(x).tolist()`, `(lin).forward(x)`.
            self.audit.add("method", func.attr, self._where(node))
        elif (
            isinstance(func, ast.Attribute)
            and (chain := _chain(func)) is not None
            and qualify(chain) is None
            and chain[0] not in ("CONSTANTS", "__torch__")
        ):
            # A method of a named value: `self.helper(x)`, `y.append(v)`.
            self.audit.add("method", chain[-1], self._where(node))
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self.audit.defined.add(node.arg)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._bind(target)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._bind(node.target)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._bind(node.target)
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        self._bind(node.target)
        self.generic_visit(node)

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            if item.optional_vars is not None:
                self._bind(item.optional_vars)
        self.generic_visit(node)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        self._bind(node.target)
        self.generic_visit(node)

    def _bind(self, target: ast.AST) -> None:
        for sub in ast.walk(target):
            if isinstance(sub, ast.Name):
                self.audit.defined.add(sub.id)
