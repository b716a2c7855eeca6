"""Input shapes and shape ranges, in the syntax the vendor tools use.

ATC writes a range as ``name:1,3,640~4096,640~4096`` (``-1`` for "anything"); TensorRT wants
min/opt/max triples. One ``ShapeRange`` per input holds all three, so every target and the
verifier read the same numbers. ``set_shape_range`` stores ranges in the model's metadata
under ``segc.shape_range`` (ATC syntax, ``;``-separated) and ``segc.opt_shape``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from segc.errors import SegcError

SHAPE_RANGE_KEY = "segc.shape_range"
OPT_SHAPE_KEY = "segc.opt_shape"

_DIM = re.compile(r"^\s*(-?\d+)\s*(?:~\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class ShapeRange:
    """One input's shape: per dimension a (min, max) pair, plus the optimisation shape."""

    name: str
    min: tuple[int, ...]
    max: tuple[int, ...]
    opt: tuple[int, ...]

    @property
    def is_static(self) -> bool:
        return self.min == self.max

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        return tuple(i for i, (a, b) in enumerate(zip(self.min, self.max)) if a != b)

    def atc(self) -> str:
        """``name:1,3,640~4096,640~4096`` (the newer ATC --input_shape spelling)."""
        dims = [str(a) if a == b else f"{a}~{b}" for a, b in zip(self.min, self.max)]
        return f"{self.name}:{','.join(dims)}"

    def with_opt(self, opt: tuple[int, ...]) -> "ShapeRange":
        if len(opt) != len(self.min):
            raise SegcError(f"--opt-shape for {self.name!r} has {len(opt)} dims, the range has {len(self.min)}")
        for i, (lo, v, hi) in enumerate(zip(self.min, opt, self.max)):
            if not lo <= v <= hi:
                raise SegcError(f"--opt-shape for {self.name!r}: dim {i} is {v}, outside the range {lo}~{hi}")
        return ShapeRange(self.name, self.min, self.max, tuple(opt))


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
    for part in dims_text.split(","):
        m = _DIM.match(part)
        if not m:
            raise SegcError(f"malformed --input-shape {text!r}: {part!r} is not a size or a range like 640~4096")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if a < 1 or b < a:
            raise SegcError(f"malformed --input-shape {text!r}: {part!r} must be positive with min <= max")
        lo.append(a)
        hi.append(b)
    # the default optimisation shape is the minimum: cheap to verify, and what ATC would pick
    return ShapeRange(name, tuple(lo), tuple(hi), tuple(lo))


def parse_static_shape(text: str, what: str = "--opt-shape") -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME:1,3,1280,1280`` (no ranges)."""
    name, dims_text = _split_name(text, what)
    try:
        dims = tuple(int(d) for d in dims_text.replace("x", ",").split(","))
    except ValueError:
        raise SegcError(f"malformed {what} {text!r}: dimensions must be whole numbers") from None
    if any(d < 1 for d in dims):
        raise SegcError(f"malformed {what} {text!r}: dimensions must be positive")
    return name, dims


def parse_dims(text: str, what: str = "--shape") -> tuple[int, ...]:
    """Parse ``1,3,512,1024`` (or ``1x3x512x1024``)."""
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise SegcError(f"malformed {what} {text!r}: expected N,C,H,W e.g. 1,3,512,1024") from None
    if any(d < 1 for d in dims):
        raise SegcError(f"malformed {what} {text!r}: dimensions must be positive")
    return dims


def format_ranges(ranges: list[ShapeRange]) -> str:
    return ";".join(r.atc() for r in ranges)


def ranges_from_metadata(meta: dict[str, str]) -> list[ShapeRange]:
    """The ranges ``set_shape_range`` stored in the model, with their optimisation shapes."""
    text = meta.get(SHAPE_RANGE_KEY, "")
    ranges = [parse_shape_range(t) for t in text.split(";") if t.strip()]
    opts = dict(parse_static_shape(t) for t in meta.get(OPT_SHAPE_KEY, "").split(";") if t.strip())
    return [r.with_opt(opts[r.name]) if r.name in opts else r for r in ranges]
