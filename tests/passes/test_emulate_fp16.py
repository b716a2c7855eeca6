"""fp16 emulation: overflow found, the overflowing layers kept fp32, the fitting ones not."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.fp16_emulation import FP16_BUDGET, FP32_LAYERS_KEY, emulate, fp32_layers, plan_fp16, run_emulation
from segc.passbase import PassContext
from segc.passes.emulate_fp16 import EmulateFp16, Fp16BudgetMissed, precision_passes
from segc.verify_inputs import Feed


def overflow_model(scale: float = 1e5) -> onnx.ModelProto:
    """x -> conv_in -> relu_in -> scale_up (x scale: beyond 65504) -> relu_big -> scale_down (/ scale) -> conv_out -> y.

    The Relu between the two scalings keeps onnx-simplifier from folding them into one.
    """
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5
    w2 = rng.standard_normal((2, 4, 3, 3)).astype(np.float32) * 0.5
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array(scale, np.float32), "up"),
             numpy_helper.from_array(np.array(1.0 / scale, np.float32), "down")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv_in", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu_in"),
        helper.make_node("Mul", ["r1", "up"], ["big"], name="scale_up"),
        helper.make_node("Relu", ["big"], ["big_r"], name="relu_big"),
        helper.make_node("Mul", ["big_r", "down"], ["small"], name="scale_down"),
        helper.make_node("Conv", ["small", "w2"], ["y"], name="conv_out", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 16, 16])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


KEPT = ["relu_big", "scale_down", "scale_up"]  # the overflowing values pass through all three


def feeds(n: int = 1) -> list[Feed]:
    rng = np.random.default_rng(3)
    return [Feed(f"x#{i}", {"x": rng.uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)}) for i in range(n)]


def test_emulation_rounds_and_keeps_names() -> None:
    rw = emulate(overflow_model(), set())
    ops = [n.op_type for n in rw.model.graph.node]
    assert ops.count("Cast") >= 2 * 6  # x, weights, activations and the output rounded
    assert "y" in {o.name for o in rw.model.graph.output}
    assert {"c1", "r1", "big", "big_r", "small", "y"} <= {o for n in rw.model.graph.node for o in n.output}
    onnx.checker.check_model(rw.model)


def test_all_fp16_overflows_at_scale_up() -> None:
    emu = run_emulation(overflow_model(), set(), feeds()[0], FP16_BUDGET)
    by = {layer.node: layer for layer in emu.layers}
    assert by["scale_up"].overflow > 0
    assert by["conv_in"].overflow == 0 and by["conv_out"].overflow == 0
    assert not emu.ok


def test_keep_set_holds_the_overflow_and_nothing_else() -> None:
    plan = plan_fp16(overflow_model(), feeds(2))
    assert plan.first.overflow > 0 and not plan.first.ok
    assert plan.keep == KEPT
    assert plan.ok and plan.final.overflow == 0
    assert plan.final.verdict.summary()["cosine"] >= 0.999


def test_a_model_that_fits_keeps_nothing() -> None:
    plan = plan_fp16(overflow_model(scale=10.0), feeds())
    assert plan.first.ok and plan.keep == []


def test_pass_stores_the_keep_set_and_figures() -> None:
    ctx = PassContext(options={"pixel_budget": 256})
    model, result = EmulateFp16().apply(overflow_model(), ctx)
    assert not result.changed and model is not None
    assert json.loads(ctx.metadata[FP32_LAYERS_KEY]) == KEPT
    layers = {r["node"]: r for r in result.stats["fp16"]["layers"]}
    assert layers["scale_up"]["overflow"] > 0 and layers["conv_in"]["overflow"] == 0
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.metadata_props.add(key=FP32_LAYERS_KEY, value=ctx.metadata[FP32_LAYERS_KEY])
    assert fp32_layers(m) == tuple(KEPT)


def test_budget_missed_even_with_keeps_is_an_error() -> None:
    ctx = PassContext(options={"max_keep": 1, "pixel_budget": 256})
    with pytest.raises(Fp16BudgetMissed, match="misses its budget"):
        EmulateFp16().apply(overflow_model(), ctx)


def test_planner_adds_the_pass_for_fp16_only() -> None:
    assert precision_passes(["simplify", "cleanup"], {}, "fp16") == ["simplify", "cleanup", "emulate_fp16"]
    assert precision_passes(["simplify"], {}, "fp32") == ["simplify"]
    assert precision_passes(["simplify"], {}, None) == ["simplify"]
    options: dict = {}
    assert precision_passes(["simplify"], options, "int8", "imgs") == ["simplify", "emulate_int8"]
    assert options == {"emulate_int8": {"calib_images": "imgs"}}


def test_localize_between_fp32_and_its_emulation(tmp_path, capsys) -> None:
    """``segc verify --localize`` on the emulation names the first layer that overflows."""
    from segc.cli import main

    ref, emu = tmp_path / "fp32.onnx", tmp_path / "fp16.onnx"
    onnx.save(overflow_model(), ref)
    onnx.save(emulate(overflow_model(), set()).model, emu)
    assert main(["verify", str(ref), str(emu), "--localize", "--json", "--contract", "approximate"]) == 1
    first = json.loads(capsys.readouterr().out)["first_divergence"]
    assert first["node"] == "scale_up" and first["nonfinite_mismatch"] > 0


def cancel_model() -> onnx.ModelProto:
    """conv -> (c + 1000) -> (a - 1000) -> relu: no overflow, but fp16 keeps 0.5 of resolution at 1000."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1000.0, np.float32), "off")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "off"], ["a"], name="add_offset"),
             helper.make_node("Sub", ["a", "off"], ["s"], name="sub_offset"),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "cancel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_greedy_search_without_overflow_keeps_the_cancellation() -> None:
    """Budget missed by precision, not range: the Sub shows the error, the Add's rounding causes it."""
    x = np.random.default_rng(1).uniform(0, 0.01, (1, 3, 16, 16)).astype(np.float32)
    plan = plan_fp16(cancel_model(), [Feed("x", {"x": x})])
    assert plan.first.overflow == 0 and not plan.first.ok
    assert plan.keep == ["add_offset", "sub_offset"] and plan.ok
    assert "conv" not in plan.keep and "relu" not in plan.keep
