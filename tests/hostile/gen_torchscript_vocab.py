"""Print scanner/checks/torchscript_vocab.py from the installed torch:

python tests/hostile/gen_torchscript_vocab.py > scanner/checks/torchscript_vocab.py
"""

import collections
import math
import sys
import textwrap

import torch

NAMESPACES = (
    "aten",
    "prim",
    "prims",
    "quantized",
    "_quantized",
    "quantization",
    "mkldnn",
    "mkldnn_prepacked",
    "onednn",
    "mkl",
    "sparse",
)
by = collections.defaultdict(set)
for x in torch._C._jit_get_all_schemas():
    ns, op = x.name.split("::", 1)
    by[ns].add(op)
VERSION = torch.__version__.split("+")[0]
lines = []
for ns in NAMESPACES:
    words = " ".join(sorted(by[ns]))
    body = textwrap.fill(words, 92, break_long_words=False, break_on_hyphens=False)
    lines.append(
        f'    "{ns}": _ops(\n        """\n'
        + textwrap.indent(body, "        ")
        + '\n        """\n    ),'
    )
math_ops = textwrap.fill(
    " ".join(sorted(n for n in dir(math) if not n.startswith("_"))), 92, break_long_words=False
)
out = f'''"""The operator vocabulary of TorchScript code: what torch's own namespaces register.

Generated from ``torch._C._jit_get_all_schemas()`` of torch {VERSION} (the version
the test extras pin) by ``tests/hostile/gen_torchscript_vocab.py``; a test compares it
with the installed torch. The ``math`` namespace is Python's math module, which
TorchScript maps to the same operators. These are computation: tensor math, shapes,
control flow, lists and strings. The operators that reach files, processes, the network
or Python are taken out again in :mod:`scanner.checks.serialization` (MS709), and an
operator of any other namespace is code from a library the loader must have loaded
(MS710).
"""

from __future__ import annotations


def _ops(words: str) -> frozenset[str]:
    return frozenset(words.split())


TORCH_VERSION = "{VERSION}"

NAMESPACE_OPS: dict[str, frozenset[str]] = {{
{chr(10).join(lines)}
    "math": _ops(
        """
{textwrap.indent(math_ops, "        ")}
        """
    ),
}}
"""Operator names by namespace (``aten`` is ``torch.NAME`` in the code, ``prim`` is
``ops.prim.NAME``)."""

'''
sys.stdout.write(out)
