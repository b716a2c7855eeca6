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
    recipe = Recipe(name="r", description="", inputs=(InputSpec("x"),), output_names=("y",), seed_shape=(1, 3, 1024, 2048),
                    spatial_multiple=32)
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
