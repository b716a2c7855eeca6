"""fold_resize_scales: shape-computed Resize scales/sizes become constants only when provably equal.

Tiny graphs are written with onnx.helper in the forms the exporters produce (opset 10
``Resize(X, scales)``, opset 11 ``Resize(X, roi, scales, sizes)``, opset 13+ with empty
optional inputs, opset 9 ``Upsample``), checked in onnxruntime before/after at sizes that
are not multiples of 32, plus the DBNet seed model exported at opset 10 with dynamic H/W.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.ortrun import run_model
from segc.passbase import Contract, PassContext, get_pass
from segc.passes._shape_expr import Poly

FoldResizeScales = get_pass("fold_resize_scales")

# sizes that are not multiples of 32 (nor of 2): the folded graph must hold for every size
ODD_SIZES = [(37, 53), (64, 64), (9, 21)]


class G:
    """A small graph builder: unique names, constants as initializers."""

    def __init__(self, opset: int, channels: int = 3, dynamic: bool = True) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0
        self.channels = channels
        dims = [1, channels, "H", "W"] if dynamic else [1, channels, 16, 16]
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]
        self.rng = np.random.default_rng(0)

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, values: object, dtype: type = np.int64) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    def conv(self, x: str, out_ch: int, stride: int = 1) -> str:
        w = self.const(self.rng.standard_normal((out_ch, self.channels, 3, 3)) * 0.3, np.float32)
        self.channels = out_ch
        return self.op("Conv", [x, w], pads=[1, 1, 1, 1], strides=[stride, stride])

    def unsqueeze0(self, x: str) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.const([0])])
        return self.op("Unsqueeze", [x], axes=[0])

    def slice0(self, x: str, start: int, end: int) -> str:
        if self.opset >= 10:
            return self.op("Slice", [x, self.const([start]), self.const([end]), self.const([0])])
        return self.op("Slice", [x], starts=[start], ends=[end], axes=[0])

    def scale_chain(self, x: str, factor: float) -> str:
        """The old exporter's scales: floor(dim * k) / dim for H and W, after [1, 1]."""
        shape = self.op("Shape", [x])
        outs = []
        for axis in (2, 3):
            g = self.op("Gather", [shape, self.const(axis)], axis=0)
            f = self.op("Cast", [g], to=TensorProto.FLOAT)
            m = self.op("Mul", [f, self.const(factor, np.float32)])
            fl = self.op("Floor", [self.op("Cast", [m], to=TensorProto.FLOAT)])
            outs.append(self.unsqueeze0(fl))
        sizes = self.op("Cast", [self.op("Concat", outs, axis=0)], to=TensorProto.FLOAT)
        hw = self.op("Cast", [self.slice0(self.op("Shape", [x]), 2, 4)], to=TensorProto.FLOAT)
        ratio = self.op("Div", [sizes, hw])
        return self.op("Concat", [self.const([1.0, 1.0], np.float32), ratio], axis=0)

    def sizes_chain(self, x: str, factor: int, source: str | None = None) -> str:
        """sizes = Concat(Shape(x)[0:2], Shape(source)[2:4] * k) (the opset 11 exporter)."""
        shape = self.op("Shape", [x])
        nc = self.slice0(shape, 0, 2)
        hw = self.slice0(self.op("Shape", [source or x]), 2, 4)
        return self.op("Concat", [nc, self.op("Mul", [hw, self.const([factor, factor])])], axis=0)

    def resize(
        self, x: str, *, scales: str | None = None, sizes: str | None = None, mode: str = "nearest", **attrs: object
    ) -> str:
        if self.opset <= 10:
            return self.op("Resize", [x, scales or ""], mode=mode)
        roi = self.const(np.zeros(0), np.float32) if self.opset < 13 else ""
        empty_scales = self.const(np.zeros(0), np.float32) if self.opset < 13 else ""
        if sizes is not None:
            return self.op("Resize", [x, roi, empty_scales, sizes], mode=mode, **attrs)
        return self.op("Resize", [x, roi, scales or ""], mode=mode, **attrs)

    def model(self, *outputs: str) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * 4) for o in outputs]
        graph = helper.make_graph(self.nodes, "g", self.inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=10)
        onnx.checker.check_model(model)
        return model


def run_at(model: onnx.ModelProto, h: int, w: int, channels: int = 3) -> dict[str, np.ndarray]:
    x = np.random.default_rng(h * 1000 + w).standard_normal((1, channels, h, w)).astype(np.float32)
    return run_model(model, {"x": x})


def assert_same(before: onnx.ModelProto, after: onnx.ModelProto, sizes: list[tuple[int, int]] = ODD_SIZES) -> None:
    for h, w in sizes:
        a, b = run_at(before, h, w), run_at(after, h, w)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].shape == b[k].shape, (k, h, w)
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k} at {h}x{w}")


def resize_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in ("Resize", "Upsample")]


def constant_scales(model: onnx.ModelProto, node: onnx.NodeProto, index: int) -> list[float]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == node.input[index]:
            return numpy_helper.to_array(n.attribute[0].t).tolist()
    return inits[node.input[index]].tolist()


def no_shape_feeds_resize(model: onnx.ModelProto) -> bool:
    """True when no Shape op is upstream of any Resize/Upsample."""
    producer = {o: n for n in model.graph.node for o in n.output}
    for r in resize_nodes(model):
        stack = list(r.input[1:])
        while stack:
            t = stack.pop()
            n = producer.get(t)
            if n is None:
                continue
            if n.op_type == "Shape":
                return False
            stack.extend(n.input)
    return True


def apply(model: onnx.ModelProto) -> tuple[onnx.ModelProto, object]:
    return FoldResizeScales().apply(model, PassContext())


# ----------------------------------------------------------------------------------------------


def test_registered_as_exact() -> None:
    assert FoldResizeScales.contract is Contract.EXACT
    assert FoldResizeScales.summary and FoldResizeScales.__doc__


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_opset10_scales_chain_folds(mode: str) -> None:
    g = G(10)
    y = g.conv("x", 4)
    up = g.resize(y, scales=g.scale_chain(y, 2.0), mode=mode)
    before = g.model(up)
    after, result = apply(before)
    assert result.changed and result.stats["folded"] == 1 and result.stats["left"] == 0
    (node,) = resize_nodes(after)
    assert len(node.input) == 2
    assert constant_scales(after, node, 1) == [1.0, 1.0, 2.0, 2.0]
    assert Counter(n.op_type for n in after.graph.node) == Counter({"Conv": 1, "Resize": 1})
    assert_same(before, after)


@pytest.mark.parametrize("opset", [11, 13, 19])
def test_sizes_chain_becomes_scales(opset: int) -> None:
    g = G(opset)
    y = g.conv("x", 4)
    up = g.resize(
        y, sizes=g.sizes_chain(y, 2), mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"
    )
    lin = g.resize(y, sizes=g.sizes_chain(y, 3), mode="linear", coordinate_transformation_mode="align_corners")
    before = g.model(up, lin)
    after, result = apply(before)
    assert result.changed and result.stats == {"resizes": 2, "computed": 2, "folded": 2, "from_sizes": 2, "left": 0}
    first, second = resize_nodes(after)
    assert len(first.input) == 3 and len(second.input) == 3  # sizes dropped
    assert constant_scales(after, first, 2) == [1.0, 1.0, 2.0, 2.0]
    assert constant_scales(after, second, 2) == [1.0, 1.0, 3.0, 3.0]
    if opset < 13:
        assert first.input[1] != ""  # roi stays a (required) input at opsets 11/12
    assert no_shape_feeds_resize(after)
    assert_same(before, after)


def test_opset19_axes_sizes_fold_per_axis() -> None:
    """Resize-18's ``axes``: sizes [2H, 3W] for axes (2, 3) fold to scales [2, 3]."""
    g = G(19)
    hw = g.slice0(g.op("Shape", ["x"]), 2, 4)
    sizes = g.op("Mul", [hw, g.const([2, 3])])
    before = g.model(g.op("Resize", ["x", "", "", sizes], mode="linear", axes=[2, 3]))
    after, result = apply(before)
    assert result.changed and result.stats["from_sizes"] == 1
    (node,) = resize_nodes(after)
    assert constant_scales(after, node, 2) == [2.0, 3.0]
    assert [a.name for a in node.attribute if a.name == "axes"] == ["axes"]
    assert_same(before, after)


def test_opset11_scales_chain_folds() -> None:
    g = G(11)
    y = g.conv("x", 2)
    up = g.resize(
        y,
        scales=g.scale_chain(y, 4.0),
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )
    before = g.model(up)
    after, result = apply(before)
    assert result.changed and result.stats["folded"] == 1 and result.stats["from_sizes"] == 0
    (node,) = resize_nodes(after)
    assert constant_scales(after, node, 2) == [1.0, 1.0, 4.0, 4.0]
    assert_same(before, after)


def test_upsample_opset9_folds() -> None:
    g = G(9)
    y = g.conv("x", 2)
    scales = g.scale_chain(y, 2.0)
    g.nodes.append(helper.make_node("Upsample", [y, scales], ["up"], name="Upsample_0", mode="nearest"))
    before = g.model("up")
    after, result = apply(before)
    assert result.changed and result.stats["folded"] == 1
    (node,) = resize_nodes(after)
    assert constant_scales(after, node, 1) == [1.0, 1.0, 2.0, 2.0]
    assert_same(before, after)


def test_non_integer_factor_is_left_with_reason() -> None:
    """floor(1.5 * H) / H depends on H: folding it to 1.5 would move the sampling grid."""
    g = G(10)
    y = g.conv("x", 2)
    before = g.model(g.resize(y, scales=g.scale_chain(y, 1.5)))
    after, result = apply(before)
    assert result.changed is False and after is before
    assert result.stats["computed"] == 1 and result.stats["left"] == 1 and result.stats["folded"] == 0
    (note,) = result.notes
    assert "Resize" in note and "not exact" in note


def test_sizes_from_another_branch_is_reported_not_folded() -> None:
    """HRNet's interpolate(low, size=high.shape[2:]) with low = stride-2 conv of high."""
    g = G(11)
    high = g.conv("x", 4)
    low = g.conv(high, 4, stride=2)
    up = g.resize(low, sizes=_sizes_of(g, low, high), mode="linear")
    before = g.model(g.op("Add", [up, high]))
    after, result = apply(before)
    assert result.changed is False
    assert result.stats["left"] == 1
    assert "not a fixed multiple" in result.notes[0] and "floor(" in result.notes[0]


def _sizes_of(g: G, x: str, other: str) -> str:
    """sizes = Concat(Shape(x)[0:2], Shape(other)[2:4])."""
    nc = g.slice0(g.op("Shape", [x]), 0, 2)
    hw = g.slice0(g.op("Shape", [other]), 2, 4)
    return g.op("Concat", [nc, hw], axis=0)


def test_sizes_from_a_provable_multiple_folds() -> None:
    """interpolate(a, size=b.shape[2:]) where b = Resize(a, x2): b's size is always 2x a's."""
    g = G(13)
    a = g.conv("x", 2)
    b = g.resize(a, scales=g.const([1.0, 1.0, 2.0, 2.0], np.float32))
    c = g.resize(a, sizes=_sizes_of(g, a, b))
    before = g.model(g.op("Add", [b, c]))
    after, result = apply(before)
    assert result.changed and result.stats["folded"] == 1 and result.stats["from_sizes"] == 1
    assert no_shape_feeds_resize(after)
    assert_same(before, after)


def test_constant_scales_leave_graph_untouched() -> None:
    g = G(13)
    y = g.conv("x", 2)
    before = g.model(g.resize(y, scales=g.const([1.0, 1.0, 2.0, 2.0], np.float32)))
    after, result = apply(before)
    assert result.changed is False and after is before
    assert result.stats == {"resizes": 1, "computed": 0, "folded": 0, "from_sizes": 0, "left": 0}
    assert result.notes == []


def test_scales_from_graph_input_is_left() -> None:
    g = G(13)
    g.inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [4]))
    before = g.model(g.resize("x", scales="s"))
    after, result = apply(before)
    assert result.changed is False and result.stats["left"] == 1
    assert "graph input" in result.notes[0]


@pytest.mark.parametrize("builder", ["opset10", "opset11_sizes", "opset13_sizes"])
def test_idempotent(builder: str) -> None:
    opset = {"opset10": 10, "opset11_sizes": 11, "opset13_sizes": 13}[builder]
    g = G(opset)
    y = g.conv("x", 2)
    up = g.resize(y, scales=g.scale_chain(y, 2.0)) if opset == 10 else g.resize(y, sizes=g.sizes_chain(y, 2))
    once, first = apply(g.model(up))
    twice, second = apply(once)
    assert first.changed and not second.changed and twice is once


def test_static_input_dims_are_facts() -> None:
    """A static input accepts only its own size, so a chain constant at that size folds.

    This is what a static per-batch Ascend build needs (ATC wants constant scales); a later
    ``set_shape_range`` re-derives scales for a range from the graph itself.
    """
    g = G(10, dynamic=False)
    y = g.conv("x", 2)
    fixed = g.resize(y, scales=g.scale_chain(y, 2.0))
    baked = g.op(
        "Div",
        [
            g.op("Cast", [g.unsqueeze0(g.const(32))], to=TensorProto.FLOAT),
            g.op("Cast", [g.slice0(g.op("Shape", [y]), 2, 3)], to=TensorProto.FLOAT),
        ],
    )
    scales = g.op("Concat", [g.const([1.0, 1.0], np.float32), baked, baked], axis=0)
    traced = g.resize(y, scales=scales)
    before = g.model(fixed, traced)
    after, result = apply(before)
    assert result.stats["folded"] == 2 and result.stats["left"] == 0  # 32 / H is 2 at the only H there is
    assert_same(before, after, [(16, 16)])


def test_poly_floor_normalises() -> None:
    h = Poly.symbol("H")
    assert (h * 2).floor() == h * 2
    assert (h * (3 / 2)).floor() == h + (h * 0.5).floor()
    assert ((h * 2).floor()).exact_div(h) == 2
    assert ((h * 1.5).floor()).exact_div(h) is None


# ----------------------------------------------------------------------------------------------
# seed model


@pytest.mark.slow
def test_dbnet_r50_dynamic_opset10_chains_all_fold(seed_onnx: Callable[..., Path]) -> None:
    path = seed_onnx("dbnet_r50", shape=(1, 3, 128, 160), dynamic=True)
    before = onnx.load(str(path))
    assert before.opset_import[0].version == 10
    had_chains = not no_shape_feeds_resize(before)
    after, result = apply(before)
    resizes = resize_nodes(after)
    assert len(resizes) == result.stats["resizes"] >= 6
    assert result.stats["left"] == 0, result.notes
    assert result.stats["folded"] == result.stats["computed"]
    assert had_chains == result.changed
    assert no_shape_feeds_resize(after)
    assert not any(n.op_type == "Shape" for n in after.graph.node)
    for node in resizes:
        k = constant_scales(after, node, 1)
        assert k[:2] == [1.0, 1.0] and k[2] == k[3] and k[2] in (2.0, 4.0, 8.0)
    rng = np.random.default_rng(1)
    for h, w in [(128, 160), (96, 224)]:
        x = rng.standard_normal((1, 3, h, w)).astype(np.float32)
        a, b = run_model(before, {"input": x}), run_model(after, {"input": x})
        for k in a:
            assert a[k].shape == (1, 1, h, w)
            np.testing.assert_array_equal(a[k], b[k])
    assert apply(after)[1].changed is False
