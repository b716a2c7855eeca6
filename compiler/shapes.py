"""Input shapes and shape ranges, in the syntax the vendor tools use.

ATC writes a range as ``name:1,3,640~4096,640~4096`` (``-1`` for "anything"); TensorRT wants
min/opt/max triples. One ``ShapeRange`` per input holds all three, so every target and the
verifier read the same numbers. ``set_shape_range`` stores ranges in the model's metadata
under ``segc.shape_range`` (ATC syntax, ``;``-separated) and ``segc.opt_shape``.

segc adds one thing to ATC's syntax: a ranged dim may end in ``/M`` (``640~4096/32``): the
size is a multiple of M. No vendor tool has such a constraint, but a model's shape arithmetic
does: with H a multiple of the total stride, every ``floor(H / 2^k)`` down the backbone is
exact, so a Resize to another tensor's size becomes a provable constant ratio
(``fold_resize_scales``). ``atc()`` keeps the ``/M`` (segc's own round trip: options,
metadata, reports); ``vendor_atc()`` drops it for the ATC command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from segc.errors import SegcError

SHAPE_RANGE_KEY = "segc.shape_range"
OPT_SHAPE_KEY = "segc.opt_shape"

# The largest size one dimension may have. ONNX stores dims as int64, but TensorRT 8's Dims
# and the vendor parsers hold int32, and numpy refuses anything past int64 with an error that
# is no message for a user; a bigger dim is a typo, refused here as bad input.
MAX_DIM = 2**31 - 1

_DIM = re.compile(r"^\s*(-?\d+)\s*(?:~\s*(\d+)\s*)?(?:/\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class ShapeRange:
    """One input's shape: per dimension a (min, max) pair, plus the optimisation shape.

    ``multiple`` (per dim, empty = all 1) says every size the build accepts on that dim is a
    multiple of it; ``opt_given`` tells an optimum someone chose (``--opt-shape``, a recipe)
    from the default (the minimum), so a target can pick a better one for itself.
    """

    name: str
    min: tuple[int, ...]
    max: tuple[int, ...]
    opt: tuple[int, ...]
    multiple: tuple[int, ...] = ()
    opt_given: bool = False

    def step(self, axis: int) -> int:
        """The multiple sizes on ``axis`` must be (1 when unconstrained)."""
        return self.multiple[axis] if axis < len(self.multiple) else 1

    @property
    def has_multiples(self) -> bool:
        return any(m > 1 for m in self.multiple)

    @property
    def is_static(self) -> bool:
        return self.min == self.max

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        return tuple(i for i, (a, b) in enumerate(zip(self.min, self.max, strict=False)) if a != b)

    def atc(self) -> str:
        """``name:1,3,640~4096/32,640~4096/32``: ATC's spelling plus segc's ``/M`` multiples."""
        dims = []
        for i, (a, b) in enumerate(zip(self.min, self.max, strict=False)):
            text = str(a) if a == b else f"{a}~{b}"
            dims.append(f"{text}/{self.step(i)}" if self.step(i) > 1 and a != b else text)
        return f"{self.name}:{','.join(dims)}"

    def vendor_atc(self) -> str:
        """``name:1,3,640~4096,640~4096`` (the newer ATC --input_shape spelling, no ``/M``)."""
        dims = [str(a) if a == b else f"{a}~{b}" for a, b in zip(self.min, self.max, strict=False)]
        return f"{self.name}:{','.join(dims)}"

    def multiples_text(self) -> str:
        """``"dims 2, 3 of input must be multiples of 32"`` for build scripts; "" without multiples."""
        axes = [i for i in range(len(self.min)) if self.step(i) > 1 and self.min[i] != self.max[i]]
        if not axes:
            return ""
        steps = sorted({self.step(i) for i in axes})
        dims = ", ".join(str(i) for i in axes)
        return f"dims {dims} of {self.name} must be multiples of {'/'.join(str(m) for m in steps)}"

    def with_opt(self, opt: tuple[int, ...]) -> "ShapeRange":
        if len(opt) != len(self.min):
            raise SegcError(f"--opt-shape for {self.name!r} has {len(opt)} dims, the range has {len(self.min)}")
        for i, (lo, v, hi) in enumerate(zip(self.min, opt, self.max, strict=False)):
            if not lo <= v <= hi:
                raise SegcError(f"--opt-shape for {self.name!r}: dim {i} is {v}, outside the range {lo}~{hi}")
            if v % self.step(i):
                raise SegcError(
                    f"--opt-shape for {self.name!r}: dim {i} is {v}, not a multiple of {self.step(i)} as the range says"
                )
        return replace(self, opt=tuple(opt), opt_given=True)


def _split_name(text: str, what: str) -> tuple[str, str]:
    # rsplit: tensor names may contain ':' (ATC's "name:0" form is for nodes, not inputs,
    # but exporters do write names like "input:0")
    if ":" not in text:
        raise SegcError(f"malformed {what} {text!r}: expected NAME:D1,D2,... e.g. x:1,3,512,1024")
    name, dims = text.rsplit(":", 1)
    if not name.strip():
        raise SegcError(f"malformed {what} {text!r}: the input name is empty")
    return name.strip(), dims


def parse_shape_range(text: str) -> ShapeRange:
    """Parse one ``NAME:1,3,640~4096,640~4096`` (or a static ``NAME:1,3,512,1024``)."""
    name, dims_text = _split_name(text, "--input-shape")
    lo: list[int] = []
    hi: list[int] = []
    mult: list[int] = []
    for part in dims_text.split(","):
        m = _DIM.match(part)
        if not m:
            raise SegcError(
                f"malformed --input-shape {text!r}: {part!r} is not a size, a range like 640~4096 or 640~4096/32"
            )
        a = _size(m.group(1), text)
        b = _size(m.group(2), text) if m.group(2) is not None else a
        k = _size(m.group(3), text) if m.group(3) is not None else 1
        if a < 1 or b < a:
            raise SegcError(f"malformed --input-shape {text!r}: {part!r} must be positive with min <= max")
        _check_bound(b, text, "--input-shape")
        if k < 1 or a % k or b % k:
            raise SegcError(f"malformed --input-shape {text!r}: in {part!r} both bounds must be multiples of {k}")
        lo.append(a)
        hi.append(b)
        mult.append(k if a != b else 1)
    # the default optimisation shape is the minimum: cheap to verify, and what ATC would pick
    multiple = tuple(mult) if any(k > 1 for k in mult) else ()
    return ShapeRange(name, tuple(lo), tuple(hi), tuple(lo), multiple)


def parse_static_shape(text: str, what: str = "--opt-shape") -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME:1,3,1280,1280`` (no ranges)."""
    name, dims_text = _split_name(text, what)
    try:
        dims = tuple(_size(d.strip(), text, what) for d in dims_text.replace("x", ",").split(","))
    except ValueError:
        raise SegcError(f"malformed {what} {text[:80]!r}: dimensions must be whole numbers") from None
    if any(d < 1 for d in dims):
        raise SegcError(f"malformed {what} {text!r}: dimensions must be positive")
    for d in dims:
        _check_bound(d, text, what)
    return name, dims


def parse_dims(text: str, what: str = "--shape") -> tuple[int, ...]:
    """Parse ``1,3,512,1024`` (or ``1x3x512x1024``)."""
    try:
        dims = tuple(_size(d.strip(), text, what) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise SegcError(f"malformed {what} {text[:80]!r}: expected N,C,H,W e.g. 1,3,512,1024") from None
    if any(d < 1 for d in dims):
        raise SegcError(f"malformed {what} {text!r}: dimensions must be positive")
    for d in dims:
        _check_bound(d, text, what)
    return dims


def _size(digits: str, text: str, what: str = "--input-shape") -> int:
    """int() of a dim, refusing a digit string too long to be a size before Python's own
    4300-digit conversion limit turns it into an internal error."""
    if len(digits.lstrip("-")) > len(str(MAX_DIM)):
        _check_bound(MAX_DIM + 1, text, what, shown=digits)
    return int(digits)


def _check_bound(size: int, text: str, what: str, shown: str = "") -> None:
    if size > MAX_DIM:
        shown = shown or str(size)
        shown = shown if len(shown) <= 24 else shown[:20] + "..."
        raise SegcError(
            f"malformed {what} {text[:80]!r}: dim {shown} is larger than {MAX_DIM} (2^31-1), the most a vendor tool "
            "takes"
        )


def format_ranges(ranges: list[ShapeRange]) -> str:
    return ";".join(r.atc() for r in ranges)


def ranges_from_metadata(meta: dict[str, str]) -> list[ShapeRange]:
    """The ranges ``set_shape_range`` stored in the model, with their optimisation shapes."""
    text = meta.get(SHAPE_RANGE_KEY, "")
    ranges = [parse_shape_range(t) for t in text.split(";") if t.strip()]
    opts = dict(parse_static_shape(t) for t in meta.get(OPT_SHAPE_KEY, "").split(";") if t.strip())
    return [r.with_opt(opts[r.name]) if r.name in opts else r for r in ranges]
