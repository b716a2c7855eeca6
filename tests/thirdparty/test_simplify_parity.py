"""simplify on models segc did not write: leaving out the weights onnx-simplifier cannot use
changes nothing (node for node, the same weights), across both exporters, BatchNormalization
left for onnx-simplifier to fuse (dynamo), attention MatMuls and a packaged trained file."""

from __future__ import annotations

import harness
import pytest

from segc.modelio import load_model
from tests.onnxsim_parity import assert_same_graph, simplified_both_ways


@pytest.mark.parametrize("name", ["resnet_fpn_dynamo", "upernet_convnext_legacy", "segformer_dynamo", "ppocrv4_det"])
def test_leaving_weights_out_changes_nothing(thirdparty_model, name: str) -> None:  # type: ignore[no-untyped-def]
    model = load_model(thirdparty_model(harness.MODELS_BY_NAME[name]), lazy=True)
    out, full, result = simplified_both_ways(model)
    assert_same_graph(out, full)
    if name != "ppocrv4_det":  # paddle2onnx writes its weights as Constant nodes, not initializers
        assert result.stats["weights_left_out"] > 0
