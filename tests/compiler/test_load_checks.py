"""What modelio refuses on load, and that the CLI then exits 2 before any pass, even with
``--verify none``: escaping or short external data in any tensor of any graph, and graphs
that are not valid ONNX (a cycle, a name made twice, an output listed twice, a bad node)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.cli import main
from segc.errors import SegcError
from segc.modelio import load_model, load_model_and_files

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])


def _external(tensor: onnx.TensorProto, location: str, offset: int = 0, length: int | None = None) -> onnx.TensorProto:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (
        ("location", location),
        ("offset", str(offset)),
        ("length", None if length is None else str(length)),
    ):
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return tensor


def _add_model(w: onnx.TensorProto) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [X], [Y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _weights() -> onnx.TensorProto:
    return numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), "w")


def _compile_none(path: Path, tmp_path: Path) -> list[str]:
    return [
        "compile",
        str(path),
        "--target",
        "onnxruntime",
        "--passes",
        "cleanup",
        "--verify",
        "none",
        "-o",
        str(tmp_path / "out"),
    ]


def _refused(capsys, argv: list[str], fragment: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("segc: error:") and fragment in err[0], err


def test_escaping_path_inside_an_if_branch_constant(tmp_path: Path, capsys) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    const = _external(_weights(), "../secret.bin")
    branch = helper.make_graph([helper.make_node("Constant", [], ["c"], value=const)], "then", [],
                               [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["d"])], "else", [],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, 4])])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    g = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)], "g", [cond, X], [Y]
    )
    path = folder / "if.onnx"
    path.write_bytes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10).SerializeToString()
    )
    with pytest.raises(SegcError, match="points outside the model's folder"):
        load_model(path)
    _refused(capsys, _compile_none(path, tmp_path), "points outside")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("data_bytes, length, fragment", [
    (8, None, "truncated"),     # file shorter than the tensor: onnx's loader keeps the short read
    (16, 64, "truncated"),      # length beyond the file
    (64, 32, "need 16"),        # length disagrees with the tensor's shape and type
])
def test_short_external_data_is_refused_even_without_verification(tmp_path: Path, capsys, data_bytes: int,
                                                                  length: int | None, fragment: str) -> None:
    (tmp_path / "w.bin").write_bytes(b"\0" * data_bytes)
    path = tmp_path / "ext.onnx"
    path.write_bytes(_add_model(_external(_weights(), "w.bin", length=length)).SerializeToString())
    with pytest.raises(SegcError, match=fragment):
        load_model(path)
    _refused(capsys, _compile_none(path, tmp_path), fragment)
    assert not (tmp_path / "out").exists()


def test_good_external_data_loads_and_is_protected(tmp_path: Path) -> None:
    data = np.arange(4, dtype=np.float32)
    (tmp_path / "w.bin").write_bytes(b"pad!" + data.tobytes())
    path = tmp_path / "ext.onnx"
    path.write_bytes(_add_model(_external(_weights(), "w.bin", offset=4, length=16)).SerializeToString())
    model, files = load_model_and_files(path)
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]).ravel(), data)
    assert files == [path.resolve(), (tmp_path / "w.bin").resolve()]


def _cycle() -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                           helper.make_node("Identity", ["a"], ["y"])], "g", [X], [Y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _made_twice() -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])], "g", [X], [Y]
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _output_twice() -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [X], [Y, Y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _bad_node() -> onnx.ModelProto:  # perm must be ints: onnx.checker rejects the node
    g = helper.make_graph([helper.make_node("Transpose", ["x"], ["y"], perm="oops")], "g", [X], [Y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("build, fragment", [(_cycle, "before any node makes it"), (_made_twice, "made twice"),
                                             (_output_twice, "listed twice"), (_bad_node, "not a valid ONNX graph")])
def test_invalid_graphs_exit_2_before_any_pass(tmp_path: Path, capsys, build, fragment: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(build().SerializeToString())
    _refused(capsys, _compile_none(path, tmp_path), fragment)
    assert not (tmp_path / "out").exists()


def test_outputs_without_a_shape_are_still_valid(tmp_path: Path) -> None:
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [X],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "ok.onnx"
    path.write_bytes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10).SerializeToString()
    )
    model = load_model(path)
    assert not model.graph.output[0].type.tensor_type.HasField("shape")  # the check lent a shape and gave it back


def test_save_model_makes_its_folder(tmp_path: Path) -> None:
    from segc.modelio import save_model

    path = save_model(_add_model(_weights()), tmp_path / "new" / "folder" / "m.onnx")
    assert load_model(path).graph.node[0].op_type == "Add"
