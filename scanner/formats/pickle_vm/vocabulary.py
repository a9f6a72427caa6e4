"""The vocabulary: which globals the interpreter reconstructs, and which name code execution."""

from __future__ import annotations

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

TORCH_REBUILD = "torch._utils"
TORCH_JIT_PICKLE = "torch.jit._pickle"
ALLOWED_CALLABLES = {
    ("collections", "OrderedDict"),
    (TORCH_REBUILD, "_rebuild_tensor"),
    (TORCH_REBUILD, "_rebuild_tensor_v2"),
    (TORCH_REBUILD, "_rebuild_tensor_v3"),
    (TORCH_REBUILD, "_rebuild_parameter"),
    (TORCH_REBUILD, "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Size"),
    ("torch", "device"),
    ("_codecs", "encode"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "bytes"),
    ("builtins", "complex"),
    (TORCH_JIT_PICKLE, "build_intlist"),
    (TORCH_JIT_PICKLE, "build_floatlist"),
    (TORCH_JIT_PICKLE, "build_doublelist"),
    (TORCH_JIT_PICKLE, "build_boollist"),
    (TORCH_JIT_PICKLE, "build_tensorlist"),
    (TORCH_JIT_PICKLE, "build_genericlist"),
    (TORCH_JIT_PICKLE, "restore_type_tag"),
}
TYPE_TOKENS = {("torch", "Tensor"), ("torch.nn.parameter", "Parameter")}

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
    if (module, name) in ALLOWED_CALLABLES or (module, name) in TYPE_TOKENS:
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
