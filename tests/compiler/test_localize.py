"""``segc verify --localize``: the first divergent node is the perturbed one, none before it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from segc.cli import main
from segc.localize import localize, shared_tensors
from segc.verify_inputs import Feed


def chain(perturb: str | None = None) -> onnx.ModelProto:
    """x -> conv1 -> relu1 -> conv2 -> relu2 -> conv3 -> y; ``perturb`` scales one conv's weight."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev = "x"
    for i in (1, 2, 3):
        w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3
        if perturb == f"conv{i}":
            w = w * 1.01
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        out = "y" if i == 3 else f"r{i}"
        if i < 3:
            nodes.append(helper.make_node("Relu", [f"c{i}"], [out], name=f"relu{i}"))
        prev = out if i < 3 else f"c{i}"
    nodes.append(helper.make_node("Identity", ["c3"], ["y"], name="out"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feed() -> Feed:
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    return Feed(label="x:1,4,8,8", arrays={"x": x})


def test_perturbed_node_is_first_and_nothing_before_it() -> None:
    ref, cand = chain(), chain("conv2")
    assert shared_tensors(ref, cand) == ["c1", "r1", "c2", "r2", "c3", "y"]
    loc = localize(ref, cand, feed())
    assert loc.first_divergence is not None and loc.first_divergence.node == "conv2"
    before = [t for t in loc.tensors if t.index < loc.first_divergence.index]
    assert before and not any(t.diverges for t in before)
    assert {t.node for t in loc.worst} <= {"conv2", "relu2", "conv3", "out"}


def test_identical_graphs_have_no_divergence() -> None:
    loc = localize(chain(), chain(), feed())
    assert loc.first_divergence is None and loc.compared == 6


def test_cli_json(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(chain(), a)
    onnx.save(chain("conv3"), b)
    assert main(["verify", str(a), str(b), "--localize", "--json", "--top", "2"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["first_divergence"]["node"] == "conv3"
    assert set(out["first_divergence"]) >= {"node", "cosine", "max_abs"}
    assert len(out["worst"]) == 2
    assert main(["verify", str(a), str(a), "--localize"]) == 0
    assert "no shared tensor diverges" in capsys.readouterr().out
    assert main(["verify", str(a), str(b), "--localize", "--top", "0"]) == 2
