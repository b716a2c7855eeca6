"""simplify on a third-party model (PP-OCRv4 detector): onnx-simplifier's two quadratic
optimizer passes skipped there and done by segc leave no more nodes than onnx-simplifier
with all its passes, and the function is the same."""

from __future__ import annotations

import harness
import numpy as np
import onnx

from segc.ortrun import run_model
from segc.passbase import PassContext
from segc.passes import _onnxsim_core as core
from segc.passes.simplify import Simplify


def test_ppocrv4_simplify_matches_full_onnxsim(thirdparty_model) -> None:  # type: ignore[no-untyped-def]
    path = thirdparty_model(harness.MODELS_BY_NAME["ppocrv4_det"])
    model = onnx.load(str(path))
    out, result = Simplify().apply(model, PassContext())
    full = onnx.load_from_string(core.core().simplify(core.executor(), model.SerializeToString(), ["fuse_attention"],
                                                      True, True, 1 << 30, None, None, True, False, False,
                                                      None, None, None))
    assert "unit_nodes_removed" in result.stats
    assert len(out.graph.node) <= len(full.graph.node)
    assert len(out.graph.initializer) <= len(full.graph.initializer)
    name = model.graph.input[0].name
    x = np.random.default_rng(0).random((1, 3, 64, 96), dtype=np.float32)
    a, b = run_model(out, {name: x}), run_model(model, {name: x})
    for k in b:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)
