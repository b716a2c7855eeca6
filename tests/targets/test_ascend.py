"""Ascend target: the exact atc argv for each seed situation, and the user errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import onnx
import pytest

from segc.errors import SegcError
from segc.targets.ascend import (
    DEFAULT_SOC,
    KNOWN_SOCS,
    parse_cann_version,
    precision_mode,
)
from segc.targets.ascend import AscendOptions, ascend_options
from segc.targets.base import get_target
from segc.targets.buildscript import parse_steps


def _emit(model: onnx.ModelProto, outdir: Path, opts, stem: str = "m") -> list[list[str]]:
    path = outdir / f"{stem}.ascend.onnx"
    onnx.save(model, path)
    arts = get_target("ascend").emit(model, path, outdir, opts)
    assert [a.kind for a in arts] == ["script", "program", "script"]  # build.sh, run_device.py, run.sh
    return parse_steps((outdir / "build.sh").read_text())


def test_ocrnet_seed_one_om_per_batch_size(tmp_path: Path, conv_model, options) -> None:
    """OCRNet W18 guide: static NCHW builds at batch 1, 4, 8, 16, fp16."""
    model = conv_model(dims=("N", 3, 1024, 2048))
    argvs = _emit(
        model, tmp_path, options("x:1,3,1024,2048", batch_sizes=(1, 4, 8, 16), precision="fp16"), stem="ocrnet"
    )
    assert argvs == [
        ["atc", "--framework=5", "--model=ocrnet.ascend.onnx", f"--output=ocrnet.ascend_bs{b}", "--input_format=NCHW",
         f"--input_shape=x:{b},3,1024,2048", "--soc_version=Ascend310P3", "--precision_mode=force_fp16", "--log=error"]
        for b in (1, 4, 8, 16)
    ]


def test_single_batch_keeps_the_stem(tmp_path: Path, conv_model, options) -> None:
    argvs = _emit(conv_model(dims=(1, 3, 512, 1024)), tmp_path, options(batch_sizes=(1,)))
    assert argvs[0][3] == "--output=m.ascend"
    assert argvs[0][5] == "--input_shape=x:1,3,512,1024"  # from the model's own static shape


def test_dbnet_seed_shape_range_newest_cann(tmp_path: Path, conv_model, options) -> None:
    argvs = _emit(
        conv_model(name="input"), tmp_path, options("input:1,3,640~4096,640~4096", opt=(1, 3, 1280, 1280)), stem="dbnet"
    )
    assert argvs == [["atc", "--framework=5", "--model=dbnet.ascend.onnx", "--output=dbnet.ascend", "--input_format=ND",
                      "--input_shape=input:1,3,640~4096,640~4096", "--soc_version=Ascend310P3",
                      "--precision_mode=must_keep_origin_dtype", "--log=error"]]


@pytest.mark.parametrize("cann, flag", [
    ("5.1.RC2", "--input_shape_range=input:[1,3,640~4096,640~4096]"),
    ("6.0.1", "--input_shape_range=input:[1,3,640~4096,640~4096]"),
    ("6.3.RC2", "--input_shape=input:1,3,640~4096,640~4096"),
    ("8.0.RC3", "--input_shape=input:1,3,640~4096,640~4096"),
])
def test_range_syntax_follows_cann(tmp_path: Path, conv_model, options, cann, flag) -> None:
    argvs = _emit(
        conv_model(name="input"),
        tmp_path,
        options("input:1,3,640~4096,640~4096", target=AscendOptions(cann_version=cann)),
    )
    assert argvs[0][5] == flag


def test_old_cann_static_shape_stays_input_shape(tmp_path: Path, conv_model, options) -> None:
    argvs = _emit(conv_model(), tmp_path, options("x:1,3,64,64", target=AscendOptions(cann_version="5.0.4")))
    assert argvs[0][5] == "--input_shape=x:1,3,64,64"


def test_cann_version_parsing() -> None:
    assert parse_cann_version("6.3.RC2") == (6, 3)
    assert parse_cann_version("8.0.0.alpha001") == (8, 0)
    assert parse_cann_version(None) > (9, 0)
    with pytest.raises(SegcError, match="malformed CANN version 'latest'"):
        parse_cann_version("latest")


def test_out_nodes_from_tensor_names(tmp_path: Path, conv_model, options) -> None:
    """3D_HRNet: outputs chosen, not pruned -> ATC's node:index from the current graph."""
    argvs = _emit(conv_model(dims=(1, 3, 64, 64)), tmp_path, options(outputs=["c", "relu1:0"]))
    assert argvs[0][-1] == "--out_nodes=conv1:0;relu1:0"


def test_out_nodes_errors(tmp_path: Path, conv_model, options) -> None:
    with pytest.raises(SegcError, match="'Conv_1380:0' is neither a tensor nor NODE:INDEX"):
        _emit(conv_model(dims=(1, 3, 64, 64)), tmp_path, options(outputs=["Conv_1380:0"]))
    model = conv_model(dims=(1, 3, 64, 64))
    model.graph.node[0].name = ""
    with pytest.raises(SegcError, match="producing 'c' has no name"):
        _emit(model, tmp_path, options(outputs=["c"]))


def test_soc_checked(tmp_path: Path, conv_model, options) -> None:
    assert DEFAULT_SOC == "Ascend310P3" and {"Ascend310", "Ascend910B", "Ascend910B3"} <= set(KNOWN_SOCS)
    argvs = _emit(conv_model(dims=(1, 3, 64, 64)), tmp_path, options(target=AscendOptions(soc="Ascend910B3")))
    assert "--soc_version=Ascend910B3" in argvs[0]
    with pytest.raises(SegcError, match=r"unknown Ascend chip 'Ascend999'; known: Ascend310, "):
        get_target("ascend").check(conv_model(), options(target=AscendOptions(soc="Ascend999")))


@pytest.mark.parametrize(
    "precision, soc, deform, mode",
    [
        ("fp16", "Ascend310P3", False, "force_fp16"),
        ("fp32", "Ascend310P3", False, "must_keep_origin_dtype"),
        ("fp32", "Ascend910B2", False, "must_keep_origin_dtype"),
        ("fp32", "Ascend310", False, "force_fp32"),
        ("fp32", "Ascend310B1", False, "force_fp32"),
        ("fp32", "Ascend310P3", True, "force_fp32"),
    ],
)
def test_precision_mode(conv_model, deform_model, precision, soc, deform, mode) -> None:
    model = deform_model(op="DeformableConv2D", opset=16) if deform else conv_model()
    assert precision_mode(precision, soc, model) == mode


def test_int8_points_to_amct(tmp_path: Path, conv_model, options) -> None:
    opts = options("x:1,3,64,64", precision="int8")
    with pytest.raises(SegcError, match="AMCT"):
        get_target("ascend").check(conv_model(), opts)
    with pytest.raises(SegcError, match="AMCT"):
        _emit(conv_model(), tmp_path, opts)


def test_no_ranges_on_ascend310(tmp_path: Path, conv_model, options) -> None:
    opts = options("x:1,3,64~128,64~128", target=AscendOptions(soc="Ascend310"))
    found = get_target("ascend").check(conv_model(), opts)
    assert [(v.node, v.op) for v in found] == [("<model>", "input")] and "Ascend310 cannot build" in found[0].reason
    with pytest.raises(SegcError, match="Ascend310 cannot build for a shape range"):
        _emit(conv_model(), tmp_path, opts)


def test_dynamic_input_without_shape(tmp_path: Path, conv_model, options) -> None:
    with pytest.raises(SegcError, match=r"needs a shape for input 'x'.*--input-shape x:N,C,H,W"):
        _emit(conv_model(), tmp_path, options())


def test_input_format_override(tmp_path: Path, conv_model, options) -> None:
    argvs = _emit(conv_model(), tmp_path, options("x:1,3,64,64", target=AscendOptions(input_format="ND")))
    assert "--input_format=ND" in argvs[0]
    with pytest.raises(SegcError, match="--input-format NHWC: ATC takes NCHW, NCDHW or ND for an ONNX model"):
        ascend_options({"input_format": "NHWC"})


def test_build_sh_in_awkward_folder(nasty_dir: Path, conv_model, options, bash_syntax_ok, fake_tools, fake_log) -> None:
    """bash parses the script into exactly the argv segc meant, whatever the folder is called."""
    argvs = _emit(conv_model(), nasty_dir, options("x:1,3,64~128,64~128", batch_sizes=(1, 2)))
    bash_syntax_ok(nasty_dir / "build.sh")
    env, log = fake_tools("atc")
    proc = subprocess.run(["bash", str(nasty_dir / "build.sh")], capture_output=True, text=True, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert fake_log(log) == argvs and len(argvs) == 2
    assert argvs[1][5] == "--input_shape=x:2,3,64~128,64~128"


def test_build_sh_without_atc(tmp_path: Path, conv_model, options) -> None:
    _emit(conv_model(), tmp_path, options("x:1,3,64,64"))
    proc = subprocess.run(
        ["bash", str(tmp_path / "build.sh")], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert proc.returncode == 127
    assert proc.stderr.startswith("build.sh: atc not found (install the CANN toolkit")


def test_header_names_input_and_command(tmp_path: Path, conv_model, options) -> None:
    _emit(
        conv_model(),
        tmp_path,
        options("x:1,3,64,64", input_sha256="f" * 64, command_line="segc compile 'a b.onnx' --target ascend"),
    )
    text = (tmp_path / "build.sh").read_text()
    assert "# input model sha256: " + "f" * 64 in text
    assert "# command line: segc compile 'a b.onnx' --target ascend" in text


def _scalar_and_image_model(with_image: bool) -> onnx.ModelProto:
    """``s`` a scalar input (shape ``[]``), optionally beside an image ``x``; no inputs at all
    when both are left out is covered by test_no_inputs_gets_no_shape_flag."""
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])]
    nodes = [helper.make_node("Relu", ["s"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])]
    if with_image:
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]))
        nodes.append(helper.make_node("Mul", ["x", "s"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 8, 8]))
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("batch", [(), (1, 2)])
def test_scalar_input_is_left_out_of_input_shape(tmp_path: Path, options, batch) -> None:
    """ATC: a scalar's --input_shape entry is optional outside gear builds, and a static model
    needs no --input_shape: never a bare ``--input_shape=s:`` (and --batch skips the scalar)."""
    argvs = _emit(_scalar_and_image_model(False), tmp_path, options(batch_sizes=batch))
    assert argvs and all(not a.startswith(("--input_shape", "--input_shape_range")) for argv in argvs for a in argv)
    argvs = _emit(_scalar_and_image_model(True), tmp_path, options(batch_sizes=batch))
    want = ["--input_shape=x:1,3,8,8"] if not batch else [f"--input_shape=x:{b},3,8,8" for b in batch]
    assert [[a for a in argv if a.startswith("--input_shape")] for argv in argvs] == [[w] for w in want]


def test_no_inputs_gets_no_shape_flag(tmp_path: Path, options) -> None:
    import numpy as np
    from onnx import TensorProto, helper

    value = helper.make_tensor("v", TensorProto.FLOAT, [1, 3, 4, 4], np.ones(48, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=value), helper.make_node("Relu", ["c"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (argv,) = _emit(model, tmp_path, options())
    assert not [a for a in argv if a.startswith("--input_shape")]


def test_unknown_rank_input_still_needs_a_shape(tmp_path: Path, options) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)  # no shape at all: not a scalar
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    with pytest.raises(SegcError, match="needs a shape for input 'x'"):
        _emit(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path, options())
