"""Shape-blind regions (segc.shape_blind): which regions one verification shape stands for,
and that a check at that one shape still catches a broken pass there.

The soundness cases are DBNet's binarize head, where onnx-simplifier folds a
BatchNormalization into the ConvTranspose before it, behind a small unchanged stem::

    x -> Conv s2 -> Relu -> Conv -> Relu -> r -> ConvTranspose k2 s2 -> BatchNormalization -> Relu -> y
    x -> Conv s2 -> Relu -> Conv -> Relu -> r -> ConvTranspose' k2 s2 ---------------------> Relu -> y
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.boundary_verify import BoundaryChecker, InputsFrom
from segc.ortrun import SESSION_STATS
from segc.passbase import Contract
from segc.shape_blind import big_enough, reach
from segc.shapes import ShapeRange
from segc.verify import Verifier


def _graph(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


W3 = np.ones((8, 8, 3, 3), np.float32)


def _one(op: str, inputs: list[str], inits: dict[str, np.ndarray] | None = None, **attrs: Any) -> int | None:
    model = _graph([helper.make_node(op, ["x", *inputs], ["y"], **attrs)], inits or {})
    return reach(model, range(len(model.graph.node)))


def test_windows_that_step_by_one_are_blind_with_their_reach() -> None:
    assert _one("Conv", ["w"], {"w": W3}, pads=[1, 1, 1, 1]) == 3
    assert _one("Conv", ["w"], {"w": W3}, pads=[2, 2, 2, 2], dilations=[2, 2]) == 5
    assert _one("MaxPool", [], kernel_shape=[3, 3], pads=[1, 1, 1, 1]) == 3
    assert _one("ConvTranspose", ["w"], {"w": np.ones((8, 8, 2, 2), np.float32)}, strides=[2, 2]) == 4
    assert _one("Relu", []) == 1


def test_what_depends_on_the_size_is_not_blind() -> None:
    assert _one("Conv", ["w"], {"w": W3}, pads=[1, 1, 1, 1], strides=[2, 2]) is None  # last window: size mod 2
    assert _one("Conv", ["w"], {"w": W3}, auto_pad="SAME_UPPER") is None
    assert _one("MaxPool", [], kernel_shape=[3, 3], ceil_mode=1) is None
    assert _one("GlobalAveragePool", []) is None
    norm = {"s": np.ones(8, np.float32), "b": np.zeros(8, np.float32)}
    assert _one("InstanceNormalization", ["s", "b"], norm) is None
    assert _one("Concat", ["x"], axis=2) is None
    assert _one("Resize", ["", "sc"], {"sc": np.array([1, 1, 2, 2], np.float32)}) is None
    assert _one("ConvTranspose", ["w"], {"w": np.ones((8, 8, 2, 2), np.float32)}, strides=[2, 2],
                output_shape=[10, 10]) is None


def test_constants_may_vary_along_channels_only() -> None:
    assert _one("Add", ["c"], {"c": np.ones((1, 8, 1, 1), np.float32)}) == 1
    assert _one("Mul", ["c"], {"c": np.array(2.0, np.float32)}) == 1
    assert _one("Add", ["c"], {"c": np.ones((1, 1, 1, 6), np.float32)}) is None  # a table along W
    assert _one("Add", ["c"], {"c": np.ones((6,), np.float32)}) is None  # lines up with W


def test_big_enough_needs_every_border_pattern() -> None:
    assert big_enough([(1, 8, 9, 9)], 4) and not big_enough([(1, 8, 8, 9)], 4)
    assert big_enough([(1, 8)], 100)  # no spatial dim


def _stem() -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "s1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "s2"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"])]
    return nodes, {k: rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.3 for k in ("s1", "s2")}


def _head(fused: bool, *, bias_error: float = 0.0) -> onnx.ModelProto:
    stem, weights = _stem()
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 8, 2, 2)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    scale, shift = rng.uniform(0.5, 1.5, 8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    mean, var = rng.standard_normal(8).astype(np.float32), rng.uniform(0.5, 2, 8).astype(np.float32)
    if not fused:
        nodes = [helper.make_node("ConvTranspose", ["r", "w", "b"], ["t"], kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("BatchNormalization", ["t", "scale", "shift", "mean", "var"], ["n"]),
                 helper.make_node("Relu", ["n"], ["y"])]
        return _graph(stem + nodes, weights | {"w": w, "b": bias, "scale": scale, "shift": shift, "mean": mean,
                                               "var": var})
    k = scale / np.sqrt(var + 1e-5)
    fw = (w * k[None, :, None, None]).astype(np.float32)  # ConvTranspose weight: [in, out, kh, kw]
    fb = ((bias - mean) * k + shift + bias_error).astype(np.float32)
    nodes = [helper.make_node("ConvTranspose", ["r", "fw", "fb"], ["t"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Relu", ["t"], ["y"])]
    return _graph(stem + nodes, weights | {"fw": fw, "fb": fb})


RANGES = {"x": ShapeRange("x", (1, 8, 32, 32), (1, 8, 64, 96), (1, 8, 48, 56))}


def _check(after: onnx.ModelProto) -> tuple[Any, Verifier]:
    verifier = Verifier(ranges=RANGES)
    before = _head(fused=False)
    state = verifier.initial_state(before, defer=True)
    SESSION_STATS.reset()
    return BoundaryChecker(verifier).check(state, after, "after", Contract.EXACT, None), verifier


def test_a_right_fusion_is_checked_at_the_smallest_shape() -> None:
    out, verifier = _check(_head(fused=True))
    assert out.verdict.ok, out.verdict.reasons
    assert out.inputs_from is InputsFrom.SYNTHESIZED
    assert len(verifier.feeds_for(_head(fused=False))) == 3
    assert SESSION_STATS.runs == 2  # both sides once, at 1x8x32x32, on a made-up r (no run of the stem)
    [m] = out.verdict.metrics
    assert m.feed.endswith("1x8x32x32]") and m.compared == 8 * 32 * 32 and m.max_abs < 1e-4
    assert any("alone" in w for w in out.verdict.warnings)


@pytest.mark.parametrize("error", [1e-2, 1.0])
def test_a_wrong_fusion_is_still_caught(error: float) -> None:
    out, _ = _check(_head(fused=True, bias_error=error))
    assert not out.verdict.ok
    assert out.inputs_from is InputsFrom.REFERENCE  # confirmed on the real values, at every shape
    assert {m.feed for m in out.verdict.metrics} == {f.label for f in Verifier(ranges=RANGES).feeds_for(
        _head(fused=False))}


def test_a_region_too_small_for_its_reach_runs_at_every_shape() -> None:
    """r at 1x8x4x4 (x 8x8): the ConvTranspose's border patterns overlap, no shape stands for the others."""
    verifier = Verifier(ranges={"x": ShapeRange("x", (1, 8, 8, 8), (1, 8, 24, 24), (1, 8, 12, 12))})
    state = verifier.initial_state(_head(fused=False), defer=True)
    SESSION_STATS.reset()
    out = BoundaryChecker(verifier).check(state, _head(fused=True), "after", Contract.EXACT, None)
    assert out.verdict.ok, out.verdict.reasons
    assert SESSION_STATS.runs == 2 * 3 and len(out.verdict.metrics) == 3
