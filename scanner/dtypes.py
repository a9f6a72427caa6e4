"""Canonical element types shared by every reader.

Names follow safetensors (``F32``, ``BF16``, ``I8`` ...) for plain element types and
ggml (``Q4_0``, ``Q6_K`` ...) for block-quantized types, so a tensor's dtype means the
same thing whatever container it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class DType:
    """An element type: either plain (``itemsize`` bytes per element) or block-quantized."""

    name: str
    itemsize: int = 0
    numpy_name: str | None = None
    is_float: bool = False
    block_elements: int = 0
    block_bytes: int = 0
    bits_per_element: int = 0

    @property
    def is_block_quantized(self) -> bool:
        return self.block_elements > 0

    def nbytes(self, n_elements: int) -> int:
        """Bytes needed to store ``n_elements`` of this type, or -1 if they cannot be."""
        if self.block_elements:
            if n_elements % self.block_elements:
                return -1
            return n_elements // self.block_elements * self.block_bytes
        if self.bits_per_element:
            return (n_elements * self.bits_per_element + 7) // 8
        return n_elements * self.itemsize

    @property
    def numpy(self) -> np.dtype | None:
        """The little-endian numpy dtype storing one element, where numpy has one."""
        import numpy as np

        return np.dtype(self.numpy_name) if self.numpy_name else None


def _plain(name: str, itemsize: int, numpy_name: str | None, is_float: bool = False) -> DType:
    return DType(name, itemsize=itemsize, numpy_name=numpy_name, is_float=is_float)


def _block(name: str, elements: int, nbytes: int) -> DType:
    return DType(name, block_elements=elements, block_bytes=nbytes, is_float=True)


_ALL = [
    _plain("BOOL", 1, "|b1"),
    _plain("U8", 1, "|u1"),
    _plain("I8", 1, "|i1"),
    _plain("U16", 2, "<u2"),
    _plain("I16", 2, "<i2"),
    _plain("U32", 4, "<u4"),
    _plain("I32", 4, "<i4"),
    _plain("U64", 8, "<u8"),
    _plain("I64", 8, "<i8"),
    _plain("F16", 2, "<f2", True),
    _plain("BF16", 2, None, True),
    _plain("F32", 4, "<f4", True),
    _plain("F64", 8, "<f8", True),
    _plain("F8_E4M3", 1, None, True),
    _plain("F8_E5M2", 1, None, True),
    _plain("F8_E4M3FNUZ", 1, None, True),
    _plain("F8_E5M2FNUZ", 1, None, True),
    _plain("F8_E8M0", 1, None, True),
    _plain("C64", 8, "<c8"),
    _plain("C128", 16, "<c16"),
    DType("I4", bits_per_element=4),
    DType("U4", bits_per_element=4),
    # ggml block formats: (elements per block, bytes per block)
    _block("Q4_0", 32, 18),
    _block("Q4_1", 32, 20),
    _block("Q5_0", 32, 22),
    _block("Q5_1", 32, 24),
    _block("Q8_0", 32, 34),
    _block("Q8_1", 32, 36),
    _block("Q2_K", 256, 84),
    _block("Q3_K", 256, 110),
    _block("Q4_K", 256, 144),
    _block("Q5_K", 256, 176),
    _block("Q6_K", 256, 210),
    _block("Q8_K", 256, 292),
    _block("IQ2_XXS", 256, 66),
    _block("IQ2_XS", 256, 74),
    _block("IQ2_S", 256, 82),
    _block("IQ3_XXS", 256, 98),
    _block("IQ3_S", 256, 110),
    _block("IQ1_S", 256, 50),
    _block("IQ1_M", 256, 56),
    _block("IQ4_NL", 32, 18),
    _block("IQ4_XS", 256, 136),
    _block("TQ1_0", 256, 54),
    _block("TQ2_0", 256, 66),
    _block("MXFP4", 32, 17),
]

DTYPES: dict[str, DType] = {d.name: d for d in _ALL}


def dtype(name: str) -> DType:
    """Look up a canonical dtype by name; raises ``KeyError`` for unknown names."""
    return DTYPES[name]


FLOAT_STORAGE = ("F16", "BF16", "F32", "F64")
