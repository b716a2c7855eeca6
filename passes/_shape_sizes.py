"""Size arithmetic on symbolic shapes that needs no graph: Slice lengths and Reshape targets.

Kept apart from the analysis so the Slice/Reshape handlers and ``set_shape_range`` (which
rewrites traced Reshape targets) share one rule for each, with no import of the analysis.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

from segc.passes._sym_poly import Poly, SymValue, as_int

Shape = tuple[Poly, ...]

INT64_MAX = 2**63 - 1
_HUGE = 2**31  # Slice ends at or above this mean "to the end" in every exporter's output


def slice_length(
    d: Poly, start: Poly, end: Poly, step: int, fresh: Callable[[], Poly],
    fits: Callable[[Poly, int], bool] = lambda d, v: False,
) -> Poly:
    """Length of ``range(d)[start:end:step]`` with ONNX clamping, when it can be written.

    A constant end ``v`` on a varying size ``d`` gives ``min(d, v)``; that is ``v`` only where
    ``fits(d, v)`` confirms ``d >= v`` (over the sampled range), else the length is fresh.
    """
    dv, sv, ev = as_int(d), as_int(start), as_int(end)
    if dv is not None and sv is not None and ev is not None:
        return Poly.const(len(range(dv)[slice(sv, ev, step)]))
    if step != 1:
        if step > 1 and sv == 0 and ev is not None and ev >= _HUGE:
            return ((d + (step - 1)) * Fraction(1, step)).floor()
        return fresh()

    def norm(p: Poly, is_end: bool) -> Poly | None:
        v = as_int(p)
        if v is None:
            return p  # a computed bound, assumed within [0, d] (exporters compute them so)
        if v >= _HUGE:
            return d if is_end else None
        if v < -_HUGE:
            return Poly.const(0)
        if v < 0:
            return d + v
        if is_end and not fits(d, v):
            return None  # min(d, v): which one it is depends on the size
        return Poly.const(v)  # a start is assumed inside the tensor, as exporters write it

    s, e = norm(start, False), norm(end, True)
    if s is None or e is None:
        return fresh()
    return e - s


def reshape_dims(src: Shape | None, target: SymValue, *, allowzero: bool = False) -> Shape | None:
    """Output shape of Reshape(src, target) with ONNX's 0 (copy) and -1 (infer) rules."""
    out: list[Poly | None] = []
    infer = -1
    for i, e in enumerate(target.elems):
        v = as_int(e)
        if v == 0 and not allowzero:
            if src is None or i >= len(src):
                return None
            out.append(src[i])
        elif v == -1:
            infer = i
            out.append(None)
        else:
            out.append(e)
    if infer >= 0:
        if src is None or any(d is None for j, d in enumerate(out) if j != infer):
            return None
        total = Poly.const(1)
        for d in src:
            total = total * d
        known = Poly.const(1)
        for j, part in enumerate(out):
            if j != infer and part is not None:  # all there but the inferred one (checked above)
                known = known * part
        q = total.exact_div(known)
        if q is None or not q.is_integer_valued():
            return None
        out[infer] = q
    dims = tuple(d for d in out if d is not None)
    return dims if len(dims) == len(out) else None
