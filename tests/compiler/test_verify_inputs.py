"""Which shapes and values the verifier uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from segc.errors import SegcError
from segc.recipe import InputSpec, Recipe
from segc.shapes import parse_shape_range
from segc.verify_inputs import load_user_feeds, random_feed, smooth_pixels, verification_shapes


def model(dims: list) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_static_model_has_one_shape() -> None:
    assert verification_shapes(model([1, 3, 64, 128]), {}) == [{"x": (1, 3, 64, 128)}]


def test_range_gives_min_opt_and_an_odd_shape() -> None:
    rng = parse_shape_range("x:1,3,640~4096,640~4096").with_opt((1, 3, 1280, 1280))
    shapes = [s["x"] for s in verification_shapes(model(["N", 3, "H", "W"]), {"x": rng})]
    assert shapes == [(1, 3, 640, 640), (1, 3, 1280, 1280), (1, 3, 672, 704)]
    assert shapes[2][2] != shapes[2][3]  # H and W differ, so a transposed-dimension bug shows


def test_range_on_a_grid_is_checked_at_multiples_only() -> None:
    """``/32``: every shape is on the grid, and one is an odd multiple (no power of two)."""
    rng = parse_shape_range("x:1,3,64~512/32,128~512/32").with_opt((1, 3, 256, 256))
    shapes = [s["x"] for s in verification_shapes(model([1, 3, "H", "W"]), {"x": rng})]
    assert shapes == [(1, 3, 64, 128), (1, 3, 256, 256), (1, 3, 96, 224)]
    assert all(d % 32 == 0 for s in shapes for d in s[2:])
    assert any((d // 32) % 2 == 1 and d // 32 > 1 for d in shapes[-1][2:])


def test_pixel_budget_drops_large_shapes_but_keeps_the_minimum() -> None:
    rng = parse_shape_range("x:1,3,2048~4096,2048~4096").with_opt((1, 3, 4096, 4096))
    shapes = [s["x"] for s in verification_shapes(model(["N", 3, "H", "W"]), {"x": rng}, budget=1_000_000)]
    assert shapes == [(1, 3, 2048, 2048)]


def test_dynamic_without_range_uses_the_recipe_within_budget() -> None:
    recipe = Recipe(
        name="r",
        description="",
        inputs=(InputSpec("x"),),
        output_names=("y",),
        seed_shape=(1, 3, 1024, 2048),
        spatial_multiple=32,
    )
    shapes = [s["x"] for s in verification_shapes(model(["N", 3, "H", "W"]), {}, recipe, budget=1_300_000)]
    # halved until within budget; the second shape also checks a batch above 1
    assert shapes == [(1, 3, 512, 1024), (2, 3, 544, 1088)]
    tight = [s["x"] for s in verification_shapes(model(["N", 3, "H", "W"]), {}, recipe, budget=600_000)]
    assert tight == [(1, 3, 512, 1024)]  # the second shape would exceed the budget


def test_dynamic_batch_is_checked_above_one() -> None:
    shapes = [s["x"] for s in verification_shapes(model(["batch", 3, 64, 128]), {})]
    assert shapes == [(1, 3, 64, 128), (2, 3, 64, 128)]


def test_random_feeds_are_seeded_and_normalised() -> None:
    m = model([1, 3, 32, 32])
    a = random_feed(m, {"x": (1, 3, 32, 32)}, None, seed=3)
    b = random_feed(m, {"x": (1, 3, 32, 32)}, None, seed=3)
    c = random_feed(m, {"x": (1, 3, 32, 32)}, None, seed=4)
    assert np.array_equal(a.arrays["x"], b.arrays["x"]) and not np.array_equal(a.arrays["x"], c.arrays["x"])
    x = a.arrays["x"]  # ImageNet normalisation of [0, 255] pixels stays within about [-2.2, 2.7]
    assert x.dtype == np.float32 and -2.2 <= x.min() and x.max() <= 2.7 and x.std() > 0.3


def test_smooth_pixels_have_spatial_structure() -> None:
    px = smooth_pixels(np.random.default_rng(0), (1, 3, 64, 64))
    assert px.min() >= 0 and px.max() <= 255
    neighbour = np.corrcoef(px[0, 0, :, :-1].ravel(), px[0, 0, :, 1:].ravel())[0, 1]
    assert neighbour > 0.5  # unlike white noise


def test_recipe_normalisation_and_bgr() -> None:
    spec = InputSpec("x", mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), channel_order="BGR")
    pixels = np.zeros((1, 3, 2, 2), np.float32)
    pixels[:, 0] = 200  # red
    out = spec.normalise(pixels)
    assert out[0, 2, 0, 0] == pytest.approx(200 - 123) and out[0, 0, 0, 0] == pytest.approx(-104)


def test_user_npy_npz_and_images(tmp_path: Path) -> None:
    m = model([1, 3, 8, 8])
    arr = np.ones((1, 3, 8, 8), np.float32)
    np.save(tmp_path / "in.npy", arr)
    np.savez(tmp_path / "in.npz", x=arr * 2)
    assert load_user_feeds(tmp_path / "in.npy", m, None, None)[0].arrays["x"].sum() == arr.size
    assert load_user_feeds(tmp_path / "in.npz", m, None, None)[0].arrays["x"].sum() == 2 * arr.size
    np.savez(tmp_path / "wrong.npz", y=arr)
    with pytest.raises(SegcError, match="no array for input"):
        load_user_feeds(tmp_path / "wrong.npz", m, None, None)
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.full((20, 30, 3), 255, np.uint8)).save(images / "a.png")
    feeds = load_user_feeds(images, m, None, {"x": (1, 3, 8, 8)})
    assert feeds[0].arrays["x"].shape == (1, 3, 8, 8)
    assert feeds[0].arrays["x"][0, 0, 0, 0] == pytest.approx((255 - 123.675) / 58.395, rel=1e-5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegcError, match="no images"):
        load_user_feeds(tmp_path / "empty", m, None, {"x": (1, 3, 8, 8)})
    with pytest.raises(SegcError, match="no such file"):
        load_user_feeds(tmp_path / "nope.npz", m, None, None)


def test_verifier_uses_the_recipe_range_until_the_model_has_one() -> None:
    from segc.shapes import SHAPE_RANGE_KEY
    from segc.verify import Verifier

    recipe = Recipe(name="r", description="", inputs=(InputSpec("x"),), output_names=("y",), seed_shape=(1, 3, 32, 32),
                    shape_range="x:1,3,32~64,32~64", opt_shape="x:1,3,48,48", spatial_multiple=8)
    dynamic = model(["N", 3, "H", "W"])
    shapes = [f.arrays["x"].shape for f in Verifier(recipe=recipe).feeds_for(dynamic)]
    assert shapes == [(1, 3, 32, 32), (1, 3, 48, 48), (1, 3, 40, 48)]  # min, opt, and an odd one
    dynamic.metadata_props.add(key=SHAPE_RANGE_KEY, value="x:1,3,16~24,16~24")  # the model's own range wins
    assert [f.arrays["x"].shape for f in Verifier(recipe=recipe).feeds_for(dynamic)][0] == (1, 3, 16, 16)
    static = model([1, 3, 32, 32])  # a static model is checked at its shape, whatever the recipe says
    assert [f.arrays["x"].shape for f in Verifier(recipe=recipe).feeds_for(static)] == [(1, 3, 32, 32)]


# -- inputs that are not images ------------------------------------------------------------

def _onnx_node_cases(prefixes: tuple[str, ...]) -> dict[str, onnx.ModelProto]:
    """The ONNX project's backend node cases (generated by onnx itself) with more than one input."""
    import importlib

    import onnx.backend.test.case.node as node_cases

    node_cases._TargetOpType = None
    for mod in ("resize", "gridsample"):
        importlib.import_module(f"onnx.backend.test.case.node.{mod}")
    found: dict[str, onnx.ModelProto] = {}
    for tc in node_cases._NodeTestCases:
        inits = {t.name for t in tc.model.graph.initializer}
        feeds = [i for i in tc.model.graph.input if i.name not in inits]
        if tc.name.startswith(prefixes) and len(feeds) > 1:
            found.setdefault(tc.name, tc.model)
    return found


NODE_CASES = _onnx_node_cases(("test_resize_", "test_gridsample"))


def test_onnx_node_cases_with_shape_inputs_verify() -> None:
    """Every Resize/GridSample case taking scales/sizes/roi/grid as inputs runs and compares with itself.

    Before: 39 of these 57 exited 2 with onnxruntime's "Scale value should be greater than 0".
    """
    from segc.passbase import Contract
    from segc.verify import Verifier

    assert len(NODE_CASES) >= 37
    failures = {}
    for name, m in NODE_CASES.items():
        try:
            verifier = Verifier()
            ref = verifier.initial_state(m)
            verdict = verifier.compare(ref, verifier.new_state(m, "same"), Contract.EXACT)
            if not verdict.ok:
                failures[name] = verdict.reasons
        except SegcError as exc:
            failures[name] = str(exc)
    assert not failures, failures


def test_derived_values_are_valid_for_their_operands() -> None:
    from segc.input_roles import Role, input_roles

    m = NODE_CASES["test_resize_tf_crop_and_resize"]
    feed = random_feed(m, {"X": (1, 1, 4, 4), "roi": (8,), "sizes": (4,)}, None, 0)
    roles = input_roles(m, ["X", "roi", "sizes"])
    assert roles["roi"].role is Role.RESIZE_ROI and roles["sizes"].role is Role.RESIZE_SIZES
    assert feed.arrays["roi"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert feed.arrays["sizes"].tolist() == [1, 1, 8, 8] and feed.arrays["sizes"].dtype == np.int64
    grid = random_feed(NODE_CASES["test_gridsample_bilinear"], {"X": (1, 1, 3, 2), "Grid": (1, 2, 4, 2)}, None, 0)
    assert np.all(np.abs(grid.arrays["Grid"]) <= 1)


def _shape_ops_model() -> onnx.ModelProto:
    """x[1,3,4,4] -> Reshape(shape) -> Slice(starts, ends) -> TopK(k) over the last axis."""
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
           helper.make_tensor_value_info("shape", TensorProto.INT64, [4]),
           helper.make_tensor_value_info("starts", TensorProto.INT64, [1]),
           helper.make_tensor_value_info("ends", TensorProto.INT64, [1]),
           helper.make_tensor_value_info("k", TensorProto.INT64, [1])]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Slice", ["r", "starts", "ends"], ["s"]),
             helper.make_node("TopK", ["s", "k"], ["v", "i"])]
    g = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("v", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_reshape_slice_and_topk_inputs_get_valid_values() -> None:
    from segc.verify import Verifier

    m = _shape_ops_model()
    verifier = Verifier()
    feed = verifier.feeds_for(m)[0]
    assert feed.arrays["shape"].tolist() == [1, 3, 4, 4] and feed.arrays["starts"].tolist() == [0]
    assert feed.arrays["k"].tolist() == [1] and feed.arrays["ends"][0] > 1000
    state = verifier.initial_state(m)
    assert state.outputs[feed.label]["v"].shape == (1, 3, 4, 1)


def test_an_underivable_operand_is_one_usage_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Resize sizes of a tensor computed inside the graph, of unknown shape: name the input and the fix."""
    from segc.cli import main

    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"]),
           helper.make_tensor_value_info("sizes", TensorProto.INT64, [4])]
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["x", "s"], ["x2"]),  # unknown shape to inference
             helper.make_node("Resize", ["x2", "", "", "sizes"], ["y"], mode="nearest")]
    g = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(m, tmp_path / "m.onnx")
    assert main(["verify", str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx"), "--input-shape", "x:1,3,8,8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("segc: error:")
    assert "'sizes'" in err and "--verify-inputs data.npz" in err
    # the npz the message asks for makes it work
    np.savez(tmp_path / "in.npz", x=np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32),
             sizes=np.array([1, 3, 16, 16], np.int64))
    assert main(["verify", str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx"), "--verify-inputs",
                 str(tmp_path / "in.npz")]) == 0


def _paddle_detector() -> onnx.ModelProto:
    """PaddleDetection's export signature: image[N,3,H,W], im_shape[N,2], scale_factor[N,2].

    y = mean(image over C,H,W) * scale_factor + im_shape / 100 (a stand-in for box rescaling).
    """
    ins = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"]),
           helper.make_tensor_value_info("im_shape", TensorProto.FLOAT, ["n", 2]),
           helper.make_tensor_value_info("scale_factor", TensorProto.FLOAT, ["n", 2])]
    hundred = helper.make_tensor("hundred", TensorProto.FLOAT, [], [100.0])
    nodes = [helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Unsqueeze", ["m", "one"], ["mu"]),
             helper.make_node("Mul", ["mu", "scale_factor"], ["ms"]),
             helper.make_node("Div", ["im_shape", "hundred"], ["sh"]),
             helper.make_node("Add", ["ms", "sh"], ["boxes"])]
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    g = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["n", 2])],
                          [hundred, one])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_multi_input_detector_with_an_npz_and_without(tmp_path: Path) -> None:
    from segc.cli import main

    onnx.save(_paddle_detector(), tmp_path / "det.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", image=rng.standard_normal((1, 3, 64, 96)).astype(np.float32),
             im_shape=np.array([[64, 96]], np.float32), scale_factor=np.array([[1.5, 1.5]], np.float32))
    det = str(tmp_path / "det.onnx")
    assert main(["verify", det, det, "--verify-inputs", str(tmp_path / "in.npz")]) == 0
    assert main(["verify", det, det, "--input-shape", "image:1,3,64,96"]) == 0
    feed = random_feed(
        _paddle_detector(), {"image": (1, 3, 64, 96), "im_shape": (1, 2), "scale_factor": (1, 2)}, None, 0
    )
    assert feed.arrays["im_shape"].tolist() == [[64, 96]] and feed.arrays["scale_factor"].tolist() == [[1, 1]]


# -- rendered text for text detectors ---------------------------------------------------------

def _text_recipe(task: str) -> Recipe:
    return Recipe(name="t", description="", inputs=(InputSpec("x"),), output_names=("y",), seed_shape=(1, 3, 96, 128),
                  task=task)


def test_text_detectors_are_fed_rendered_text() -> None:
    from segc.text_images import text_pixels

    shape = {"x": (1, 3, 96, 128)}
    text = random_feed(model([1, 3, 96, 128]), shape, _text_recipe("text_detection"), 3).arrays["x"]
    noise = random_feed(model([1, 3, 96, 128]), shape, _text_recipe("segmentation"), 3).arrays["x"]
    assert not np.allclose(text, noise)
    again = random_feed(model([1, 3, 96, 128]), shape, _text_recipe("text_detection"), 3).arrays["x"]
    np.testing.assert_array_equal(text, again)  # seeded
    pixels = text_pixels(np.random.default_rng(0), (2, 3, 96, 128))
    dark = (pixels.max(axis=1) < 90).mean(axis=(1, 2))  # ink: dark in every channel
    assert np.all(dark > 0.005) and np.all(dark < 0.5)  # words, not a black page
    assert np.median(pixels) > 170  # on a light page
    assert not np.array_equal(pixels[0], pixels[1])


def test_dbnet_recipes_are_text_detectors() -> None:
    from segc.recipe import all_recipes

    tasks = {name: r.task for name, r in all_recipes().items()}
    assert tasks["dbnet_r50"] == tasks["dbnet_r50_dcn"] == "text_detection"
    assert tasks["ocrnet_hrnetw18"] == "segmentation"


def test_user_data_wins_over_rendered_text(tmp_path: Path) -> None:
    from segc.verify import Verifier

    x = np.full((1, 3, 96, 128), 0.25, np.float32)
    np.save(tmp_path / "x.npy", x)
    verifier = Verifier(recipe=_text_recipe("text_detection"), user_inputs=tmp_path / "x.npy")
    feeds = verifier.feeds_for(model([1, 3, 96, 128]))
    assert len(feeds) == 1 and np.array_equal(feeds[0].arrays["x"], x)
