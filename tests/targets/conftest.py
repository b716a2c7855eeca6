"""Fixtures for the target tests: tiny ONNX graphs and awkward output folders.

The targets never need a real network to be tested: legality looks at op types, attributes
and shapes, and the emitters at names and shapes. So every model here is a few nodes built
with onnx.helper, which keeps the whole folder well under a minute.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from segc.shapes import ShapeRange, parse_shape_range
from segc.targets.base import BuildOptions

# Folder names a shell would mangle if any path were left unquoted.
AWKWARD_NAMES = ["out dir", "it's \"quoted\"", "cost $HOME `x` $(id)", "semi;colon & amp"]


@pytest.fixture(params=AWKWARD_NAMES, ids=["space", "quotes", "dollar", "semicolon"])
def awkward_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """An output folder whose name contains spaces, quotes, ``$`` or shell punctuation."""
    path = tmp_path / request.param
    path.mkdir()
    return path


@pytest.fixture
def nasty_dir(tmp_path: Path) -> Path:
    """One output folder whose name has all of the above at once (for the slower end-to-end runs)."""
    path = tmp_path / "it's \"my\" $HOME `id` out; dir & more"
    path.mkdir()
    return path


def _value(name: str, dims: Sequence[int | str] | None, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None if dims is None else list(dims))


@pytest.fixture
def conv_model() -> Callable[..., onnx.ModelProto]:
    """``conv_model(dims=(1,3,'H','W'), opset=17, out_elem=FLOAT)``: x -> Conv -> Relu -> y."""

    def build(
        dims: Sequence[int | str] = (1, 3, "H", "W"),
        opset: int = 17,
        out_elem: int = TensorProto.FLOAT,
        name: str = "x",
    ) -> onnx.ModelProto:
        rng = np.random.default_rng(0)
        w = helper.make_tensor(
            "w", TensorProto.FLOAT, [4, 3, 3, 3], rng.standard_normal(108).astype(np.float32).tolist()
        )
        nodes = [
            helper.make_node("Conv", [name, "w"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu1"),
        ]
        if out_elem == TensorProto.FLOAT:
            nodes.append(helper.make_node("Identity", ["r"], ["y"], name="out"))
        else:
            nodes.append(helper.make_node("ArgMax", ["r"], ["y"], name="argmax", axis=1, keepdims=1))
        graph = helper.make_graph(nodes, "g", [_value(name, dims)], [_value("y", None, out_elem)], [w])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)

    return build


@pytest.fixture
def single_node_model() -> Callable[..., onnx.ModelProto]:
    """``single_node_model(op, domain="", opset=17, **attrs)``: one node between x and y."""

    def build(
        op: str, domain: str = "", opset: int = 17, inputs: Sequence[str] = ("x",), **attrs: object
    ) -> onnx.ModelProto:
        node = helper.make_node(op, list(inputs), ["y"], name=f"{op.lower()}_0", domain=domain, **attrs)
        opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
        graph = helper.make_graph([node], "g", [_value("x", (1, 3, 8, 8))], [_value("y", None)])
        return helper.make_model(graph, opset_imports=opsets, ir_version=10)

    return build


@pytest.fixture
def resize_model() -> Callable[..., onnx.ModelProto]:
    """``resize_model(shape_scales=False, mode="nearest", ctm=..., opset=13)``.

    With ``shape_scales`` the scales come from the DBNet neck's chain (Shape -> Gather ->
    Mul -> Cast -> Unsqueeze -> Concat -> Div), as the legacy exporter writes
    ``F.interpolate(scale_factor=2)`` for dynamic H and W; otherwise they are a constant.
    """

    def build(
        shape_scales: bool = False,
        mode: str = "nearest",
        ctm: str = "asymmetric",
        opset: int = 13,
        nearest_mode: str = "floor",
    ) -> onnx.ModelProto:
        inits = [helper.make_tensor("roi", TensorProto.FLOAT, [0], [])]
        nodes: list[onnx.NodeProto] = []
        if shape_scales:
            inits += [
                helper.make_tensor("idx", TensorProto.INT64, [2], [2, 3]),
                helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
                helper.make_tensor("ones", TensorProto.FLOAT, [2], [1.0, 1.0]),
            ]
            nodes += [
                helper.make_node("Shape", ["x"], ["s"], name="shape"),
                helper.make_node("Gather", ["s", "idx"], ["hw"], name="gather", axis=0),
                helper.make_node("Cast", ["hw"], ["hwf"], name="cast", to=TensorProto.FLOAT),
                helper.make_node("Mul", ["hwf", "two"], ["hw2"], name="mul"),
                helper.make_node("Div", ["hw2", "hwf"], ["k"], name="div"),
                helper.make_node("Concat", ["ones", "k"], ["scales"], name="concat", axis=0),
            ]
        else:
            inits.append(helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 2.0, 2.0]))
        attrs: dict[str, object] = {"mode": mode, "coordinate_transformation_mode": ctm}
        if mode == "nearest":
            attrs["nearest_mode"] = nearest_mode
        nodes.append(helper.make_node("Resize", ["x", "roi", "scales"], ["y"], name="resize_up", **attrs))
        graph = helper.make_graph(nodes, "g", [_value("x", (1, 3, "H", "W"))], [_value("y", None)], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)

    return build


@pytest.fixture
def deform_model() -> Callable[..., onnx.ModelProto]:
    """``deform_model(op="DeformConv", domain="", **attrs)``: x, offsets from a Conv -> deform conv."""

    def build(op: str = "DeformConv", domain: str = "", opset: int = 19, **attrs: object) -> onnx.ModelProto:
        rng = np.random.default_rng(1)
        inits = [
            helper.make_tensor(
                "w_off", TensorProto.FLOAT, [18, 3, 3, 3], rng.standard_normal(18 * 27).astype(np.float32).tolist()
            ),
            helper.make_tensor(
                "w", TensorProto.FLOAT, [4, 3, 3, 3], rng.standard_normal(108).astype(np.float32).tolist()
            ),
        ]
        nodes = [
            helper.make_node("Conv", ["x", "w_off"], ["off"], name="offset_conv", pads=[1, 1, 1, 1]),
            helper.make_node(op, ["x", "w", "off"], ["y"], name="dcn", domain=domain, **attrs),
        ]
        opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
        graph = helper.make_graph(nodes, "g", [_value("x", (1, 3, 8, 8))], [_value("y", None)], inits)
        return helper.make_model(graph, opset_imports=opsets, ir_version=10)

    return build


@pytest.fixture
def options() -> Callable[..., BuildOptions]:
    """``options("x:1,3,640~4096,640~4096", precision=..., ...)``: BuildOptions with shapes."""

    def build(*shapes: str, opt: Sequence[int] | None = None, **kwargs: object) -> BuildOptions:
        ranges: list[ShapeRange] = [parse_shape_range(s) for s in shapes]
        if opt is not None:
            ranges = [ranges[0].with_opt(tuple(opt))] + ranges[1:]
        kwargs.setdefault("command_line", "segc compile m.onnx --target t -o 'out dir'")
        kwargs.setdefault("segc_version", "0.1.0")
        kwargs.setdefault("input_sha256", "0" * 64)
        return BuildOptions(shape_ranges=ranges, **kwargs)  # type: ignore[arg-type]

    return build


@pytest.fixture
def bash_syntax_ok() -> Callable[[Path], None]:
    """Assert that ``bash -n`` accepts a script."""

    def check(path: Path) -> None:
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    return check


@pytest.fixture
def py_compiles() -> Callable[[Path], None]:
    """Assert that an emitted Python program compiles."""

    def check(path: Path) -> None:
        proc = subprocess.run([sys.executable, "-m", "py_compile", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    return check


# ---------------------------------------------------------------- stand-ins for vendor tools

_RECORDER = """#!{python} -S
import json, os, sys
with open(os.environ["SEGC_FAKE_LOG"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
"""


@pytest.fixture
def fake_tools(tmp_path: Path) -> Callable[..., tuple[dict[str, str], Path]]:
    """``fake_tools("atc", ...) -> (env, log)``: recording stand-ins on PATH.

    Running a build.sh with ``env`` puts executables of those names first on PATH; each
    appends its argv (as JSON) to ``log``, so a test compares what the vendor tool *would*
    have received after bash parsed the script, quoting included.
    """

    def make(*names: str) -> tuple[dict[str, str], Path]:
        import os

        bin_dir = tmp_path / "fake-bin"
        bin_dir.mkdir(exist_ok=True)
        for name in names:
            tool = bin_dir / name
            tool.write_text(_RECORDER.format(python=sys.executable))
            tool.chmod(0o755)
        log = tmp_path / "fake-tools.log"
        env = dict(
            os.environ, PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}", SEGC_FAKE_LOG=str(log)
        )
        return env, log

    return make


_FAKE_MM_RUNTIME = '''
"""A stand-in for MagicMind's Python runtime, recording what a build program asks of it."""
import json, os

CALLS = {"config": [], "dims": {}, "calibration": []}


class Status:
    def __init__(self, code=0, message=""):
        self.code, self.message = code, message
    def ok(self):
        return self.code == 0
    @staticmethod
    def OK():
        return Status()
    def __str__(self):
        return "status %s %s" % (self.code, self.message)


class Code:
    OUT_OF_RANGE = 11


class ModelKind:
    kOnnx = "onnx"


class DataType:
    FLOAT32 = "float32"
    FLOAT16 = "float16"


class QuantizationAlgorithm:
    LINEAR_ALGORITHM = "linear"


class Dims:
    def __init__(self, dims):
        self.dims = [int(d) for d in dims]
    def GetDimValue(self, i):
        return self.dims[i]


class _Tensor:
    def __init__(self, index):
        self.index = index
    def set_dimension(self, dims):
        CALLS["dims"][self.index] = dims.dims
        return Status()


class _Value:
    def get_data_type(self):
        return DataType.FLOAT32


class _Node:
    """A parsed node: the stand-in network has the ONNX model's nodes, read with onnx."""
    def __init__(self, name):
        self.name = name
    def get_node_name(self):
        return self.name
    def get_input_count(self):
        return 1
    def get_output_count(self):
        return 1
    def get_input(self, i):
        return _Value()
    def get_output(self, i):
        return _Value()
    def set_precision(self, i, dtype):
        CALLS.setdefault("node_precision", []).append([self.name, "input", i, dtype])
        return Status()
    def set_output_type(self, i, dtype):
        CALLS.setdefault("node_precision", []).append([self.name, "output", i, dtype])
        return Status()


class Network:
    nodes = []
    def get_input(self, index):
        return _Tensor(index)
    def get_all_nodes_in_network(self):
        return [_Node(n) for n in self.nodes]


class BuilderConfig:
    def parse_from_string(self, text):
        CALLS["config"].append(json.loads(text))
        return Status()


class CalibDataInterface:
    def __init__(self):
        pass


class Calibrator:
    def __init__(self, datas):
        self.datas = datas
    def set_quantization_algorithm(self, algo):
        CALLS["algorithm"] = algo
        return Status()
    def calibrate(self, network, config):
        data = self.datas[0]
        data.reset()
        while data.next().ok():
            sample = data.get_sample()
            CALLS["calibration"].append({"shape": list(sample.shape), "dtype": str(sample.dtype),
                                         "first": sample.reshape(-1)[:6].tolist(), "dims": data.get_shape().dims,
                                         "type": data.get_data_type()})
        return Status()


class System:
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False
    def device_count(self):
        return 2


class Device:
    id = -1
    def active(self):
        CALLS["device"] = self.id
        return Status()


class _Model:
    def __init__(self, name):
        self.name = name
    def serialize_to_file(self, path):
        with open(path, "w") as f:
            f.write("fake mm model")
        CALLS["serialized"] = path
        with open(os.environ["SEGC_FAKE_MM_LOG"], "w") as log:
            json.dump(CALLS, log)
        return Status()


class Builder:
    def build_model(self, name, network, config):
        CALLS["model_name"] = name
        return _Model(name)
'''

_FAKE_MM_PARSER = '''
from magicmind.python.runtime import CALLS, Status


class Parser:
    def __init__(self, kind):
        CALLS["parser_kind"] = kind
    def parse(self, network, path):
        import onnx
        CALLS["parsed"] = path
        network.nodes = [n.name for n in onnx.load(path).graph.node]
        return Status()
'''


@pytest.fixture
def fake_magicmind(tmp_path: Path) -> Callable[[], tuple[dict[str, str], Path]]:
    """``fake_magicmind() -> (env, log)``: an importable ``magicmind`` that records calls."""

    def make() -> tuple[dict[str, str], Path]:
        import os

        root = tmp_path / "fake-site"
        runtime = root / "magicmind" / "python" / "runtime"
        runtime.mkdir(parents=True, exist_ok=True)
        (root / "magicmind" / "__init__.py").write_text("")
        (root / "magicmind" / "python" / "__init__.py").write_text("")
        (runtime / "__init__.py").write_text(_FAKE_MM_RUNTIME)
        (runtime / "parser.py").write_text(_FAKE_MM_PARSER)
        log = tmp_path / "fake-mm.json"
        env = dict(os.environ, PYTHONPATH=str(root), SEGC_FAKE_MM_LOG=str(log))
        return env, log

    return make


def read_fake_log(log: Path) -> list[list[str]]:
    """The argv lines a ``fake_tools`` log holds."""
    import json

    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def fake_log() -> Callable[[Path], list[list[str]]]:
    return read_fake_log
