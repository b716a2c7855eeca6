"""Divisibility queries built on the shape analysis: input sizes that are multiples of M, and
the model's total stride (the smallest M for which every size computed from the input is exact).

``fold_resize_scales`` and ``set_shape_range`` use them to tell a user which shape grid makes a
shape-computed Resize a fixed ratio; ``segc inspect`` and the Ascend target print the stride.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_graphsurgeon as gs
from segc.passes._shape_expr import ShapeAnalysis
from segc.passes._sym_poly import Poly

STRIDE_LIMIT = 128
"""The largest total stride looked for (2^7: deeper than any segmentation backbone)."""


def _inexact_floors(p: Poly, symbols: set[str]) -> bool:
    """True when ``p`` still holds a ``floor`` of something that varies with ``symbols``."""
    return any(atom.arg is not None and atom.symbols() & symbols for m in p.terms for atom, _ in m)


def spatial_symbols(
    graph: gs.Graph, multiple: int, inputs: Sequence[str] | None = None
) -> tuple[dict[str, tuple[Poly, ...]], set[str]]:
    """Symbolic dims for the graph inputs with H, W (axes 2+) written ``multiple * q``.

    Returns the ``input_dims`` for ``ShapeAnalysis`` and the names of the quotient symbols.
    A static spatial size stays symbolic too: the answer must hold for every admissible size.
    """
    dims: dict[str, tuple[Poly, ...]] = {}
    quotients: set[str] = set()
    for t in graph.inputs:
        if t.shape is None or len(t.shape) < 3 or (inputs is not None and t.name not in inputs):
            continue
        out: list[Poly] = []
        for i, d in enumerate(t.shape):
            base = d if isinstance(d, str) and d else f"{t.name}.{i}"
            if i >= 2:
                q = f"{base}/{multiple}" if multiple > 1 else base
                quotients.add(q)
                out.append(Poly.symbol(q) * multiple)
            else:
                out.append(Poly.const(d) if isinstance(d, int) and d > 0 else Poly.symbol(base))
        dims[t.name] = tuple(out)
    return dims, quotients


def exact_under(graph: gs.Graph, multiple: int, inputs: Sequence[str] | None = None) -> bool:
    """Is every size (and every small size value) in the graph floor-free when H, W are
    multiples of ``multiple``? Then all the strided arithmetic is exact division."""
    dims, quotients = spatial_symbols(graph, multiple, inputs)
    if not quotients:
        return True
    analysis = ShapeAnalysis(graph, dims).run()
    for shape in analysis.shapes.values():
        if shape is not None and any(_inexact_floors(d, quotients) for d in shape):
            return False
    for value in analysis.values.values():
        if value is not None and any(e is not None and _inexact_floors(e, quotients) for e in value.elems):
            return False
    return True


def total_stride(graph: gs.Graph, inputs: Sequence[str] | None = None, limit: int = STRIDE_LIMIT) -> int | None:
    """The smallest power of two M such that, with every input H and W a multiple of M, no
    size in the graph needs a floor (every strided Conv/Pool divides exactly, so a later
    Resize to another tensor's size is a fixed ratio). 1 when the graph has no floors at all;
    None when no M up to ``limit`` removes them (e.g. a ``floor(H * 0.3)``)."""
    m = 1
    while m <= limit:
        if exact_under(graph, m, inputs):
            return m
        m *= 2
    return None
