"""segc.verify.Verifier.compare on small graphs: within and outside tolerance, NaN, shape mismatch."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from segc.metrics import Tolerances
from segc.passbase import Contract
from segc.verify import Verifier


def scaled(factor: float, *, extra: list[onnx.NodeProto] | None = None, out: str = "y",
           out_dims: list[int] | None = None) -> onnx.ModelProto:
    """y = x * factor (then ``extra`` nodes); x is 1x2x4x4 and random inputs carry signal."""
    k = numpy_helper.from_array(np.array(factor, np.float32), "k")
    nodes = [helper.make_node("Mul", ["x", "k"], ["m"]), *(extra or [helper.make_node("Identity", ["m"], [out])])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_dims or [1, 2, 4, 4])], [k])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def verdict(before: onnx.ModelProto, after: onnx.ModelProto, contract: Contract = Contract.EXACT,
            tol: Tolerances | None = None):
    v = Verifier(tolerances=tol or Tolerances())
    return v.compare(v.initial_state(before), v.new_state(after, "after"), contract)


def test_within_tolerance_is_ok() -> None:
    result = verdict(scaled(1.0), scaled(1.0 + 1e-6))  # 1e-6 relative: under rtol 1e-4
    assert result.ok and result.status == "ok" and result.reasons == []
    assert result.summary()["max_rel"] is not None and 0 < result.summary()["max_rel"] < 1e-4


def test_outside_tolerance_fails_with_the_error() -> None:
    result = verdict(scaled(1.0), scaled(1.001))  # 1e-3 relative: over rtol 1e-4
    assert not result.ok and result.status == "failed"
    assert "max abs error" in result.reasons[0] and result.reasons[0].startswith("y (")
    loose = verdict(scaled(1.0), scaled(1.001), tol=Tolerances(rtol=1e-2))
    assert loose.ok  # the same pair passes once the user allows 1e-2


def test_approximate_is_judged_by_cosine_not_rtol() -> None:
    assert verdict(scaled(1.0), scaled(1.001), Contract.APPROXIMATE).ok  # same direction: cosine 1
    flipped = verdict(scaled(1.0), scaled(-1.0), Contract.APPROXIMATE)
    assert not flipped.ok and "cosine" in flipped.reasons[0]


def test_nan_in_the_candidate_fails() -> None:
    # y = m * (0 * log(-1 - m*m)) puts NaN everywhere: log of a negative number
    nan_nodes = [helper.make_node("Mul", ["m", "m"], ["sq"]), helper.make_node("Neg", ["sq"], ["neg"]),
                 helper.make_node("Log", ["neg"], ["y"])]
    result = verdict(scaled(1.0), scaled(1.0, extra=nan_nodes))
    assert not result.ok and "NaN/Inf differ" in result.reasons[0]


def test_shape_mismatch_fails() -> None:
    pooled = [helper.make_node("MaxPool", ["m"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    result = verdict(scaled(1.0), scaled(1.0, extra=pooled, out_dims=[1, 2, 2, 2]))
    assert not result.ok and "shape [1, 2, 2, 2] != reference [1, 2, 4, 4]" in result.reasons[0]


def test_a_lost_output_fails() -> None:
    result = verdict(scaled(1.0), scaled(1.0, out="z", extra=[helper.make_node("Identity", ["m"], ["z"])]))
    assert not result.ok and any("y" in r for r in result.reasons)
