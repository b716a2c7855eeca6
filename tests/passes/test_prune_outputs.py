"""prune_outputs: cut a post-processing tail on a tiny graph, then reproduce the 3D_HRNet cut.

The seed guide told ATC ``--out_nodes="Conv_1380:0;Conv_1453:0"``; here the same two
classifier convolutions are named structurally (``Conv before output1/2``) and every kept
output is compared in onnxruntime with the same tensor exposed in the unpruned graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.errors import SegcError
from segc.ortrun import run_model
from segc.passbase import Contract, PassContext, get_pass
from segc.passes.prune_outputs import PruneOutputs
from segc.selectors import node_label, select_nodes

RNG = np.random.default_rng(0)


def tail_model() -> onnx.ModelProto:
    """x -> Conv "cls" -> logits -> Resize x2 -> ArgMax -> output;  x -> Conv "aux" -> aux.

    Intermediate tensors carry no value_info, as many exporters leave them, so the pass has
    to infer the new outputs' types.
    """
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["logits"], name="cls"),
        helper.make_node("Resize", ["logits", "", "scales"], ["up"], name="upsample", mode="linear"),
        helper.make_node("ArgMax", ["up"], ["output"], name="argmax", axis=1, keepdims=1),
        helper.make_node("Conv", ["x", "w2"], ["aux"], name="aux"),
    ]
    inits = [
        numpy_helper.from_array(RNG.standard_normal((3, 2, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(RNG.standard_normal((4, 2, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    graph = helper.make_graph(
        nodes, "tail", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.INT64, [1, 1, 16, 16]),
         helper.make_tensor_value_info("aux", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def apply(model: onnx.ModelProto, outputs: Any):
    return PruneOutputs().apply(model, PassContext(options={"outputs": outputs}))


def outputs_of(model: onnx.ModelProto) -> list[tuple[str, int, list[int]]]:
    return [(o.name, o.type.tensor_type.elem_type, [d.dim_value for d in o.type.tensor_type.shape.dim])
            for o in model.graph.output]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also exposes ``names`` (the unpruned graph's view of them)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(helper.make_empty_tensor_value_info(name))
    return copy


def test_registered_with_contract() -> None:
    assert get_pass("prune_outputs") is PruneOutputs and PruneOutputs.contract is Contract.OUTPUTS
    assert "outputs" in PruneOutputs.options


def test_cuts_the_post_processing_tail() -> None:
    model = tail_model()
    out, result = apply(model, ["Conv before output"])
    assert result.changed
    assert result.stats == {"outputs": ["logits"], "dropped": ["output", "aux"], "nodes_removed": 3}
    assert outputs_of(out) == [("logits", TensorProto.FLOAT, [1, 3, 8, 8])]  # typed by shape inference
    assert [n.name for n in out.graph.node] == ["cls"]
    assert {i.name for i in out.graph.initializer} == {"w"}  # unused weights go with their nodes
    onnx.checker.check_model(out, full_check=True)
    x = RNG.standard_normal((1, 2, 8, 8)).astype(np.float32)
    before = run_model(with_outputs(model, ["logits"]), {"x": x})
    after = run_model(out, {"x": x})
    np.testing.assert_array_equal(after["logits"], before["logits"])


@pytest.mark.parametrize("outputs", ["cls:0", ["cls"], "Conv[0]", "logits"])
def test_atc_names_and_other_selectors_reach_the_same_cut(outputs: Any) -> None:
    out, _ = apply(tail_model(), outputs)
    assert [o.name for o in out.graph.output] == ["logits"]


def test_keeps_existing_outputs_and_the_given_order() -> None:
    model = tail_model()
    out, result = apply(model, "aux:0;cls:0")
    assert [o.name for o in out.graph.output] == ["aux", "logits"]
    assert result.stats["dropped"] == ["output"] and result.stats["nodes_removed"] == 2
    assert outputs_of(out)[0] == ("aux", TensorProto.FLOAT, [1, 4, 8, 8])  # recorded type kept
    x = RNG.standard_normal((1, 2, 8, 8)).astype(np.float32)
    before = run_model(with_outputs(model, ["logits"]), {"x": x})
    after = run_model(out, {"x": x})
    for name in ("aux", "logits"):
        np.testing.assert_array_equal(after[name], before[name])
    # reordering the same outputs is a change too: output order is part of the interface
    swapped, again = apply(model, ["aux", "output"])
    assert again.changed and [o.name for o in swapped.graph.output] == ["aux", "output"]
    assert again.stats["nodes_removed"] == 0


def test_same_outputs_is_unchanged_and_idempotent() -> None:
    model = tail_model()
    same, result = apply(model, ["output", "aux"])
    assert not result.changed and same is model
    once, first = apply(model, ["Conv before output"])
    twice, second = apply(once, ["Conv before logits"])  # now logits is the output and its own anchor
    assert first.changed and not second.changed and twice is once


@pytest.mark.parametrize(
    "outputs, message",
    [
        (None, "needs option 'outputs'"),
        ([], "needs option 'outputs'"),
        ("Conv_1380:0", "matches nothing.*numbered names change with every export"),
        ("w", "is a constant"),
        ("Softmax before output", "op types present: ArgMax, Conv, Resize"),
    ],
)
def test_user_errors(outputs: Any, message: str) -> None:
    with pytest.raises(SegcError, match=message):
        apply(tail_model(), outputs)


# ------------------------------------------------------------------ the seed models
SEED_SHAPE = (1, 3, 128, 256)


@pytest.mark.slow
def test_hrnet_w48_ocr_reproduces_the_seed_cut(seed_onnx) -> None:
    """The guide's Conv_1380:0 / Conv_1453:0, named without exporter numbering.

    In this export the two classifier convolutions already produce output1 and output2 (the
    zoo leaves no tail after them), so the seed's cut is the graph as it is: the selectors
    must find exactly those convolutions, and the pass must report no change.
    """
    model = onnx.load(str(seed_onnx("hrnet_w48_ocr", shape=SEED_SHAPE)))
    graph = gs.import_onnx(model)
    aux = select_nodes(graph, "Conv before output1")
    ocr = select_nodes(graph, "Conv before output2")
    assert len(aux) == len(ocr) == 1
    assert "aux_head" in node_label(aux[0]) and "cls_head" in node_label(ocr[0])
    for conv in (aux[0], ocr[0]):
        assert conv.outputs[0].shape == [1, 19, SEED_SHAPE[2] // 4, SEED_SHAPE[3] // 4]
        assert conv.inputs[1].shape[0] == 19  # 19 Cityscapes classes, a 1x1 classifier
    same, result = PruneOutputs().apply(
        model, PassContext(options={"outputs": "Conv before output1;Conv before output2"})
    )
    assert not result.changed and same is model
    with pytest.raises(SegcError, match="numbered names change with every export"):
        PruneOutputs().apply(model, PassContext(options={"outputs": "Conv_1380:0;Conv_1453:0"}))


@pytest.mark.slow
def test_hrnet_w48_ocr_keep_only_the_auxiliary_classifier(seed_onnx) -> None:
    model = onnx.load(str(seed_onnx("hrnet_w48_ocr", shape=SEED_SHAPE)))
    out, result = PruneOutputs().apply(model, PassContext(options={"outputs": ["Conv before output1"]}))
    assert result.stats["outputs"] == ["output1"] and result.stats["dropped"] == ["output2"]
    ops = {n.op_type for n in out.graph.node}
    assert "Softmax" not in ops and "MatMul" not in ops  # the whole OCR head is gone
    assert result.stats["nodes_removed"] > 50
    feed = {"image": RNG.standard_normal(SEED_SHAPE).astype(np.float32)}
    np.testing.assert_allclose(run_model(out, feed)["output1"], run_model(model, feed)["output1"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_ocrnet_cut_before_resize_and_argmax(seed_onnx) -> None:
    """mmseg's OCRNet ends in resize + argmax: keep both classifiers, as the 3D_HRNet cut did."""
    model = onnx.load(str(seed_onnx("ocrnet_hrnetw18", shape=SEED_SHAPE)))
    selectors = ["Conv before output", "Conv before Softmax[0]"]  # OCR head, then the aux (FCN) head
    out, result = PruneOutputs().apply(model, PassContext(options={"outputs": selectors}))
    kept = result.stats["outputs"]
    assert len(kept) == 2 and result.stats["dropped"] == ["output"]
    assert "decode_head.1" in kept[0] and "decode_head.0" in kept[1]
    assert "ArgMax" not in {n.op_type for n in out.graph.node}
    for _name, elem, dims in outputs_of(out):
        assert elem == TensorProto.FLOAT and (not dims or dims[1] in (0, 19))
    feed = {"x": RNG.standard_normal(SEED_SHAPE).astype(np.float32)}
    before = run_model(with_outputs(model, kept), feed)
    after = run_model(out, feed)
    for name in kept:
        assert after[name].shape == (1, 19, SEED_SHAPE[2] // 4, SEED_SHAPE[3] // 4)
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-5)


def _fused_bias_model(path) -> Any:
    """x -> ConvTranspose "up" -> ct -> Add(bias) -> Sigmoid -> prob.

    onnxsim folds the bias Add into the ConvTranspose and the fused node keeps the output
    name ``ct``: resolved after simplify, 'ConvTranspose before Sigmoid' is the biased sum.
    """
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 2, 2)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((1, 2, 1, 1)).astype(np.float32) * 3, "b")
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["ct"], strides=[2, 2], name="up"),
             helper.make_node("Add", ["ct", "b"], ["biased"]),
             helper.make_node("Sigmoid", ["biased"], ["prob"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 2, 16, 16])], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return m


@pytest.mark.parametrize("mode", ["each", "end"])
@pytest.mark.parametrize("no_prune", [False, True])
def test_a_fusion_that_keeps_the_name_is_caught(tmp_path, mode: str, no_prune: bool) -> None:
    """The kept tensor is compared with the INPUT model's tensor of that name."""
    import json

    from segc.cli import main

    _fused_bias_model(tmp_path / "m.onnx")
    extra = ["--no-prune"] if no_prune else []
    rc = main(["compile", str(tmp_path / "m.onnx"), "--target", "onnxruntime", "--verify", mode,
               "--outputs", "ConvTranspose before Sigmoid", "-o", str(tmp_path / "out"), *extra])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rc == 1 and report["failed_pass"] == "simplify", report["failure"]
    assert "ct" in report["failure"]


def test_skipping_the_fusion_keeps_the_pre_bias_values(tmp_path) -> None:
    import json

    from segc.cli import main
    from segc.verify import expose_tensors

    model = _fused_bias_model(tmp_path / "m.onnx")
    rc = main(["compile", str(tmp_path / "m.onnx"), "--target", "onnxruntime", "--skip", "simplify",
               "--outputs", "ConvTranspose before Sigmoid", "-o", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rc == 0, report["failure"]
    prune = next(p for p in report["passes"] if p["name"] == "prune_outputs")
    assert prune["options"]["outputs"] == ["ct"] and prune["options"]["pinned"] is True
    x = {"x": np.random.default_rng(5).standard_normal((1, 4, 8, 8)).astype(np.float32)}
    out = run_model(onnx.load(tmp_path / "out" / "m.onnxruntime.onnx"), x)
    want = run_model(expose_tensors(model, ["ct"]), x)["ct"]
    np.testing.assert_allclose(out["ct"], want, rtol=1e-5, atol=1e-5)


def test_pin_selectors_resolves_on_the_given_model() -> None:
    from segc.passes.prune_outputs import pin_selectors

    assert pin_selectors(tail_model(), "Conv before output;aux") == ["logits", "aux"]
    with pytest.raises(SegcError, match="constant"):
        pin_selectors(tail_model(), "w")
