"""Resizes to another tensor's size under a ``/M`` range: parse, stride, fold, verify.

The model is a tiny FPN (``F.interpolate(p, size=f.shape[2:])`` at four levels, total stride
32) exported by torch's legacy exporter with dynamic H, W: the shape chains are the real ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from segc.errors import SegcError
from segc.ortrun import run_model
from segc.passbase import PassContext, get_pass, load_builtin_passes
from segc.passes._shape_stride import total_stride
from segc.shapes import SHAPE_RANGE_KEY, parse_shape_range, ranges_from_metadata

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib adds no test folders
from resize_heads import TinyFPN, export  # noqa: E402

load_builtin_passes()


@pytest.fixture(scope="module")
def fpn(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    path = export(TinyFPN(), tmp_path_factory.mktemp("fpn") / "fpn.onnx", (1, 3, 64, 64))
    return onnx.load(path)


def _computed_resizes(model: onnx.ModelProto) -> int:
    consts = {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }
    return sum(1 for n in model.graph.node if n.op_type == "Resize" and any(i and i not in consts for i in n.input[1:]))


def _same(a: onnx.ModelProto, b: onnx.ModelProto, h: int, w: int) -> None:
    x = np.random.default_rng(h * w).standard_normal((1, 3, h, w)).astype(np.float32)
    ra, rb = run_model(a, {"x": x}), run_model(b, {"x": x})
    for k in ra:
        np.testing.assert_allclose(ra[k], rb[k], rtol=1e-5, atol=1e-5)


# -- syntax ------------------------------------------------------------------------------------
def test_multiple_syntax_round_trips() -> None:
    r = parse_shape_range("x:1,3,512~2048/32,640~4096/32")
    assert r.multiple == (1, 1, 32, 32) and r.step(2) == 32 and r.step(0) == 1
    assert r.atc() == "x:1,3,512~2048/32,640~4096/32"
    assert r.vendor_atc() == "x:1,3,512~2048,640~4096"
    assert parse_shape_range(r.atc()) == r
    (back,) = ranges_from_metadata({SHAPE_RANGE_KEY: r.atc()})
    assert back.multiple == r.multiple
    assert "multiples of 32" in r.multiples_text()
    assert parse_shape_range("x:1,3,64,64").multiple == ()


@pytest.mark.parametrize("text", ["x:1,3,500~2048/32,64", "x:1,3,512~2050/32,64", "x:1,3,64~128/0,64"])
def test_multiple_bounds_must_be_on_the_grid(text: str) -> None:
    with pytest.raises(SegcError, match="multiple|malformed"):
        parse_shape_range(text)


def test_opt_must_be_on_the_grid() -> None:
    r = parse_shape_range("x:1,3,64~256/32,64~256/32")
    with pytest.raises(SegcError, match="multiple of 32"):
        r.with_opt((1, 3, 100, 128))
    assert r.with_opt((1, 3, 128, 128)).opt_given


# -- total stride ------------------------------------------------------------------------------
def test_total_stride_of_the_fpn_is_32(fpn: onnx.ModelProto) -> None:
    assert total_stride(gs.import_onnx(fpn)) == 32


def test_total_stride_of_a_stride_free_graph_is_1() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert total_stride(gs.import_onnx(model)) == 1


# -- folding under the grid ---------------------------------------------------------------------
def test_set_shape_range_with_multiples_folds_size_to_tensor_resizes(fpn: onnx.ModelProto) -> None:
    assert _computed_resizes(fpn) == 4
    ctx = PassContext(options={"ranges": ["x:1,3,64~256/32,64~256/32"]})
    out, res = get_pass("set_shape_range")().apply(fpn, ctx)
    assert res.stats["resizes_folded"] == 4 and _computed_resizes(out) == 0
    assert all("multiples of 32" in n for n in res.notes if "->" in n and "Resize" in n)
    assert ctx.metadata[SHAPE_RANGE_KEY] == "x:1,3,64~256/32,64~256/32"
    # equivalent at the grid's min, at odd multiples (3*32, 5*32) and at the max
    for h, w in ((64, 64), (96, 160), (256, 224)):
        _same(fpn, out, h, w)


def test_without_multiples_nothing_folds_and_the_note_offers_the_grid(fpn: onnx.ModelProto) -> None:
    out, res = get_pass("set_shape_range")().apply(fpn, PassContext(options={"ranges": ["x:1,3,64~256,64~256"]}))
    assert "resizes_folded" not in res.stats and _computed_resizes(out) == 4
    _, fold = get_pass("fold_resize_scales")().apply(fpn, PassContext())
    assert fold.stats["left"] == 4
    assert all("multiples of 32" in n and "/32" in n for n in fold.notes)


def test_fold_resize_scales_reads_the_grid_from_the_metadata(fpn: onnx.ModelProto) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(fpn)
    model.metadata_props.add(key=SHAPE_RANGE_KEY, value="x:1,3,64~256/32,64~256/32")
    out, res = get_pass("fold_resize_scales")().apply(model, PassContext())
    assert res.stats["folded"] == 4 and res.stats["from_sizes"] == 4 and _computed_resizes(out) == 0
    for h, w in ((64, 96), (160, 96)):
        _same(fpn, out, h, w)


def test_fold_note_gives_the_exact_range_when_one_is_stored(fpn: onnx.ModelProto) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(fpn)
    model.metadata_props.add(key=SHAPE_RANGE_KEY, value="x:1,3,70~250,64~256")
    _, res = get_pass("fold_resize_scales")().apply(model, PassContext())
    assert res.stats["left"] == 4
    assert "--input-shape x:1,3,96~224/32,64~256/32" in res.notes[0]


def test_a_traced_size_off_the_grid_is_an_error(tmp_path: Path) -> None:
    path = export(TinyFPN(), tmp_path / "odd.onnx", (1, 3, 80, 80))
    model = onnx.load(path)
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.Clear()
        d.dim_value = 80  # as if exported static at 80x80
    with pytest.raises(SegcError, match="not a multiple of 32"):
        get_pass("set_shape_range")().apply(model, PassContext(options={"ranges": ["x:1,3,64~256/32,64~256/32"]}))


# -- end to end: segc compile --------------------------------------------------------------------
def _compile(tmp_path: Path, fpn: onnx.ModelProto, shape: str) -> tuple[Path, dict]:
    import json

    from segc.cli import main

    src = tmp_path / "fpn.onnx"
    onnx.save(fpn, src)
    out = tmp_path / "out"
    assert main(["compile", str(src), "--target", "ascend", "--input-shape", shape, "-o", str(out)]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_compile_for_ascend_on_the_grid_folds_and_verifies_on_multiples(tmp_path: Path, fpn: onnx.ModelProto) -> None:
    out, report = _compile(tmp_path, fpn, "x:1,3,64~256/32,64~256/32")
    assert _computed_resizes(onnx.load(out / "fpn.ascend.onnx")) == 0
    assert report["build"]["shapes"] == ["x:1,3,64~256/32,64~256/32"]
    assert report["build"]["target_options"]["shape_route"].startswith("range:")
    verified = " ".join(report["verified_shapes"])
    assert "x:1x3x64x64" in verified and "x:1x3x96x160" in verified  # the minimum and odd multiples of 32
    script = (out / "build.sh").read_text()
    assert "'--input_shape=x:1,3,64~256,64~256'" in script and "multiples of 32" in script


def test_compile_for_ascend_off_the_grid_falls_back_to_gears(tmp_path: Path, fpn: onnx.ModelProto) -> None:
    out, report = _compile(tmp_path, fpn, "x:1,3,64~256,64~256")
    route = report["build"]["target_options"]["shape_route"]
    assert route.startswith("gears:") and "--input-shape x:1,3,64~256/32,64~256/32" in route
    script = (out / "build.sh").read_text()
    assert "--dynamic_image_size=" in script and "--input_shape=x:1,3,-1,-1" in script
    assert "fold_resize_scales" not in report["violations"]


def test_inspect_prints_the_total_stride_and_the_range_syntax(tmp_path: Path, fpn: onnx.ModelProto, capsys) -> None:
    from segc.cli import main

    src = tmp_path / "fpn.onnx"
    onnx.save(fpn, src)
    assert main(["inspect", str(src), "--target", "ascend"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "total stride 32: give ranges as 640~4096/32 to fold the 4 Resize(s)" in text
    # no fix is named that cannot apply: without a range nothing proves these sizes constant
    assert "fixed by pass fold_resize_scales" not in text and "segc builds ATC gears" in text


@pytest.mark.slow
def test_ocrnet_hrnet_resizes_all_fold_on_the_grid(seed_onnx) -> None:
    """The seed HRNet: every branch Resize (``size=high.shape[2:]``) folds on /32, none without."""
    model = onnx.load(str(seed_onnx("ocrnet_hrnetw18", shape=(1, 3, 128, 256))))
    name = model.graph.input[0].name
    _, plain = get_pass("set_shape_range")().apply(
        model, PassContext(options={"ranges": [f"{name}:1,3,128~512,128~512"]})
    )
    assert "resizes_folded" not in plain.stats
    out, res = get_pass("set_shape_range")().apply(
        model, PassContext(options={"ranges": [f"{name}:1,3,128~512/32,128~512/32"]})
    )
    assert res.stats["resizes_folded"] == 36 and _computed_resizes(out) == 0
    x = np.random.default_rng(0).standard_normal((1, 3, 128, 256)).astype(np.float32)
    ra, rb = run_model(model, {name: x}), run_model(out, {name: x})
    for k in ra:
        np.testing.assert_allclose(ra[k], rb[k], rtol=1e-4, atol=1e-4)
    assert next(iter(run_model(out, {name: np.zeros((1, 3, 160, 224), np.float32)}).values())).shape[2:] == (160, 224)


@pytest.mark.parametrize("extra, fragment", [
    (["--input-shape", "x:1,3,64~250/32,64~256/32"], "both bounds must be multiples of 32"),
    (["--input-shape", "x:1,3,64~256/32,64~256/32", "--opt-shape", "x:1,3,100,128"], "not a multiple of 32"),
])
def test_off_grid_input_is_one_line_exit_2(
    tmp_path: Path, fpn: onnx.ModelProto, capsys, extra: list[str], fragment: str
) -> None:
    from segc.cli import main

    src = tmp_path / "fpn.onnx"
    onnx.save(fpn, src)
    assert main(["compile", str(src), "--target", "tensorrt", "-o", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segc: error:") and fragment in err[0]
    assert not (tmp_path / "o").exists()


def _unet_skip() -> onnx.ModelProto:
    """y = x + Resize(MaxPool2(x), scales 2): runs only where H, W are even."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["p", "", "sc"], ["u"], mode="nearest"),
        helper.make_node("Add", ["x", "u"], ["y"], name="skip_add"),
    ]
    sc = helper.make_tensor("sc", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    return helper.make_model(
        helper.make_graph(nodes, "unet", [x], [y], [sc]), opset_imports=[helper.make_opsetid("", 13)]
    )


def test_a_conflict_off_the_grid_names_the_grid_range_that_works() -> None:
    model = _unet_skip()
    with pytest.raises(SegcError, match=r"multiples of its total stride 2: give --input-shape x:1,3,64~128/2,64~128/2"):
        get_pass("set_shape_range")().apply(model, PassContext(options={"ranges": ["x:1,3,63~128,63~128"]}))
    out, res = get_pass("set_shape_range")().apply(model, PassContext(options={"ranges": ["x:1,3,64~128/2,64~128/2"]}))
    _same(model, out, 66, 98)


# -- property: random strided backbones with an FPN top-down path ----------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _random_fpn(strides: list[int], kernels: list[int]) -> onnx.ModelProto:
    """Convs with the given strides/kernels (pad k//2), then p = f + Resize(p, sizes=Shape(f))
    from the deepest level up: every Resize is sized from another tensor."""
    rng = np.random.default_rng(len(strides))
    inits, nodes, feats = [], [], []
    prev = "x"
    for i, (s, k) in enumerate(zip(strides, kernels, strict=False)):
        inits.append(
            helper.make_tensor(
                f"w{i}", TensorProto.FLOAT, [2, 2, k, k], rng.standard_normal(4 * k * k).astype(np.float32).tolist()
            )
        )
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"f{i}"], strides=[s, s], pads=[k // 2] * 4))
        prev = f"f{i}"
        feats.append(prev)
    p = feats[-1]
    for i, f in reversed(list(enumerate(feats[:-1]))):
        nodes += [helper.make_node("Shape", [f], [f"s{i}"]),
                  helper.make_node("Resize", [p, "", "", f"s{i}"], [f"u{i}"], mode="linear"),
                  helper.make_node("Add", [f, f"u{i}"], [f"p{i}"])]
        p = f"p{i}"
    nodes.append(helper.make_node("Identity", [p], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_model(
        helper.make_graph(nodes, "fpn", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    st.lists(st.tuples(st.sampled_from([1, 2]), st.sampled_from([1, 3])), min_size=2, max_size=5),
    st.integers(1, 3),
    st.integers(1, 4),
)
def test_total_stride_is_the_product_of_strides_and_the_grid_fold_is_exact(layers, qh, qw) -> None:
    strides, kernels = [s for s, _ in layers], [k for _, k in layers]
    model = _random_fpn(strides, kernels)
    m = int(np.prod(strides))
    assert total_stride(gs.import_onnx(model)) == m
    lo, hi = 2 * m, 8 * m
    out, res = get_pass("set_shape_range")().apply(
        model, PassContext(options={"ranges": [f"x:1,2,{lo}~{hi}/{m},{lo}~{hi}/{m}"]})
    )
    if m > 1:  # (a /1 range is no grid: fold_resize_scales folds ratio-1 Resizes by itself)
        assert res.stats["resizes_folded"] == len(strides) - 1 and _computed_resizes(out) == 0
    x = (
        np.random.default_rng(qh * 7 + qw)
        .standard_normal((1, 2, (2 * qh + 1) * m, (2 * qw + 1) * m))
        .astype(np.float32)
    )
    ra, rb = run_model(model, {"x": x}), run_model(out, {"x": x})
    np.testing.assert_allclose(ra["y"], rb["y"], rtol=1e-5, atol=1e-5)
