"""segc.models.recipes: plain data, importable without torch, consistent with the zoo and passes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from segc.models.recipes import RECIPES
from segc.recipe import Recipe, all_recipes, get_recipe
from segc.errors import SegcError

ZOO_NAMES = ["ocrnet_hrnetw18", "hrnet_w48_ocr", "deeplabv2_r101", "dbnet_r50", "dbnet_r50_dcn"]
TARGETS = {"ascend", "magicmind", "tensorrt", "onnxruntime"}


def test_recipes_import_without_torch() -> None:
    """``segc compile`` reads recipes on machines without PyTorch."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import segc.models.recipes as r, segc.models.zoo as z, segc.models.export as e\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(','.join(r.RECIPES))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split(",") == ZOO_NAMES


def test_one_recipe_per_model_and_lookup() -> None:
    assert list(RECIPES) == ZOO_NAMES
    assert all(isinstance(r, Recipe) and r.name == n for n, r in RECIPES.items())
    assert set(all_recipes()) == set(ZOO_NAMES)
    assert get_recipe("dbnet_r50").opt_shape == "input:1,3,1280,1280"
    with pytest.raises(SegcError, match="unknown recipe 'dbnet'"):
        get_recipe("dbnet")


def test_seed_facts() -> None:
    ocr = RECIPES["ocrnet_hrnetw18"]
    assert ocr.inputs[0].name == "x" and ocr.label_outputs == ("output",) and ocr.batch_sizes == (1, 4, 8, 16)
    assert ocr.for_target("magicmind").batch_range == (1, 16)
    trt = ocr.for_target("tensorrt")
    assert trt.precision == "fp16" and trt.flags == {"workspace_mb": 15000}
    # a recipe's target flags are flags that target declares
    from segc.targets.base import get_target

    for recipe in RECIPES.values():
        for name, target_recipe in recipe.targets.items():
            assert set(target_recipe.flags) <= {f.dest for f in get_target(name).flags}, (recipe.name, name)
    assert ocr.for_target("ascend").options["resize_to_nearest"] == {"preset": "hrnet_branches"}
    w48 = RECIPES["hrnet_w48_ocr"]
    assert w48.for_target("ascend").passes == (
        "simplify",
        "fold_resize_scales",
        "resize_to_nearest",
        "prune_outputs",
        "cleanup",
    )
    assert len(w48.for_target("ascend").options["prune_outputs"]["outputs"]) == 2
    dl = RECIPES["deeplabv2_r101"]
    assert dl.spatial_multiple == 8 and dl.batch_sizes[-1] == 64 and dl.inputs[0].channel_order == "BGR"
    assert dl.for_target("ascend").passes is None  # the target's default pipeline
    for name in ("dbnet_r50", "dbnet_r50_dcn"):
        db = RECIPES[name]
        assert db.shape_range == "input:1,3,640~4096,640~4096"
        opts = db.for_target("ascend").options["set_shape_range"]
        assert opts == {"ranges": [db.shape_range], "opt": [db.opt_shape]}
        assert db.for_target("tensorrt").precision == "fp16"
    dcn = RECIPES["dbnet_r50_dcn"]
    forms = {t: dcn.for_target(t).options["rewrite_deform_conv"]["form"] for t in TARGETS}
    assert forms == {"ascend": "ascend", "onnxruntime": "onnx", "tensorrt": "onnx", "magicmind": "decomposed"}
    # no two targets share a mutable options dict (editing one must not edit the others)
    a, t = RECIPES["dbnet_r50"].for_target("ascend"), RECIPES["dbnet_r50"].for_target("tensorrt")
    assert a.options["set_shape_range"] is not t.options["set_shape_range"]


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_normalisation_maps_pixels_to_the_expected_range(name: str) -> None:
    """A mid-grey image lands near zero for mean-subtracting recipes, in [-1, 1]-ish for others."""
    spec = RECIPES[name].inputs[0]
    grey = np.full((1, 3, 4, 4), 127.0, dtype=np.float32)
    out = spec.normalise(grey)
    assert out.dtype == np.float32 and out.shape == grey.shape
    assert np.all(np.abs(out) < 25.0), out[0, :, 0, 0]  # deeplab: 127 - 104 = 23 (no std)
    full = spec.normalise(np.full((1, 3, 1, 1), 255.0, dtype=np.float32))
    assert np.all(full > out[:, :, :1, :1])


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_pass_names_and_options_exist(name: str) -> None:
    """Every pass a recipe names is registered, accepts the options the recipe gives it (each
    of the declared type), and the list keeps the order the passes declare."""
    from segc.pass_order import check_order
    from segc.passbase import all_passes

    registered = all_passes()
    recipe = RECIPES[name]
    assert set(recipe.targets) <= TARGETS
    for target, tr in recipe.targets.items():
        assert set(tr.options) <= set(tr.passes or ()), f"{target}: options for passes not in the list"
        missing = [p for p in tr.passes or () if p not in registered]
        assert not missing, f"{name} for {target} names unregistered passes {missing}: segc compile would refuse it"
        for pass_name in tr.passes or ():
            registered[pass_name].resolve_options(tr.options.get(pass_name, {}))  # typed, as compile coerces them
        check_order(list(tr.passes or ()), f"recipe {name} for {target}")


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_recipe_agrees_with_the_architecture_module(name: str) -> None:
    """Names, shapes and strides are written twice (recipes need no torch): keep them equal."""
    pytest.importorskip("torch")
    import importlib

    from segc.models.zoo import get_entry

    entry = get_entry(name)
    arch = importlib.import_module(entry.module)
    recipe = RECIPES[name]
    assert tuple(s.name for s in recipe.inputs) == tuple(arch.INPUT_NAMES) == entry.input_names
    assert recipe.output_names == tuple(arch.OUTPUT_NAMES) == entry.output_names
    assert recipe.spatial_multiple == arch.SPATIAL_MULTIPLE == entry.spatial_multiple
    assert recipe.seed_shape == tuple(arch.SEED_SHAPE) == entry.default_shape
    assert entry.recipe == name
