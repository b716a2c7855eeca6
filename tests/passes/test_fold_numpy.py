"""onnx-simplifier's folds in numpy (segc.passes._fold_numpy): onnxruntime's bytes, or onnxruntime.

Every case runs the same one-node model through numpy and through an onnxruntime session and
compares the serialised tensors (dtype, shape, bits: -0.0 and NaN payloads included). Cases
numpy cannot compute as onnxruntime does must come back None, and the executor must then
give onnxruntime's answer. A seed model (here) and a third-party one
(tests/thirdparty/test_fold_numpy_ppocr.py) check every fold onnx-simplifier really asks for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from segc.passes import _onnxsim_core as core
from segc.passes._fold_numpy import HANDLERS, evaluate
from tests.onnxsim_parity import fold_bytes, folds_checked_against_onnxruntime

INT64_MAX, INT64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min
RNG = np.random.default_rng(7)


def _model(op: str, feeds: dict[str, np.ndarray], opset: int = 17, domain: str = "", **attrs: Any) -> onnx.ModelProto:
    names = list(feeds)
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for n, v in feeds.items() if n]
    node = helper.make_node(op, names, ["y"], domain=domain, **attrs)
    graph = helper.make_graph([node], "fold", inputs, [onnx.ValueInfoProto(name="y")])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=imports, ir_version=8)


def _both(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[list[bytes] | None, list[bytes]]:
    feeds = {k: v for k, v in feeds.items() if k}
    ours = evaluate(model, feeds)
    theirs = core._run_on_onnxruntime(model.SerializeToString(), feeds)
    return (None if ours is None else fold_bytes(ours)), fold_bytes(theirs)


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32) * 10


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


EXACT = [
    ("Unsqueeze", {"x": _f32(2, 3)}, 11, {"axes": [0, -1]}),
    ("Unsqueeze", {"x": _f32(2, 3), "a": _i64(-1, 0)}, 13, {}),
    ("Squeeze", {"x": _f32(1, 3, 1), "a": _i64(-1)}, 13, {}),
    ("Squeeze", {"x": _f32(1, 3, 1)}, 13, {}),
    ("Squeeze", {"x": _f32(1, 3, 1)}, 11, {"axes": [0]}),
    ("Concat", {"a": _i64(1, 2), "b": _i64(3), "c": _i64(-4, 5, 6)}, 13, {"axis": -1}),
    ("Reshape", {"x": _f32(2, 3, 4), "s": _i64(0, -1)}, 13, {}),
    ("Reshape", {"x": _f32(2, 3, 4), "s": _i64(4, 0, 2)}, 14, {"allowzero": 0}),
    ("Shape", {"x": _f32(2, 3, 4, 5)}, 15, {"start": 1, "end": -1}),
    ("Shape", {"x": _f32(2, 3)}, 13, {}),
    ("Gather", {"x": _f32(3, 4), "i": _i64(-1, 0, 2)}, 13, {"axis": 1}),
    ("Gather", {"x": _i64(5, 6, 7), "i": np.array(-2, np.int64)}, 13, {}),
    ("Slice", {"x": _f32(3, 4)}, 9, {"starts": [1, -3], "ends": [100, -1], "axes": [0, 1]}),
    ("Cast", {"x": np.array([-2.7, -0.5, 0.0, 3.9, 1e6], np.float32)}, 13, {"to": TensorProto.INT64}),
    ("Cast", {"x": np.array([2**40 + 1, -(2**30) - 3, 7], np.int64)}, 13, {"to": TensorProto.FLOAT}),
    ("Cast", {"x": np.array([1 / 3, 1e-20, -2.5e38], np.float64)}, 13, {"to": TensorProto.FLOAT}),
    ("Cast", {"x": np.array([True, False])}, 13, {"to": TensorProto.FLOAT}),
    ("Cast", {"x": np.array([0.0, -0.0, 2.5], np.float32)}, 13, {"to": TensorProto.BOOL}),
    ("Cast", {"x": np.array([7, -3], np.int32)}, 13, {"to": TensorProto.INT64}),
    ("Add", {"a": _f32(2, 3), "b": _f32(3)}, 13, {}),
    ("Sub", {"a": np.array([1, -2**31], np.int32), "b": np.array([2, 1], np.int32)}, 13, {}),  # wraps in both
    ("Mul", {"a": _f32(4, 1), "b": _f32(1, 5)}, 13, {}),
    ("Mul", {"a": _i64(3, -4), "b": _i64(-5)}, 13, {}),
    ("Mul", {"a": np.array([1e-30, 3e-38], np.float32), "b": np.array([1e-10, 0.25], np.float32)}, 13, {}),  # subnormal
    ("Div", {"a": _f32(3, 2), "b": _f32(2)}, 13, {}),
    ("Div", {"a": _i64(7, -7, 7, -7, 6, 0), "b": _i64(2, 2, -2, -2, 3, 5)}, 13, {}),
    ("Neg", {"x": _f32(5)}, 13, {}),
    ("Ceil", {"x": np.array([-1.5, -0.2, 0.0, 2.1], np.float32)}, 13, {}),
    ("Floor", {"x": np.array([-1.5, -0.2, 0.0, 2.1], np.float32)}, 13, {}),
    ("Transpose", {"x": _f32(2, 3, 4)}, 13, {}),
    ("Transpose", {"x": _f32(2, 3, 4)}, 13, {"perm": [1, 2, 0]}),
    ("Expand", {"x": _f32(3, 1), "s": _i64(2, 1, 4)}, 13, {}),
    ("ConstantOfShape", {"s": _i64(2, 3)}, 13, {"value": onnx.numpy_helper.from_array(np.array([5], np.int64))}),
    ("ConstantOfShape", {"s": _i64(4)}, 13, {}),
    ("Identity", {"x": _i64(1, 2)}, 13, {}),
]


@pytest.mark.parametrize(("op", "feeds", "opset", "attrs"), EXACT, ids=[f"{c[0]}-{k}" for k, c in enumerate(EXACT)])
def test_numpy_gives_onnxruntimes_bytes(op: str, feeds: dict[str, np.ndarray], opset: int,
                                        attrs: dict[str, Any]) -> None:
    ours, theirs = _both(_model(op, feeds, opset, **attrs), feeds)
    assert ours is not None, f"{op} fell back to onnxruntime"
    assert ours == theirs


def test_constants_of_every_form_and_onnxsims_marker() -> None:
    for attrs, dtype in (({"value_ints": [3, -1]}, np.int64), ({"value_float": 0.1}, np.float32),
                         ({"value": onnx.numpy_helper.from_array(_f32(2, 2))}, np.float32)):
        node = helper.make_node("Constant", [], ["y"], **attrs)
        node.attribute.append(helper.make_attribute("onnxsim_transient_constant", 1))
        graph = helper.make_graph([node], "c", [], [onnx.ValueInfoProto(name="y")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        values = evaluate(model, {})
        assert values is not None and values[0].dtype == dtype


def test_every_handled_op_has_an_exact_case() -> None:
    covered = {case[0] for case in EXACT} | {"Constant", "Slice"}
    assert covered == set(HANDLERS)


# Slice is where ONNX and Python differ most (clamping, ends past either side, the int64 extremes)
BOUNDS = st.one_of(st.integers(-8, 8), st.sampled_from([INT64_MAX, INT64_MIN, INT64_MIN + 1]))


@settings(max_examples=150, deadline=None)
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=3), data=st.data())
def test_slice_matches_onnxruntime(shape: list[int], data: st.DataObject) -> None:
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1, max_size=len(shape),
                              unique_by=lambda a: a % len(shape)))
    n = len(axes)
    starts = data.draw(st.lists(BOUNDS, min_size=n, max_size=n))
    ends = data.draw(st.lists(BOUNDS, min_size=n, max_size=n))
    steps = data.draw(st.lists(st.sampled_from([1, 2, 3, 5]), min_size=n, max_size=n))
    feeds = {"x": np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape),
             "s": _i64(*starts), "e": _i64(*ends), "a": _i64(*axes), "t": _i64(*steps)}
    ours, theirs = _both(_model("Slice", feeds, 13), feeds)
    assert ours == theirs


NOT_EXACT = [
    ("Exp", {"x": _f32(3)}, 13, {}, ""),  # transcendental: not in the table
    ("Mul", {"a": _f32(3).astype(np.float16), "b": _f32(3).astype(np.float16)}, 13, {}, ""),
    ("Div", {"a": _i64(4, 5), "b": _i64(2, 0)}, 13, {}, ""),  # integer division by zero
    ("Div", {"a": np.array([1.0], np.float32), "b": np.array([0.0], np.float32)}, 13, {}, ""),  # a float overflow
    ("Cast", {"x": np.array([np.nan, 1.0], np.float32)}, 13, {"to": TensorProto.INT64}, ""),
    ("Cast", {"x": np.array([3e9], np.float32)}, 13, {"to": TensorProto.INT32}, ""),
    ("Cast", {"x": np.array([1.0], np.float32)}, 13, {"to": TensorProto.FLOAT16}, ""),
    ("Gather", {"x": _f32(3), "i": _i64(3)}, 13, {}, ""),
    ("Slice", {"x": _f32(4), "s": _i64(0), "e": _i64(INT64_MAX), "a": _i64(0), "t": _i64(-3)}, 13, {}, ""),  # backward
    ("Add", {"a": _f32(2), "b": _f32(2)}, 13, {}, "com.example"),  # another domain's Add
    ("Concat", {"a": _i64(1), "b": _i64(2)}, 13, {"axis": 0, "extra": 1}, ""),  # an attribute nobody reads
    ("ConstantOfShape", {"s": _i64(1 << 20, 1 << 20)}, 13, {}, ""),  # 4 TiB: onnxruntime's to refuse
]


@pytest.mark.parametrize(("op", "feeds", "opset", "attrs", "domain"), NOT_EXACT,
                         ids=[f"{c[0]}-{k}" for k, c in enumerate(NOT_EXACT)])
def test_what_numpy_cannot_match_goes_to_onnxruntime(op: str, feeds: dict[str, np.ndarray], opset: int,
                                                      attrs: dict[str, Any], domain: str) -> None:
    assert evaluate(_model(op, feeds, opset, domain=domain, **attrs), feeds) is None


def test_the_executor_hands_onnxruntime_what_numpy_declines() -> None:
    feeds = {"x": np.array([0.5, -1.0], np.float32)}
    model = _model("Exp", feeds, 13)
    before = core.FoldCounts(core.FOLDS.numpy, core.FOLDS.onnxruntime)
    raw = [onnx.numpy_helper.from_array(v, k).SerializeToString() for k, v in feeds.items()]
    out = core.executor().Run(model.SerializeToString(), raw)
    assert out == fold_bytes(core._run_on_onnxruntime(model.SerializeToString(), feeds))
    value = onnx.numpy_helper.to_array(onnx.TensorProto.FromString(out[0]))  # and the value is exp's
    np.testing.assert_allclose(value, np.exp(feeds["x"]), rtol=1e-6)
    assert (core.FOLDS.numpy, core.FOLDS.onnxruntime) == (before.numpy, before.onnxruntime + 1)


def test_seed_model_folds_match_onnxruntime(seed_onnx) -> None:  # type: ignore[no-untyped-def]
    assert folds_checked_against_onnxruntime(seed_onnx("ocrnet_hrnetw18", shape=(1, 3, 128, 256))) >= 1
