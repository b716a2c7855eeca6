"""What a compile imports: onnx-simplifier's C++ core, never its package (and so never torch).

onnxsim 0.8's package ``__init__`` pulls in torch through ``onnxsim/ppq_integration.py``
whenever torch is installed: seconds of every compile for nothing segc uses.
The check runs a real ``segc compile`` in a fresh interpreter and asks ``sys.modules`` at exit.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

PROBE = ("import atexit, sys\n"
         "atexit.register(lambda: print('LOADED', 'torch' in sys.modules, 'onnxsim' in sys.modules, file=sys.stderr))\n"
         "from segc.cli import main\n"
         "sys.exit(main(sys.argv[1:]))\n")


def _foldable(path: Path) -> Path:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    two = numpy_helper.from_array(np.array([2.0], np.float32), "two")
    g = helper.make_graph(
        [helper.make_node("Add", ["two", "two"], ["four"]),
         helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
         helper.make_node("Mul", ["a", "four"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], [w, two])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    return path


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the point is a compile with torch installed")
@pytest.mark.parametrize("verify", ["none", "each"])
def test_compile_imports_neither_torch_nor_the_onnxsim_package(tmp_path: Path, verify: str) -> None:
    model = _foldable(tmp_path / "m.onnx")
    proc = subprocess.run([sys.executable, "-c", PROBE, "compile", str(model), "--target", "onnxruntime",
                           "-o", str(tmp_path / "out"), "--verify", verify],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "out" / "report.json").read_text()
    assert '"simplify"' in report and '"changed": true' in report  # onnx-simplifier really ran and folded
    assert '"weights_left_out": 1' in report  # and was handed the model without the weight it cannot use
    loaded = [ln for ln in proc.stderr.splitlines() if ln.startswith("LOADED")]
    assert loaded == ["LOADED False False"], proc.stderr[-2000:]


# Modules a ``--verify none`` compile never needs, each once on its path and taken off it (issue 11:
# the fixed cost every compile pays, which small models feel). A change that brings one back
# onto the path (a module-level import in a module every compile loads) fails here, with the
# module's name. networkx: pass ordering is plain dicts; networkx words only the errors. The
# verifier's modules (sessions, probe inputs, localisation, the dataset judge): imported where
# a run verifies, not by the pipeline, compile_cmd or the emulate_* passes every compile registers.
# ctypes.util: malloc_trim is found without find_library, which runs ldconfig in a subprocess.
NOT_IMPORTED_WITHOUT_VERIFY = ("networkx", "segc.verify", "segc.boundary_verify", "segc.localize",
                               "segc.verify_inputs", "segc.input_roles", "segc.text_images", "segc.task_budget",
                               "segc.datasets", "ctypes.util")

# onnxruntime itself (0.03 to 0.12 s to import): a vendor target without verification runs no
# session; onnx-simplifier's folds go to numpy where it is exact (segc.passes._fold_numpy), and
# this model's fold (2 + 2) is one of those. The onnxruntime target loads it to write its copy.
ALSO_NOT_IMPORTED = {"onnxruntime": (), "ascend": ("onnxruntime",)}


def _probe_modules(names: tuple[str, ...]) -> str:
    return ("import atexit, sys\n"
            f"names = {names!r}\n"
            "atexit.register(lambda: print('LOADED', *[n for n in names if n in sys.modules], file=sys.stderr))\n"
            "from segc.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")


@pytest.mark.parametrize("target", ["onnxruntime", "ascend"])
def test_compile_without_verification_imports_none_of_what_only_verification_needs(tmp_path: Path,
                                                                                    target: str) -> None:
    model = _foldable(tmp_path / "m.onnx")
    probe = _probe_modules(NOT_IMPORTED_WITHOUT_VERIFY + ALSO_NOT_IMPORTED[target])
    proc = subprocess.run([sys.executable, "-c", probe, "compile", str(model), "--target", target,
                           "-o", str(tmp_path / "out"), "--verify", "none"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"changed": true' in (tmp_path / "out" / "report.json").read_text()  # the passes really ran
    loaded = [ln for ln in proc.stderr.splitlines() if ln.startswith("LOADED")]
    assert loaded == ["LOADED"], proc.stderr[-2000:]
