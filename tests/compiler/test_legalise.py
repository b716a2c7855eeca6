"""Legalisation: the target's violations add their fixing passes, or refuse before any pass runs.

Every model is a few nodes built with onnx.helper; compiles run in-process through
``segc.cli.main`` so a whole compile costs seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from segc.cli import main
from segc.errors import SegcError
from tests.graphs import symbolic_chain
from segc.legalise import insert_pass, legalise
from segc.pass_order import check_order
from segc.pipeline import PassSpec
from segc.shapes import parse_shape_range
from segc.targets.ascend import AscendOptions
from segc.targets.base import BuildOptions, get_target


def dynamo_like(opset: int = 20) -> onnx.ModelProto:
    """What torch's dynamo exporter writes for Conv-Relu-upsample: opset 20, Resize-19."""
    w = nh.from_array(np.random.RandomState(0).randn(4, 3, 3, 3).astype(np.float32), "w")
    sc = nh.from_array(np.array([1, 1, 2, 2], np.float32), "sc")
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             h.make_node("Relu", ["c"], ["r"], name="relu"),
             h.make_node("Resize", ["r", "", "sc"], ["y"], mode="nearest", name="up")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 32, 32])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 64, 64])], [w, sc])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=10, producer_name="pytorch")


def deform_model() -> onnx.ModelProto:
    """The standard ONNX DeformConv (opset 19), as a DCN export writes it."""
    rng = np.random.RandomState(0)
    inits = [nh.from_array(rng.randn(4, 3, 3, 3).astype(np.float32), "w"),
             nh.from_array(rng.randn(18, 3, 3, 3).astype(np.float32) * 0.1, "ow")]
    nodes = [
        h.make_node("Conv", ["x", "ow"], ["off"], pads=[1, 1, 1, 1], name="offset"),
        h.make_node(
            "DeformConv", ["x", "w", "off"], ["y"], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], name="dcn"
        ),
    ]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 16, 16])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 16, 16])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 19)], ir_version=9)


def op_chain(ops: list[str], dims=(1, 3, 8, 8), opset: int = 17) -> onnx.ModelProto:
    """x -> op1 -> op2 -> ... -> y, each unary."""
    nodes, prev = [], "x"
    for i, op in enumerate(ops):
        out = "y" if i == len(ops) - 1 else f"t{i}"
        nodes.append(h.make_node(op, [prev], [out], name=f"{op.lower()}_{i}"))
        prev = out
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, list(dims))],
                     [h.make_tensor_value_info("y", T.FLOAT, None)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=10)


def save(model: onnx.ModelProto, tmp_path: Path, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, path)
    return path


def compile_ok(capsys, argv: list[str]) -> tuple[dict, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    out = Path(argv[argv.index("-o") + 1])
    return json.loads((out / "report.json").read_text()), err


def refused(capsys, argv: list[str]) -> str:
    """Exit 2 with one error line, before any pass ran and before anything was written."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "[1/" not in err, f"a pass ran before the error: {err}"
    lines = [line for line in err.splitlines() if line.startswith("segc: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    if "-o" in argv:
        assert not Path(argv[argv.index("-o") + 1]).exists(), "nothing may be written for a refused compile"
    return lines[0]


# ------------------------------------------------------------------ end to end: legalised now


def test_dynamo_opset20_is_legalised_for_ascend(tmp_path: Path, capsys) -> None:
    src = save(dynamo_like(), tmp_path)
    out = tmp_path / "out"
    report, err = compile_ok(capsys, ["compile", str(src), "--target", "ascend", "-o", str(out)])
    added = report["legalisation"]["added"]
    assert [a["pass"] for a in added] == ["convert_opset"] and added[0]["options"] == {"version": 18}
    assert "opset 20" in added[0]["reason"] and "added pass convert_opset" in err
    assert "convert_opset" in (out / "report.md").read_text()
    result = onnx.load(out / "m.ascend.onnx")
    assert [o.version for o in result.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert [p["name"] for p in report["passes"]] == ["simplify", "resize_broadcast", "convert_opset", "cleanup"]


def test_symbolic_resize_chain_static_build_is_legalised_for_ascend(tmp_path: Path, capsys) -> None:
    src = save(symbolic_chain(), tmp_path)
    out = tmp_path / "out"
    report, _ = compile_ok(
        capsys, ["compile", str(src), "--target", "ascend", "--input-shape", "x:1,3,32,48", "-o", str(out)]
    )
    assert report["legalisation"]["added"][0]["pass"] == "fix_input_shapes"
    assert [p["name"] for p in report["passes"]][:2] == ["fix_input_shapes", "simplify"]
    result = onnx.load(out / "m.ascend.onnx")
    assert {n.op_type for n in result.graph.node} == {"Resize"}, "the shape chain must be folded away"
    assert [d.dim_value for d in result.graph.output[0].type.tensor_type.shape.dim] == [1, 3, 64, 96]


def test_ranged_symbolic_chain_gets_fold_resize_scales(tmp_path: Path, capsys) -> None:
    src = save(symbolic_chain(), tmp_path)
    out = tmp_path / "out"
    report, _ = compile_ok(capsys, ["compile", str(src), "--target", "ascend", "--input-shape", "x:1,3,32~64,32~64",
                                    "--verify", "end", "-o", str(out)])
    assert "fold_resize_scales" in [a["pass"] for a in report["legalisation"]["added"]]
    names = [p["name"] for p in report["passes"]]
    assert names.index("fold_resize_scales") < names.index("set_shape_range") < names.index("cleanup")


def test_user_passes_list_names_the_missing_pass(tmp_path: Path, capsys) -> None:
    src = save(dynamo_like(), tmp_path)
    line = refused(
        capsys, ["compile", str(src), "--target", "ascend", "--passes", "simplify,cleanup", "-o", str(tmp_path / "o")]
    )
    assert "needs pass convert_opset" in line and "--passes" in line and "opset 20" in line
    line = refused(
        capsys, ["compile", str(src), "--target", "ascend", "--skip", "convert_opset", "-o", str(tmp_path / "o")]
    )
    assert "needs pass convert_opset" in line and "--skip" in line


def test_unfixable_op_is_refused_before_any_pass(tmp_path: Path, capsys) -> None:
    src = save(op_chain(["Relu", "Det"]), tmp_path)
    line = refused(capsys, ["compile", str(src), "--target", "tensorrt", "-o", str(tmp_path / "o")])
    assert "det_1 [Det]" in line and "no segc pass replaces this op" in line


def test_unconfirmed_ops_warn_grouped_and_compile(tmp_path: Path, capsys) -> None:
    """MagicMind's list is partial: unlisted ops are a warning with counts, never a refusal."""
    src = save(op_chain(["Erf", "Erf", "Erf", "Tanh"]), tmp_path)
    out = tmp_path / "out"
    report, err = compile_ok(capsys, ["compile", str(src), "--target", "magicmind", "-o", str(out)])
    warning = (
        "Erf x3, Tanh x1 (unconfirmed: not in segc's partial Cambricon MagicMind list; "
        "--allow-unlisted-ops silences this)"
    )
    assert warning in report["legalisation"]["warnings"]
    assert warning in (out / "report.md").read_text()
    assert err.count("Erf x3") == 2  # once before the passes, once in the summary; never per node
    quiet, err = compile_ok(
        capsys, ["compile", str(src), "--target", "magicmind", "--allow-unlisted-ops", "-o", str(tmp_path / "q")]
    )
    assert quiet["legalisation"]["warnings"] == [] and "unconfirmed:" not in err


def test_paddleocr_dbnet_ops_are_listed_for_magicmind() -> None:
    from segc.targets.legality import load_profile

    assert {"Clip", "Div", "HardSigmoid"} <= load_profile("magicmind").ops


# ------------------------------------------------------------------ planner unit tests


def test_deform_model_for_ascend_gets_rewrite_then_opset_16() -> None:
    specs = [PassSpec("simplify"), PassSpec("cleanup")]
    plan = legalise(
        deform_model(), get_target("ascend"), BuildOptions(), specs, user_passes=False, skipped=set(), static_cli={}
    )
    assert [s.name for s in plan.specs] == ["simplify", "rewrite_deform_conv", "convert_opset", "cleanup"]
    assert plan.specs[1].options == {"form": "ascend"}
    assert plan.specs[2].options == {"version": 16}, "ATC parses DeformableConv2D only up to opset 16"


def test_insert_pass_follows_the_declared_order() -> None:
    specs = [PassSpec("simplify"), PassSpec("fold_resize_scales"), PassSpec("set_shape_range"), PassSpec("cleanup")]
    insert_pass(specs, PassSpec("convert_opset"))
    insert_pass(specs, PassSpec("fix_input_shapes"))
    assert [s.name for s in specs] == [
        "fix_input_shapes",
        "simplify",
        "fold_resize_scales",
        "set_shape_range",
        "convert_opset",
        "cleanup",
    ]
    check_order([s.name for s in specs])


def test_nothing_added_for_a_legal_model() -> None:
    specs = [PassSpec("simplify"), PassSpec("cleanup")]
    plan = legalise(
        dynamo_like(opset=17),
        get_target("ascend"),
        BuildOptions(),
        specs,
        user_passes=False,
        skipped=set(),
        static_cli={},
    )
    assert plan.added == [] and [s.name for s in plan.specs] == ["simplify", "cleanup"]


def test_range_the_vendor_cannot_build_is_refused_with_the_fix() -> None:
    opts = BuildOptions(target=AscendOptions(soc="Ascend310"), shape_ranges=[parse_shape_range("x:1,3,32~64,32~64")])
    with pytest.raises(SegcError, match=r"give static shapes: --input-shape"):
        legalise(
            symbolic_chain(),
            get_target("ascend"),
            opts,
            [PassSpec("simplify"), PassSpec("set_shape_range", {"ranges": ["x:1,3,32~64,32~64"]})],
            user_passes=False,
            skipped=set(),
            static_cli={},
        )


# ------------------------------------------------------------------------------- errors before work


@pytest.mark.parametrize("extra, fragment", [
    (["--batch", "1,4", "--input-shape", "x:1~8,3,32,32"], "contradict"),
    (["--target", "onnxruntime", "--precision", "int8"], "does not quantise"),
    (["--option", "resize_to_nearest.select=Resize"], "not in the pipeline"),
    (["--pixel-budget", "-5"], "--pixel-budget must be a positive"),
    (["--target", "magicmind", "--precision", "int8"], "needs calibration images"),
    (["--target", "tensorrt", "--workspace-mb", "0"], "--workspace-mb must be positive"),
    (["--target", "ascend", "--cann-version", "banana"], "malformed CANN version"),
    (["--outputs", "zzz", "--no-prune"], "zzz"),
    (["--nearest-resize", "nosuchnode"], "nosuchnode"),
    (["--input-shape", "x:1,3,abc,4"], "malformed --input-shape"),
    (["--option", "simplify.nosuchoption=1"], "no option nosuchoption"),
])
def test_bad_input_is_refused_before_any_pass(tmp_path: Path, capsys, extra, fragment) -> None:
    src = save(dynamo_like(opset=17), tmp_path)
    argv = ["compile", str(src), "-o", str(tmp_path / "o")]
    if "--target" not in extra:
        argv += ["--target", "ascend"]
    assert fragment in refused(capsys, argv + extra)


def test_dynamic_model_needs_a_shape_for_vendor_targets_up_front(tmp_path: Path, capsys) -> None:
    src = save(op_chain(["Relu"], dims=("N", 3, "H", "W")), tmp_path)
    line = refused(capsys, ["compile", str(src), "--target", "ascend", "-o", str(tmp_path / "o")])
    assert "--input-shape x:" in line and "dynamic" in line


def test_dynamic_model_compiles_for_onnxruntime_without_a_shape(tmp_path: Path, capsys) -> None:
    src = save(op_chain(["Relu", "Sigmoid"], dims=("N", 3, "H", "W")), tmp_path)
    report, _ = compile_ok(capsys, ["compile", str(src), "--target", "onnxruntime", "-o", str(tmp_path / "o")])
    assert report["status"] == "ok" and report["verified_shapes"]


def test_another_targets_flag_is_a_usage_error(tmp_path: Path, capsys) -> None:
    src = save(dynamo_like(opset=17), tmp_path)
    out = ["-o", str(tmp_path / "o")]
    line = refused(capsys, ["compile", str(src), "--target", "tensorrt", "--cann-version", "8.0", *out])
    assert line == "segc: error: --cann-version is an option of target ascend, not of tensorrt"
    line = refused(capsys, ["compile", str(src), "--target", "tensorrt", "--soc", "Ascend910B", *out])
    assert line == "segc: error: --soc is an option of target ascend and magicmind, not of tensorrt"
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ inspect


def test_inspect_counts_weights_held_in_constant_nodes(tmp_path: Path, capsys) -> None:
    """paddle2onnx stores weights as Constant nodes; they are parameters too (ints are not)."""
    w = nh.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [h.make_node("Constant", [], ["w"], value=w, name="wconst"),
             h.make_node("Constant", [], ["axes"], value=nh.from_array(np.array([0, 1], np.int64)), name="axes"),
             h.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)])
    src = save(h.make_model(g, opset_imports=[h.make_opsetid("", 11)], ir_version=8), tmp_path)
    assert main(["inspect", str(src), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 108
    assert main(["inspect", str(src)]) == 0
    assert "108 parameters" in capsys.readouterr().out


def test_inspect_prints_each_violation_kind_once(tmp_path: Path, capsys) -> None:
    src = save(op_chain(["Erf"] * 5 + ["Tanh"]), tmp_path)
    assert main(["inspect", str(src), "--target", "magicmind"]) == 0
    out = capsys.readouterr().out
    assert out.count("unconfirmed") == 1 and "Erf x5, Tanh x1" in out and "--allow-unlisted-ops" in out
    src = save(dynamo_like(), tmp_path, "d.onnx")
    assert main(["inspect", str(src), "--target", "ascend"]) == 0
    out = capsys.readouterr().out
    assert "opset 20" in out and "(fixed by pass convert_opset)" in out and "segc compile adds the fixing passes" in out


def test_final_gate_says_what_a_fix_that_ran_reported(tmp_path: Path, capsys) -> None:
    """floor(1.5 * h) is not a fixed multiple of h: fold_resize_scales runs, cannot fold, says why."""
    inits = [nh.from_array(np.array([1.5, 1.5], np.float32), "k"), nh.from_array(np.array([2, 3], np.int64), "idx"),
             nh.from_array(np.array([1, 3], np.int64), "nc")]
    nodes = [h.make_node("Shape", ["x"], ["s"]), h.make_node("Gather", ["s", "idx"], ["hw"], axis=0),
             h.make_node("Cast", ["hw"], ["hwf"], to=T.FLOAT), h.make_node("Mul", ["hwf", "k"], ["m"]),
             h.make_node("Floor", ["m"], ["f"]), h.make_node("Cast", ["f"], ["fi"], to=T.INT64),
             h.make_node("Concat", ["nc", "fi"], ["sizes"], axis=0),
             h.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest", name="up")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, "h", "w"])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    src = save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8), tmp_path)
    # under a plain range no proof exists: Ascend falls back to static gears, and says so
    code = main(["compile", str(src), "--target", "ascend", "--input-shape", "x:1,3,32~64,32~64", "--verify", "none",
                 "-o", str(tmp_path / "o")])
    capsys.readouterr()
    assert code == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert "gear" in report["build"]["target_options"]["shape_route"]
    assert "--dynamic_image_size=" in (tmp_path / "o" / "build.sh").read_text()


def test_final_gate_quotes_the_fix_that_ran() -> None:
    """A refusal whose fix already ran says what that pass reported, never "(fixed by pass X)"."""
    from segc.legalise import final_gate_lines
    from segc.pipeline import PassRecord, PipelineResult
    from segc.targets.base import Violation

    record = PassRecord(
        0, "fold_resize_scales", "exact", {}, status="unchanged", notes=["left Resize 'up': sizes[2] = ?"]
    )
    result = PipelineResult(model=onnx.ModelProto(), records=[record], verify_mode="none")
    v = Violation("up", "Resize", "Resize scales/sizes computed at run time", fixed_by="fold_resize_scales")
    [line] = final_gate_lines([v], result)
    assert "pass fold_resize_scales ran and could not fix it: left Resize 'up'" in line
    assert "(fixed by pass fold_resize_scales)" not in line


def test_single_batch_fixes_a_symbolic_batch(tmp_path: Path, capsys) -> None:
    src = save(op_chain(["Relu", "Sigmoid"], dims=("N", 3, 8, 8)), tmp_path)
    out = tmp_path / "o"
    report, _ = compile_ok(capsys, ["compile", str(src), "--target", "tensorrt", "--batch", "4", "-o", str(out)])
    added = report["legalisation"]["added"]
    assert added[0]["pass"] == "fix_input_shapes" and added[0]["options"] == {"shapes": ["x:4,-1,-1,-1"]}
    assert "--batch 4" in added[0]["reason"]
    model = onnx.load(out / "m.tensorrt.onnx")
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [4, 3, 8, 8]
    # several batch sizes are several builds of one graph: the batch stays symbolic
    report, _ = compile_ok(
        capsys, ["compile", str(src), "--target", "ascend", "--batch", "1,4", "-o", str(tmp_path / "o2")]
    )
    assert report["legalisation"]["added"] == []


def test_allow_unlisted_ops_on_a_complete_list_is_a_warning(tmp_path: Path, capsys) -> None:
    src = save(dynamo_like(opset=17), tmp_path)
    _, err = compile_ok(
        capsys, ["compile", str(src), "--target", "tensorrt", "--allow-unlisted-ops", "-o", str(tmp_path / "o")]
    )
    assert "--allow-unlisted-ops does nothing for tensorrt" in err


def test_batch_sizes_on_a_batch_1_export_add_a_batch_range(tmp_path: Path, capsys) -> None:
    """The graph fixes batch 1, the build asks for 1 and 4: set_shape_range frees the batch."""
    src = save(dynamo_like(opset=17), tmp_path)
    out = tmp_path / "o"
    report, _ = compile_ok(capsys, ["compile", str(src), "--target", "ascend", "--batch", "1,4", "-o", str(out)])
    added = report["legalisation"]["added"]
    assert [a["pass"] for a in added] == ["set_shape_range"] and added[0]["options"] == {"ranges": ["x:1~4,3,32,32"]}
    assert "fixes the batch at 1" in added[0]["reason"]
    script = (out / "build.sh").read_text()
    assert "--input_shape=x:4,3,32,32" in script and "--input_shape=x:1,3,32,32" in script


def test_an_error_inside_a_pass_starts_its_own_line(tmp_path: Path, capsys) -> None:
    """A pass that refuses the graph: the progress line is closed first, never glued to what follows;
    the run stops there with exit 1 and a report naming the pass."""
    src = save(dynamo_like(opset=17), tmp_path)
    code = main(["compile", str(src), "--target", "onnxruntime", "--passes", "expand_functions", "--verify", "none",
                 "--option", "expand_functions.ops=Conv", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "[1/1] expand_functions ... error\n" in err, err
    assert "FAILED: pass expand_functions refused the graph: expand_functions: onnx defines no function body for Conv" \
        in err, err
    assert (tmp_path / "o" / "report.json").is_file()


def test_a_required_option_left_out_is_refused_before_any_pass(tmp_path: Path, capsys) -> None:
    """convert_opset without its version: one usage line before the first pass, nothing written."""
    src = save(dynamo_like(opset=17), tmp_path)
    code = main(["compile", str(src), "--target", "onnxruntime", "--passes", "convert_opset", "--verify", "none",
                 "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("segc: error: pass convert_opset needs option version"), err
    assert "[1/1]" not in err and not (tmp_path / "o").exists()


def test_static_input_shape_replaces_a_planned_range() -> None:
    """A recipe ranges x (as DBNet's does); a static --input-shape wins, so the chains can fold."""
    static = parse_shape_range("x:1,3,32,48")
    specs = [
        PassSpec("simplify"),
        PassSpec("fold_resize_scales"),
        PassSpec("set_shape_range", {"ranges": ["x:1,3,32~64,32~64"], "opt": ["x:1,3,48,48"]}),
        PassSpec("cleanup"),
    ]
    plan = legalise(symbolic_chain(), get_target("ascend"), BuildOptions(shape_ranges=[static]), specs,
                    user_passes=False, skipped=set(), static_cli={"x": static})
    assert [s.name for s in plan.specs] == ["fix_input_shapes", "simplify", "fold_resize_scales", "cleanup"]
    assert plan.specs[0].options == {"shapes": ["x:1,3,32,48"]}
    assert plan.notes == ["--input-shape x:1,3,32,48 replaces the planned range x:1,3,32~64,32~64; "
                          "pass set_shape_range is not needed and was left out"]
    # with the user's own --passes the plan is theirs: nothing removed, nothing added
    mine = legalise(
        symbolic_chain(),
        get_target("ascend"),
        BuildOptions(shape_ranges=[static]),
        [
            PassSpec("simplify"),
            PassSpec("fold_resize_scales"),
            PassSpec("set_shape_range", {"ranges": ["x:1,3,32~64,32~64"]}),
        ],
        user_passes=True,
        skipped=set(),
        static_cli={"x": static},
    )
    assert mine.notes == [] and mine.added == [] and len(mine.specs) == 3
