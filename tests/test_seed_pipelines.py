"""The five seed pipelines end to end: export small, ``segc compile`` in-process, check the result.

Each guide (docs/seed_pipelines.md) exported a model, edited the graph with a one-off
script and ran a vendor compiler. These tests run the same pipelines through segc with the
models' recipes (found from the exported model's metadata, never named on the command line)
and assert, from ``OUT/report.json``, the compiled ONNX model and the argv of ``build.sh``, that
the recipe reproduces the seed's edit and that every pass passed verification:

    ocrnet_hrnetw18  -> ascend     branch Resizes linear -> nearest, argmax kept, approximate budget
    hrnet_w48_ocr    -> ascend     3 branch Resizes nearest, outputs = the two classifier convs
    deeplabv2_r101   -> ascend     no edit beyond simplify/cleanup, two outputs, one atc per batch
    dbnet_r50        -> ascend     shape chains folded, range 640~4096 stored, ND + range for atc
                     -> tensorrt   the same through --verify end; trtexec profile 640/1280/4096
    dbnet_r50_dcn    -> ascend     DeformableConv2D (NCHW), still a ranged build
                     -> tensorrt   ONNX DeformConv kept
                     -> magicmind  deformable conv decomposed into standard ops

Models are exported at small spatial sizes (the architectures are full size), so the whole
file runs in a few minutes on two cores. Each compile runs once (module fixtures) and several
tests read its result.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest

from segc.cli import main
from segc.recipe import get_recipe
from segc.targets.buildscript import parse_steps

pytestmark = pytest.mark.slow

#: Small but full-architecture export shape for the HRNets and DeepLabv2 (H, W multiples of 32).
SMALL = (1, 3, 128, 256)
#: DBNet is exported dynamic in H and W; the example size only drives tracing.
DB_EXAMPLE = (1, 3, 128, 128)
DB_RANGE = "input:1,3,640~4096,640~4096"
#: DBNet's verification range starts at 640x640 and the verifier adds the optimum (1280x1280)
#: and a step past the minimum. A pixel budget keeps the file fast: the Ascend compiles check
#: the minimum and 672x704 (two sizes of the range), the others the minimum only.
TWO_SHAPE_BUDGET = ["--pixel-budget", str(672 * 704)]
MIN_SHAPE_BUDGET = ["--pixel-budget", str(640 * 640)]


@dataclass
class Build:
    """One in-process ``segc compile``: exit status, report.json, and what it wrote."""

    status: int
    outdir: Path
    stderr: str

    @cached_property
    def report(self) -> dict[str, Any]:
        return json.loads((self.outdir / "report.json").read_text(encoding="utf-8"))

    @cached_property
    def model(self) -> onnx.ModelProto:
        """The compiled model (ONNX written next to build.sh)."""
        found = [a["path"] for a in self.report["artefacts"] if a["kind"] == "model"]
        assert len(found) == 1, self.report["artefacts"]
        return onnx.load(found[0])

    @cached_property
    def steps(self) -> list[list[str]]:
        return parse_steps((self.outdir / "build.sh").read_text(encoding="utf-8"))

    def tool(self, name: str) -> list[list[str]]:
        """The argv of every build.sh step that runs ``name``."""
        return [argv for argv in self.steps if argv and argv[0] == name]

    def record(self, pass_name: str) -> dict[str, Any]:
        (rec,) = [p for p in self.report["passes"] if p["name"] == pass_name]
        return rec

    @property
    def pass_names(self) -> list[str]:
        return [p["name"] for p in self.report["passes"]]


Compile = Callable[..., Build]


@pytest.fixture(scope="module")
def compile_model(tmp_path_factory: pytest.TempPathFactory) -> Compile:
    """``compile_model(path, target, *flags) -> Build``, through ``segc.cli.main`` in-process."""
    import sys
    from io import StringIO

    def run(path: Path, target: str, *flags: str) -> Build:
        out = tmp_path_factory.mktemp(f"{path.stem}.{target}")
        saved, sys.stderr = sys.stderr, StringIO()
        try:
            status = main(["compile", str(path), "--target", target, "-o", str(out), *flags])
            err = sys.stderr.getvalue()
        finally:
            sys.stderr = saved
        return Build(status, out, err)

    return run


def flag(argv: list[str], name: str) -> str | None:
    """The value of ``--name=value`` in an argv (None if absent)."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    assert len(values) <= 1, argv
    return values[0] if values else None


def resize_modes(model: onnx.ModelProto) -> dict[str, str]:
    """Resize node name -> mode (Resize's default mode is nearest)."""
    modes = {}
    for node in model.graph.node:
        if node.op_type == "Resize":
            mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "nearest")
            modes[node.name] = mode
    return modes


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output if out}


def assert_in_order(names: list[str], required: list[str]) -> None:
    """``required`` passes all ran, in this order (recipes may add harmless passes between)."""
    positions = [names.index(n) for n in required if n in names]
    assert len(positions) == len(required) and positions == sorted(positions), (names, required)


def assert_passes_verified(build: Build) -> None:
    """Every pass that changed the graph was verified and passed; none failed or crashed."""
    assert build.status == 0, build.stderr[-2000:]
    assert build.report["status"] == "ok" and build.report["failed_pass"] is None
    for rec in build.report["passes"]:
        assert rec["status"] in ("ok", "unchanged"), rec
        if rec["changed"]:
            assert rec["verdict"] is not None and rec["verdict"]["ok"], rec


# ------------------------------------------------------------------------------------- OCRNet

#: Why the OCRNet/HRNet tests loosen the approximate budget: the default (cosine 0.99, label
#: agreement 0.98) is calibrated for *trained* weights, where nearest vs bilinear moves mIoU by
#: under a point (80.67 -> 79.89 in the guide). Seeded random weights give near-tied class
#: scores everywhere, so a tiny change flips many argmax labels. The loosened budget is written
#: into the report and still enforced (test_ocrnet_default_budget_is_enforced shows the default
#: one failing the same rewrite).
OCR_TOLERANCE = ["--tolerance", "cosine=0.9,agreement=0.85"]


@pytest.fixture(scope="module")
def ocr_onnx(seed_onnx: Callable[..., Path]) -> Path:
    return seed_onnx("ocrnet_hrnetw18", shape=SMALL)


@pytest.fixture(scope="module")
def ocr_ascend(ocr_onnx: Path, compile_model: Compile) -> Build:
    return compile_model(ocr_onnx, "ascend", *OCR_TOLERANCE)


def test_ocrnet_ascend_switches_the_branch_resizes(ocr_onnx: Path, ocr_ascend: Build) -> None:
    assert_passes_verified(ocr_ascend)
    assert ocr_ascend.report["recipe"] == "ocrnet_hrnetw18"  # found from the model's metadata
    assert_in_order(ocr_ascend.pass_names, ["simplify", "resize_to_nearest", "cleanup"])
    rec = ocr_ascend.record("resize_to_nearest")
    switched = rec["stats"]["nodes"]
    assert rec["stats"]["switched"] == len(switched) == 3  # the three lower-resolution branches
    assert rec["stats"]["modes_before"] == {"linear": 3}

    before, after = resize_modes(onnx.load(str(ocr_onnx))), resize_modes(ocr_ascend.model)
    assert all(before[name] == "linear" and after[name] == "nearest" for name in switched)
    # exactly those switched: every other Resize keeps its mode
    assert {n for n, m in after.items() if m == "nearest"} == {n for n, m in before.items() if m == "nearest"} | set(
        switched
    )
    # the switched Resizes feed the backbone's final Concat (HRNet's branch upsampling)
    model = ocr_ascend.model
    consumers = [
        n
        for n in model.graph.node
        if any(out in n.input for r in model.graph.node if r.name in switched for out in r.output)
    ]
    assert {n.op_type for n in consumers} == {"Concat"} and len({n.name for n in consumers}) == 1


def test_ocrnet_ascend_keeps_argmax_and_records_the_price(ocr_ascend: Build) -> None:
    (out,) = ocr_ascend.model.graph.output
    assert out.name == "output" and producers(ocr_ascend.model)["output"].op_type == "ArgMax"
    assert out.type.tensor_type.elem_type == onnx.TensorProto.INT64 and dims(out)[1:] == [1, 128, 256]
    verdict = ocr_ascend.record("resize_to_nearest")["verdict"]
    assert verdict["contract"] == "approximate" and verdict["ok"]
    # a label map has no cosine; its price is the label agreement, measured and recorded
    agreement = verdict["summary"]["agreement"]
    assert isinstance(agreement, float) and 0.85 <= agreement < 1.0
    assert ocr_ascend.report["tolerances"]["agreement"] == 0.85
    # checked at batch 1 and batch 2 (the export has a dynamic batch); the summary is the worst
    assert len(verdict["metrics"]) == 2 and min(m["agreement"] for m in verdict["metrics"]) == agreement


def test_ocrnet_ascend_atc_commands(ocr_ascend: Build) -> None:
    batches = [1, 4, 8, 16]  # the guide built one .om per batch size from a dynamic-batch export
    assert ocr_ascend.report["build"]["batch_sizes"] == batches  # from the recipe, not the command line
    atc = ocr_ascend.tool("atc")
    assert len(atc) == len(batches)
    for argv, b in zip(atc, batches, strict=False):
        assert flag(argv, "--output").endswith(f"_bs{b}")
        assert flag(argv, "--framework") == "5" and flag(argv, "--input_format") == "NCHW"
        assert flag(argv, "--input_shape") == f"x:{b},3,128,256"
        assert flag(argv, "--model").endswith(".ascend.onnx")
        assert flag(argv, "--out_nodes") is None  # nothing pruned or chosen: the argmax output is the output


def test_ocrnet_default_budget_is_enforced(ocr_onnx: Path, compile_model: Compile) -> None:
    """Without the loosened tolerance the random-weight price exceeds the budget: exit 1, named."""
    build = compile_model(ocr_onnx, "ascend")
    assert build.status == 1
    assert build.report["status"] == "failed" and build.report["failed_pass"] == "resize_to_nearest"
    assert "resize_to_nearest" in build.report["failure"] and "resize_to_nearest" in build.stderr
    names = build.pass_names
    assert build.report["ran_before_failure"] == names[: names.index("resize_to_nearest")]
    assert not (build.outdir / "build.sh").exists()  # no vendor build from an unverified model
    assert build.record("resize_to_nearest")["verdict"]["summary"]["agreement"] < 0.98


# ------------------------------------------------------------------------- HRNet-W48 + OCR

#: Random weights again (see OCR_TOLERANCE); the auxiliary head's logits are nearly flat, so
#: its label agreement is the lowest figure (about 0.66 measured at 128x256).
W48_TOLERANCE = ["--tolerance", "cosine=0.9,agreement=0.5"]


@pytest.fixture(scope="module")
def w48_ascend(seed_onnx: Callable[..., Path], compile_model: Compile) -> Build:
    return compile_model(seed_onnx("hrnet_w48_ocr", shape=SMALL), "ascend", *W48_TOLERANCE)


def test_hrnet_w48_ascend(w48_ascend: Build) -> None:
    assert_passes_verified(w48_ascend)
    assert w48_ascend.report["recipe"] == "hrnet_w48_ocr"
    assert_in_order(w48_ascend.pass_names, ["simplify", "resize_to_nearest", "prune_outputs", "cleanup"])
    rec = w48_ascend.record("resize_to_nearest")
    assert rec["stats"]["switched"] == 3
    modes = resize_modes(w48_ascend.model)
    assert sorted(n for n, m in modes.items() if m == "nearest") == sorted(rec["stats"]["nodes"])
    summary = rec["verdict"]["summary"]
    assert 0.9 <= summary["cosine"] < 1.0 and 0.5 <= summary["agreement"] < 1.0  # measured, recorded

    # the guide cut the graph at the two classifier convs (ATC --out_nodes="Conv_1380:0;Conv_1453:0");
    # segc's export already ends there, so prune_outputs finds nothing to cut
    prune = w48_ascend.record("prune_outputs")
    assert (
        prune["changed"] is False
        and prune["stats"]["dropped"] == []
        and prune["stats"]["outputs"] == ["output1", "output2"]
    )
    made_by = producers(w48_ascend.model)
    for out in w48_ascend.model.graph.output:
        assert dims(out) == [1, 19, 32, 64]  # [N, 19, H/4, W/4]
        assert made_by[out.name].op_type == "Conv"
    (atc,) = w48_ascend.tool("atc")
    assert flag(atc, "--input_shape") == "image:1,3,128,256" and flag(atc, "--input_format") == "NCHW"
    assert flag(atc, "--out_nodes") is None  # pruned in the graph instead of numbered node names


# ---------------------------------------------------------------------------------- DeepLabv2


@pytest.fixture(scope="module")
def deeplab_onnx(seed_onnx: Callable[..., Path]) -> Path:
    return seed_onnx("deeplabv2_r101", shape=SMALL)  # dynamic batch, as the guide exported it


@pytest.fixture(scope="module")
def deeplab_ascend(deeplab_onnx: Path, compile_model: Compile) -> Build:
    return compile_model(deeplab_onnx, "ascend")  # batch sizes from the recipe


def test_deeplabv2_ascend(deeplab_onnx: Path, deeplab_ascend: Build) -> None:
    assert_passes_verified(deeplab_ascend)
    # no graph edit in the guide (resize_broadcast, in the Ascend default, finds no 1x1 Resize)
    assert deeplab_ascend.pass_names == ["simplify", "resize_broadcast", "cleanup"]
    assert deeplab_ascend.record("resize_broadcast")["changed"] is False
    source, compiled = onnx.load(str(deeplab_onnx)), deeplab_ascend.model
    assert (
        Counter(n.op_type for n in compiled.graph.node)["Conv"] == Counter(n.op_type for n in source.graph.node)["Conv"]
    )
    assert [o.name for o in compiled.graph.output] == ["output1", "output2"]
    for out in compiled.graph.output:
        assert dims(out)[1:] == [19, 17, 33]  # stride 8 (+1) of 128x256
    batches = get_recipe("deeplabv2_r101").batch_sizes
    atc = deeplab_ascend.tool("atc")
    assert len(atc) == len(batches) == 7
    for argv, b in zip(atc, batches, strict=False):
        assert flag(argv, "--input_shape") == f"image:{b},3,128,256"
        assert flag(argv, "--output").endswith(f"_bs{b}") and flag(argv, "--input_format") == "NCHW"


# -------------------------------------------------------------------------------------- DBNet


@pytest.fixture(scope="module")
def db_onnx(seed_onnx: Callable[..., Path]) -> Path:
    return seed_onnx("dbnet_r50", shape=DB_EXAMPLE)  # opset 10, dynamic H and W


@pytest.fixture(scope="module")
def db_ascend(db_onnx: Path, compile_model: Compile) -> Build:
    return compile_model(db_onnx, "ascend", *TWO_SHAPE_BUDGET)


@pytest.fixture(scope="module")
def db_tensorrt(db_onnx: Path, compile_model: Compile) -> Build:
    return compile_model(db_onnx, "tensorrt", "--verify", "end", *TWO_SHAPE_BUDGET)


def shape_fed_resizes(model: onnx.ModelProto) -> list[str]:
    """Resizes whose scales/sizes are computed at run time (anything but an initializer)."""
    init = {t.name for t in model.graph.initializer}
    made_by = producers(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Resize"
        and any(
            i and i not in init and made_by.get(i) is not None and made_by[i].op_type != "Constant" for i in n.input[1:]
        )
    ]


def test_dbnet_ascend_folds_every_shape_chain(db_onnx: Path, db_ascend: Build) -> None:
    assert_passes_verified(db_ascend)
    assert_in_order(db_ascend.pass_names, ["simplify", "fold_resize_scales", "set_shape_range", "cleanup"])
    assert len(shape_fed_resizes(onnx.load(str(db_onnx)))) == 6  # the exporter's Shape->...->scales chains
    stats = db_ascend.record("fold_resize_scales")["stats"]
    assert stats["folded"] == stats["resizes"] == 6 and stats["left"] == 0
    compiled = db_ascend.model
    assert shape_fed_resizes(compiled) == [] and "Shape" not in {n.op_type for n in compiled.graph.node}
    meta = {p.key: p.value for p in compiled.metadata_props}
    assert meta["segc.shape_range"] == DB_RANGE and meta["segc.opt_shape"] == "input:1,3,1280,1280"
    (inp,) = compiled.graph.input
    assert dims(inp)[:2] == [1, 3] and all(isinstance(d, str) for d in dims(inp)[2:])
    assert len(db_ascend.report["verified_shapes"]) >= 2  # checked at more than one size of the range

    (atc,) = db_ascend.tool("atc")
    assert flag(atc, "--input_format") == "ND" and flag(atc, "--input_shape") == DB_RANGE


def test_dbnet_compiled_model_runs_at_an_odd_size(db_onnx: Path, db_ascend: Build) -> None:
    """Folding is exact for every H, W: same output as the export at a size nobody verified."""
    from segc.ortrun import run_model

    x = np.random.default_rng(7).uniform(-2, 2, size=(1, 3, 736, 1056)).astype(np.float32)
    got = run_model(db_ascend.model, {"input": x})["output"]
    want = run_model(onnx.load(str(db_onnx)), {"input": x})["output"]
    assert got.shape == want.shape == (1, 1, 736, 1056)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_dbnet_tensorrt_through_verify_end(db_tensorrt: Build) -> None:
    assert db_tensorrt.status == 0, db_tensorrt.stderr[-2000:]
    report = db_tensorrt.report
    assert report["verify_mode"] == "end" and report["status"] == "ok"
    assert report["end_verdict"]["ok"] and report["bisect_probes"] == []  # no bisection needed
    assert all(p["verdict"] is None for p in report["passes"])  # judged once, at the end
    assert db_tensorrt.record("fold_resize_scales")["stats"]["folded"] == 6
    (trt,) = db_tensorrt.tool("trtexec")
    assert flag(trt, "--minShapes") == "input:1x3x640x640"
    assert flag(trt, "--optShapes") == "input:1x3x1280x1280"
    assert flag(trt, "--maxShapes") == "input:1x3x4096x4096"
    assert "--fp16" in trt and flag(trt, "--workspace") is None  # the recipe's precision; no deprecated flag


# ---------------------------------------------------------------------------------- DBNet-DCN


@pytest.fixture(scope="module")
def dcn_onnx(seed_onnx: Callable[..., Path]) -> Path:
    return seed_onnx("dbnet_r50_dcn", shape=DB_EXAMPLE)  # opset 19 ONNX DeformConv, dynamic H and W


def op_count(model: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in model.graph.node)


def test_dbnet_dcn_ascend_keeps_dcn_in_a_ranged_build(dcn_onnx: Path, compile_model: Compile) -> None:
    """The guide dropped DCN to get a dynamic Ascend build; segc keeps it (DeformableConv2D)."""
    build = compile_model(dcn_onnx, "ascend", *TWO_SHAPE_BUDGET)
    assert_passes_verified(build)
    assert build.record("rewrite_deform_conv")["stats"]["converted"] == 13
    compiled = build.model
    assert op_count(compiled, "DeformConv") == 0 and op_count(compiled, "DeformableConv2D") == 13
    for node in compiled.graph.node:
        if node.op_type == "DeformableConv2D":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["data_format"] == b"NCHW" and attrs["modulated"] in (1, True)
    assert shape_fed_resizes(compiled) == []
    (atc,) = build.tool("atc")
    assert flag(atc, "--input_format") == "ND" and flag(atc, "--input_shape") == DB_RANGE


def test_dbnet_dcn_tensorrt_keeps_deformconv(compile_model: Compile, dcn_onnx: Path) -> None:
    build = compile_model(dcn_onnx, "tensorrt", *MIN_SHAPE_BUDGET)
    assert_passes_verified(build)
    assert op_count(build.model, "DeformConv") == 13  # TensorRT 10 parses ONNX DeformConv
    assert op_count(build.model, "DeformableConv2D") == 0
    (trt,) = build.tool("trtexec")
    assert flag(trt, "--minShapes") == "input:1x3x640x640" and flag(trt, "--maxShapes") == "input:1x3x4096x4096"


def test_dbnet_dcn_magicmind_decomposes(compile_model: Compile, dcn_onnx: Path) -> None:
    # segc's MagicMind op list is partial (no public list exists) and lacks the ops of the
    # decomposition (GridSample, Range, ...): building anyway is the user's explicit choice
    build = compile_model(dcn_onnx, "magicmind", "--allow-unlisted-ops", *MIN_SHAPE_BUDGET)
    assert_passes_verified(build)
    rec = build.record("rewrite_deform_conv")
    assert rec["stats"]["form"] == "decomposed" and rec["stats"]["converted"] == 13
    assert op_count(build.model, "DeformConv") == 0 and op_count(build.model, "DeformableConv2D") == 0
    (run,) = build.tool("python3")
    assert run == ["python3", "build_magicmind.py"]
    program = (build.outdir / "build_magicmind.py").read_text(encoding="utf-8")
    assert "'graph_shape_mutable': True" in program and "[1, 3, 4096, 4096]" in program
