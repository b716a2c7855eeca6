"""segc.models.zoo / segc.models.export: the five seed models exported and checked for real.

Each model is exported once per session through ``seed_onnx`` (tests/conftest.py) at a small
shape, then run in onnxruntime and compared with the PyTorch module it came from on the same
normalised input. The bad-input tests fail before any export, so they cost milliseconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from segc.errors import SegcError  # noqa: E402
from segc.models import zoo  # noqa: E402
from segc.models.export import add_export_arguments, run_export  # noqa: E402
from segc.models.recipes import RECIPES  # noqa: E402
from segc.ortrun import SessionConfig, make_session, run_session  # noqa: E402
from segc.recipe import RECIPE_METADATA_KEY  # noqa: E402

#: Small export shapes (multiples of each model's stride); HRNet/DeepLab share the shape
#: other test folders use, so the session cache exports them once for everyone.
SMALL: dict[str, tuple[int, int, int, int]] = {
    "ocrnet_hrnetw18": (1, 3, 128, 256),
    "hrnet_w48_ocr": (1, 3, 128, 256),
    "deeplabv2_r101": (1, 3, 128, 256),
    "dbnet_r50": (1, 3, 128, 128),
    "dbnet_r50_dcn": (1, 3, 128, 128),
}
#: A second shape for the dynamic models (DBNet: H and W; DeepLabv2: batch).
SECOND: dict[str, tuple[int, int, int, int]] = {
    "deeplabv2_r101": (2, 3, 128, 256),
    "dbnet_r50": (1, 3, 96, 160),
    "dbnet_r50_dcn": (1, 3, 96, 160),
}
DEFAULT_OPSET = {"ocrnet_hrnetw18": 11, "hrnet_w48_ocr": 11, "deeplabv2_r101": 11, "dbnet_r50": 10, "dbnet_r50_dcn": 19}


def expected_outputs(name: str, shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], type]]:
    """Output name -> (shape, numpy dtype) at input ``shape`` (the seed guides' layouts)."""
    n, _, h, w = shape
    if name == "ocrnet_hrnetw18":
        return {"output": ((n, 1, h, w), np.int64)}  # argmax label map at full resolution
    if name == "hrnet_w48_ocr":
        return {o: ((n, 19, h // 4, w // 4), np.float32) for o in ("output1", "output2")}
    if name == "deeplabv2_r101":
        return {o: ((n, 19, h // 8 + 1, w // 8 + 1), np.float32) for o in ("output1", "output2")}
    return {"output": ((n, 1, h, w), np.float32)}  # DBNet probability map


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run PyTorch on one thread here: on a shared 2-core machine OpenMP's spinning threads
    make a 2-thread conv several times slower than a 1-thread one. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: onnxruntime on one thread too, for the same reason (figures are not measured here)
ORT_CONFIG = SessionConfig(intra_op_threads=1)


@pytest.fixture(scope="session")
def dcn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DBNet-DCN weights whose offsets really deform, saved the way MhLiao/DB saves them.

    A fresh dbnet_r50_dcn has zero offset convs (DCN then equals a plain conv times 0.5), so
    the parity test would not see a wrong sampling rule. Going through a checkpoint also
    exercises ``--weights`` with DB's ``model.module.`` prefix end to end.
    """
    from segc.models.dbnet import perturb_offsets

    model = zoo.build("dbnet_r50_dcn", seed=0)
    with torch.no_grad():
        assert perturb_offsets(model, generator=torch.Generator().manual_seed(7)) == 13
    path = tmp_path_factory.mktemp("weights") / "ic15_resnet50_deform"
    torch.save({"model.module." + k: v for k, v in model.state_dict().items()}, path)
    return path


@pytest.fixture(scope="session")
def exported(seed_onnx: Callable[..., Path], dcn_checkpoint: Path) -> Callable[[str], Path]:
    def get(name: str) -> Path:
        if name == "dbnet_r50_dcn":
            return seed_onnx(name, shape=SMALL[name], weights=str(dcn_checkpoint))
        return seed_onnx(name, shape=SMALL[name])

    return get


@pytest.fixture(scope="session")
def reference(dcn_checkpoint: Path) -> Callable[[str], "torch.nn.Module"]:
    """The PyTorch module each export came from (built again from the same seed)."""
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> "torch.nn.Module":
        if name not in cache:
            weights = dcn_checkpoint if name == "dbnet_r50_dcn" else None
            cache[name] = zoo.build(name, seed=0, weights=weights)
        return cache[name]

    return get


def recipe_input(name: str, shape: tuple[int, ...], seed: int = 3) -> np.ndarray:
    """Random RGB pixels normalised the way the model's recipe says (its real value range)."""
    pixels = np.random.default_rng(seed).uniform(0, 255, size=shape).astype(np.float32)
    return RECIPES[name].inputs[0].normalise(pixels)


def compare(name: str, model_path: Path, torch_model: "torch.nn.Module", shape: tuple[int, ...]) -> None:
    x = recipe_input(name, shape)
    with torch.no_grad():
        got = torch_model(torch.from_numpy(x))
    ref = [got] if isinstance(got, torch.Tensor) else list(got)
    proto = onnx.load(str(model_path))
    session = make_session(proto, ORT_CONFIG)
    outs = run_session(session, {zoo.get_entry(name).input_names[0]: x})
    expected = expected_outputs(name, shape)
    assert list(outs) == list(expected)
    for (out_name, value), torch_value in zip(outs.items(), ref, strict=False):
        want_shape, want_dtype = expected[out_name]
        assert value.shape == want_shape and value.dtype == want_dtype, (out_name, value.shape, value.dtype)
        t = torch_value.numpy()
        if want_dtype == np.int64:  # label map: argmax ties may flip a pixel or two
            agreement = float(np.mean(value.reshape(t.shape) == t))
            assert agreement >= 0.99, f"{out_name}: label agreement {agreement:.4f}"
            assert len(np.unique(t)) > 1, "degenerate label map: the test would prove nothing"
            continue
        scale = float(np.abs(t).max())
        assert scale > 0 and np.isfinite(value).all()
        np.testing.assert_allclose(value, t, rtol=1e-3, atol=1e-4 * max(scale, 1.0), err_msg=out_name)
        if value.shape[1] > 1:  # class logits: the label maps must agree too
            agreement = float(np.mean(value.argmax(1) == t.argmax(1)))
            assert agreement >= 0.99, f"{out_name}: argmax agreement {agreement:.4f}"


# ----------------------------------------------------------------------------- the five exports


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALL))
def test_export_structure_and_metadata(name: str, exported: Callable[[str], Path]) -> None:
    path = exported(name)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.ir_version <= 10
    opsets = {imp.domain: imp.version for imp in model.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == DEFAULT_OPSET[name]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[RECIPE_METADATA_KEY] == name and meta["segc.model"] == name
    assert meta["segc.exporter"] == "legacy" and meta["segc.opset"] == str(DEFAULT_OPSET[name])

    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    (inp,) = model.graph.input
    n, c, h, w = SMALL[name]
    assert inp.name == zoo.get_entry(name).input_names[0]
    want_in = {"dbnet_r50": [n, c, "height", "width"], "dbnet_r50_dcn": [n, c, "height", "width"],
               "deeplabv2_r101": ["batch", c, h, w], "ocrnet_hrnetw18": ["batch", c, h, w]}.get(name, [n, c, h, w])
    assert dims(inp) == want_in
    expected = expected_outputs(name, SMALL[name])
    assert [o.name for o in model.graph.output] == list(expected)
    for out in model.graph.output:
        want_shape, want_dtype = expected[out.name]
        assert onnx.helper.tensor_dtype_to_np_dtype(out.type.tensor_type.elem_type) == want_dtype
        got = dims(out)
        if name.startswith("dbnet"):
            assert got == [n, 1, "height", "width"]  # batch static, not an exporter-made symbol
        elif name in ("deeplabv2_r101", "ocrnet_hrnetw18"):  # dynamic batch, as the seeds' batch builds need
            assert got == ["batch", *want_shape[1:]]
        else:
            assert got == list(want_shape)

    ops = {node.op_type for node in model.graph.node}
    if name == "dbnet_r50_dcn":
        assert sum(node.op_type == "DeformConv" for node in model.graph.node) == 13
    else:
        assert "DeformConv" not in ops
    if name in ("ocrnet_hrnetw18", "hrnet_w48_ocr"):
        modes = {
            a.s for node in model.graph.node if node.op_type == "Resize" for a in node.attribute if a.name == "mode"
        }
        assert b"linear" in modes  # the Resizes the Ascend guides switch to nearest


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALL))
def test_onnxruntime_matches_pytorch(name: str, exported, reference) -> None:
    path, model = exported(name), reference(name)
    compare(name, path, model, SMALL[name])
    if name in SECOND:  # a dynamic model must be right at another shape of its range too
        compare(name, path, model, SECOND[name])


@pytest.mark.slow
def test_hrnet_w48_prune_selectors_name_the_classifier_convs(exported) -> None:
    """The recipe's structural selectors replace the guide's numbered Conv_1380 / Conv_1453."""
    import onnx_graphsurgeon as gs

    from segc.selectors import select_ordered

    graph = gs.import_onnx(onnx.load(str(exported("hrnet_w48_ocr")), load_external_data=True))
    selectors = RECIPES["hrnet_w48_ocr"].for_target("ascend").options["prune_outputs"]["outputs"]
    nodes = select_ordered(graph, selectors, kind="nodes")
    assert [n.op for n in nodes] == ["Conv", "Conv"]
    assert [n.outputs[0].name for n in nodes] == ["output1", "output2"]
    assert all(n.inputs[1].shape[0] == 19 for n in nodes)  # 19 Cityscapes classes


# ----------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "ocrnet"}, r"unknown model 'ocrnet'; known models: ocrnet_hrnetw18, hrnet_w48_ocr"),
        ({"shape": (3, 128, 256)}, r"4-D N,C,H,W input, got 3 dims"),
        ({"shape": (1, 1, 128, 256)}, r"3 \(RGB\) channels, got C=1"),
        ({"shape": (1, 3, 100, 256)}, r"must be multiples of 32 .*H=100"),
        ({"name": "deeplabv2_r101", "shape": (1, 3, 124, 252)}, r"multiples of 8 .*H=124, W=252"),
        ({"name": "dbnet_r50_dcn", "opset": 17}, r"needs opset 19 or newer \(ONNX DeformConv"),
        ({"opset": 10}, r"resizes bilinearly.*use --opset 11"),
        ({"opset": 21}, r"legacy exporter writes opsets up to 20"),
        ({"exporter": "jit"}, r"--exporter 'jit': choose one of legacy, dynamo"),
        ({"name": "dbnet_r50", "logits": True}, r"dbnet_r50 already outputs a probability map"),
        ({"weights": "/nonexistent/ckpt.pth"}, r"--weights /nonexistent/ckpt.pth: no such file"),
    ],
)
def test_bad_requests_fail_in_one_line(kwargs: dict, message: str, tmp_path: Path) -> None:
    args = {"name": "ocrnet_hrnetw18", "shape": (1, 3, 128, 256)} | kwargs
    name = args.pop("name")
    out = tmp_path / "m.onnx"
    with pytest.raises(SegcError, match=message) as err:
        zoo.export_model(name, out, **args)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_a_text_file_as_weights_fails_before_building(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights")
    with pytest.raises(SegcError, match="not a readable PyTorch checkpoint"):
        zoo.export_model("hrnet_w48_ocr", tmp_path / "m.onnx", shape=(1, 3, 128, 256), weights=notes)


def test_never_writes_over_the_weights_file(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pth"
    torch.save({"w": torch.ones(1)}, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(SegcError, match="over the --weights file"):
        zoo.export_model("dbnet_r50", ckpt, shape=(1, 3, 64, 64), weights=ckpt)
    assert ckpt.read_bytes() == before


def test_model_names_and_lazy_torch() -> None:
    assert zoo.model_names() == list(RECIPES)
    code = ("import sys; sys.modules['torch'] = None\n"
            "from segc.models import zoo\n"
            "from segc.errors import SegcError\n"
            "try:\n    zoo.export_model('dbnet_r50', 'x.onnx')\n"
            "except SegcError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("`segc export` needs PyTorch; install the export extra"), done.stderr


# ----------------------------------------------------------------------------- segc export


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "segc", "export", *argv], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    existing = tmp_path / "dbnet_r50.onnx"
    existing.write_bytes(b"keep me")
    cases = {
        ("nosuchmodel",): "unknown model 'nosuchmodel'",
        ("dbnet_r50",): "already exists; pass --force",  # default output MODEL.onnx in the cwd
        ("dbnet_r50", "-o", "a.onnx", "--shape", "1,3,100,100"): "multiples of 32",
        ("dbnet_r50", "-o", "a.onnx", "--shape", "1,3,x,64"): "malformed --shape",
        ("dbnet_r50", "-o", "a.onnx", "--dynamic", "--static"): "not allowed with argument",
    }
    for argv, message in cases.items():
        done = _cli(*argv, cwd=tmp_path)
        assert done.returncode == 2, (argv, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("segc: error: ") and message in lines[0], (argv, lines)
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "a.onnx").exists()


def test_run_export_refuses_weights_as_output_even_with_force(tmp_path: Path) -> None:
    ckpt = tmp_path / "w.pth"
    torch.save({"w": torch.ones(1)}, ckpt)
    with pytest.raises(SegcError, match="over the --weights file"):
        run_export(_parse("dbnet_r50", "-o", str(ckpt), "--weights", str(ckpt), "--force"))


def test_dynamic_flags_parse_to_none_true_false() -> None:
    assert _parse("dbnet_r50").dynamic is None  # the model's own default
    assert _parse("dbnet_r50", "--dynamic").dynamic is True
    assert _parse("deeplabv2_r101", "--static").dynamic is False
    args = _parse("dbnet_r50")
    assert (args.output, args.exporter, args.opset, args.seed, args.force) == (None, "legacy", None, 0, False)


def test_ocrnet_logits_switch_drops_the_argmax() -> None:
    model = zoo.build("ocrnet_hrnetw18", logits=True, seed=0)
    with torch.no_grad():
        out = model(torch.from_numpy(recipe_input("ocrnet_hrnetw18", (1, 3, 64, 128))))
    assert out.dtype == torch.float32 and tuple(out.shape) == (1, 19, 64, 128)


@pytest.mark.slow
def test_cli_export_dynamic_dbnet_with_the_dynamo_exporter(tmp_path: Path) -> None:
    """One real ``segc export`` run end to end: the dynamo exporter, dynamic H/W, the summary line."""
    done = _cli("dbnet_r50", "--shape", "1,3,64,96", "--exporter", "dynamo", "--seed", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "dbnet_r50.onnx: dbnet_r50 (dynamo exporter, opset 18, dynamic 1x3x64x96)"
    )
    assert " nodes, " in lines[0] and " params, " in lines[0] and "MB" in lines[0]
    out = tmp_path / "dbnet_r50.onnx"
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["segc.exporter"] == "dynamo" and meta["segc.opset"] == "18" and model.ir_version <= 10
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    # torch.export's symbols (s0, s53...) renamed to the zoo's names, outputs tidied
    assert dims(model.graph.input[0]) == [1, 3, "height", "width"]
    assert dims(model.graph.output[0]) == [1, 1, "height", "width"]
    reference = zoo.build("dbnet_r50", seed=2)
    compare("dbnet_r50", out, reference, (1, 3, 64, 96))
    compare("dbnet_r50", out, reference, (1, 3, 128, 64))


def test_exporter_made_symbols_on_static_axes_become_values() -> None:
    """OCRNet's legacy export names its label map's H ``ArgMaxoutput_dim_2`` although H is static."""
    from onnx import TensorProto, helper

    def graph_with(in_dims: list, out_dims: list) -> onnx.ModelProto:
        inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims)
        out = helper.make_tensor_value_info("output", TensorProto.INT64, out_dims)
        node = helper.make_node("ArgMax", ["x"], ["output"], axis=1)
        return helper.make_model(helper.make_graph([node], "g", [inp], [out]))

    entry = zoo.get_entry("ocrnet_hrnetw18")
    proto = graph_with(["batch", 3, 64, 128], ["batch", 1, "ArgMaxoutput_dim_2", "ArgMaxoutput_dim_3"])
    zoo._tidy_output_dims(proto, entry, ("output",), dynamic=True)
    assert [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [
        "batch",
        1,
        64,
        128,
    ]
    # DeepLabv2's outputs are H/8 + 1; a static batch replaces an invented batch symbol
    proto = graph_with([2, 3, 64, 128], ["N", 19, "h", 17])
    zoo._tidy_output_dims(proto, zoo.get_entry("deeplabv2_r101"), ("output",), dynamic=False)
    assert [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [2, 19, 9, 17]
