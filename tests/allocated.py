"""What this process has allocated, as glibc counts it (``mallinfo2``: in use in its heaps and in its own mappings),
which memory freed and kept resident does not hide as the resident set size does: for tests that a native library
keeps nothing behind per call."""

from __future__ import annotations

import ctypes

_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def allocated() -> int:
    """Bytes allocated now (small blocks in use, and blocks mapped on their own)."""
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)
