"""Give freed memory back to the operating system, so the next big allocation starts low.

Why: a compile frees whole copies of the model (the input once simplified, the proto a
graph was imported from once exported), but glibc's allocator keeps freed heap pages
mapped; on hrnet_w48_ocr 540 MiB of freed pages were still resident when the output was
serialised, and serialising added its own ~500 MiB on top (peak 1429 MiB; with the pages
returned first, 1146 MiB, against 850 for a bare onnx load + save). ``malloc_trim(0)``
(glibc, man 3 malloc_trim) returns every free page of every arena; elsewhere (musl, macOS)
this is a no-op.

The cyclic collector itself is start-up time as well (issue 11). Once onnx, numpy,
onnxruntime and the passes are imported, the process holds some 55,000 objects (modules,
classes, functions) that live until it exits, and every full collection walks them all:
each ``release_memory`` took 12 to 25 ms on a 4 MB model whose own objects take 1 ms, and
the collections triggered while importing about 30 ms. ``StartUp`` switches the collector off
while a command's modules import, then freezes what start-up made (``gc.freeze``: out of the
collector's sight, still freed by reference counting) and switches it back on; the compile
freezes again once its plan is made (``freeze_long_lived``). Everything is unfrozen when the
command returns, so a caller in the same process (the tests) gets its collector back whole;
except when the command is the process (``segc`` on the command line), which exits next:
unfrozen, the interpreter's exit walks every object once more (PP-OCRv4's compile: 0.16 s
from its last atexit handler to the process's end, against 0.06 s frozen, as long as a bare
onnx load + save takes to exit; medians of 5, 2 cores at load 4).
"""

from __future__ import annotations

import ctypes
import gc
from functools import lru_cache
from typing import Callable


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up in the symbols the process already has loaded
    (``dlopen(NULL)``: libc is one of them), not by ``ctypes.util.find_library("c")``, which
    runs ``ldconfig -p`` in a subprocess: 13 ms of every compile (issue 11)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # no such symbol (musl, macOS); no dlopen(NULL) (Windows)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class StartUp:
    """The collector around one command: off from here until ``done``, frozen and back on then,
    everything unfrozen and the collector as it was found at ``close``."""

    def __init__(self) -> None:
        self.was_enabled = gc.isenabled()
        gc.disable()  # imports only: what they allocate lives until the process exits

    def done(self) -> None:
        """The command's modules are imported: freeze what exists and collect as usual from here."""
        gc.freeze()
        if self.was_enabled:
            gc.enable()

    def close(self, *, process_exits: bool = False) -> None:
        """The command returned: unfreeze, unless ``process_exits`` (see the module docstring)."""
        if not process_exits:
            gc.unfreeze()
        if self.was_enabled:
            gc.enable()


def freeze_long_lived() -> None:
    """Collect once, then freeze what is alive: the modules a run imported late (the passes,
    the target) and its plan live until the end; the collections of the run (``release_memory``)
    then walk only the graphs the passes make. Collected first, so no garbage is frozen (a
    graph-surgeon graph an analysis made and dropped holds tensors of the model)."""
    gc.collect()
    gc.freeze()


# glibc's mallopt parameter M_MMAP_THRESHOLD (malloc.h), and the value segc sets
_M_MMAP_THRESHOLD = -3
MAP_BLOCKS_FROM = 1 << 20


@lru_cache(maxsize=1)  # once per process
def map_big_blocks() -> None:
    """From here on, every allocation of 1 MiB or more is its own mapping, unmapped when freed.

    Why: verification runs onnxruntime without its arena (segc.ortrun.SessionConfig.arena),
    so activations are plain mallocs. glibc raises its mmap threshold to the largest mapped
    block freed so far (up to 32 MiB), after which activations under that size come from the
    heap, are split and merged there, and stay resident after they are freed, until a trim.
    A fixed threshold keeps the peak at what is alive: hrnet_w48_ocr's --verify each peaked at
    1781 MiB with the sliding threshold and 1491 MiB with this one (a bare session's run at
    1x3x1024x2048: 1520 -> 1425 MiB, 16.6 against 17.5 s, one run each). Setting it also
    fixes the trim threshold, which is left at glibc's default. A no-op off glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (see _malloc_trim)
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, MAP_BLOCKS_FROM)


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
