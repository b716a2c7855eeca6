"""segc.shapes: the ATC range syntax, with segc's /M multiples, parsed and written back."""

from __future__ import annotations

import pytest
from segc.errors import SegcError
from segc.shapes import (
    MAX_DIM,
    OPT_SHAPE_KEY,
    SHAPE_RANGE_KEY,
    ShapeRange,
    format_ranges,
    parse_dims,
    parse_shape_range,
    parse_static_shape,
    ranges_from_metadata,
)


def test_parse_range_and_write_it_back() -> None:
    r = parse_shape_range("input:1,3,640~4096/32,640~4096/32")
    assert (r.name, r.min, r.max, r.opt) == ("input", (1, 3, 640, 640), (1, 3, 4096, 4096), (1, 3, 640, 640))
    assert r.multiple == (1, 1, 32, 32) and r.step(2) == 32 and r.step(0) == 1 and r.has_multiples
    assert not r.is_static and r.dynamic_axes == (2, 3)
    assert r.atc() == "input:1,3,640~4096/32,640~4096/32"  # segc's round trip keeps /M
    assert r.vendor_atc() == "input:1,3,640~4096,640~4096"  # the vendor's has no /M
    assert r.multiples_text() == "dims 2, 3 of input must be multiples of 32"


def test_static_shape_and_names_with_colons() -> None:
    r = parse_shape_range("input:0:1,3,8,8")
    assert r.name == "input:0" and r.is_static and r.dynamic_axes == () and r.multiple == ()
    assert r.atc() == "input:0:1,3,8,8"
    assert parse_static_shape("x:1x3x4x5") == ("x", (1, 3, 4, 5))
    assert parse_dims("1,3,512,1024") == (1, 3, 512, 1024)


def test_opt_shape_must_lie_in_the_range_and_on_its_grid() -> None:
    r = parse_shape_range("x:1,3,64~256/32,64~256/32")
    assert r.with_opt((1, 3, 128, 96)).opt == (1, 3, 128, 96) and r.with_opt((1, 3, 128, 96)).opt_given
    with pytest.raises(SegcError, match="outside the range 64~256"):
        r.with_opt((1, 3, 512, 96))
    with pytest.raises(SegcError, match="not a multiple of 32"):
        r.with_opt((1, 3, 100, 96))
    with pytest.raises(SegcError, match="has 3 dims"):
        r.with_opt((1, 3, 128))


@pytest.mark.parametrize("text, fragment", [
    ("x1,3,4,4", "expected NAME:D1"), (":1,3", "name is empty"), ("x:1,3,8~4", "min <= max"),
    ("x:1,3,a,4", "is not a size"), ("x:1,3,0,4", "positive"), ("x:1,3,64~250/32", "multiples of 32"),
    (f"x:1,3,{MAX_DIM + 1},4", "larger than"), ("x:1," + "9" * 5000, "larger than"),
])
def test_malformed_ranges_are_usage_errors(text: str, fragment: str) -> None:
    with pytest.raises(SegcError, match=fragment):
        parse_shape_range(text)


def test_metadata_round_trip() -> None:
    ranges = [parse_shape_range("a:1,3,32~64,32~64").with_opt((1, 3, 48, 48)), parse_shape_range("b:1~4,8")]
    meta = {SHAPE_RANGE_KEY: format_ranges(ranges), OPT_SHAPE_KEY: "a:1,3,48,48"}
    back = ranges_from_metadata(meta)
    assert back == ranges and back[0].opt == (1, 3, 48, 48) and back[1].opt == (1, 8)
    assert ranges_from_metadata({}) == []
    assert ShapeRange("c", (1,), (1,), (1,)).is_static
