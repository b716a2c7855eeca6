"""Give freed memory back to the operating system, so the next big allocation starts low.

Why: a compile frees whole copies of the model (the input once simplified, the proto a
graph was imported from once exported), but glibc's allocator keeps freed heap pages
mapped; on hrnet_w48_ocr 540 MiB of freed pages were still resident when the output was
serialised, and serialising added its own ~500 MiB on top (peak 1429 MiB; with the pages
returned first, 1146 MiB, against 850 for a bare onnx load + save). ``malloc_trim(0)``
(glibc, man 3 malloc_trim) returns every free page of every arena; elsewhere (musl, macOS)
this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache
from typing import Callable


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_memory(*, collect: bool = True) -> None:
    """Collect reference cycles (graph-surgeon graphs are made of them), then return free pages.

    ``collect=False``: only return free pages (after dropping something freed by reference
    counting, such as an onnxruntime session: its arena's chunks up to 32 MiB sit in glibc's
    heap after it dies, 1.5 GiB of them after a whole hrnet_w48_ocr run at 1024x2048, under
    the next session's)."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
