"""simplify on models segc did not write: leaving out the weights onnx-simplifier cannot use
changes nothing (node for node, the same weights), across both exporters, BatchNormalization
left for onnx-simplifier to fuse (dynamo), attention MatMuls and a packaged trained file."""

from __future__ import annotations

import harness
import pytest

from segc.modelio import load_model
from tests.onnxsim_parity import assert_same_graph, simplified_both_ways, simplified_whole_and_in_segments


@pytest.mark.parametrize("name", ["resnet_fpn_dynamo", "upernet_convnext_legacy", "segformer_dynamo", "ppocrv4_det"])
def test_leaving_weights_out_changes_nothing(thirdparty_model, name: str) -> None:  # type: ignore[no-untyped-def]
    model = load_model(thirdparty_model(harness.MODELS_BY_NAME[name]), lazy=True)
    out, full, result = simplified_both_ways(model)
    assert_same_graph(out, full)
    if name != "ppocrv4_det":  # paddle2onnx writes its weights as Constant nodes, not initializers
        assert result.stats["weights_left_out"] > 0


@pytest.mark.parametrize("name", ["resnet_fpn_legacy", "upernet_convnext_legacy"])
def test_simplifying_in_segments_changes_nothing(thirdparty_model, name: str) -> None:  # type: ignore[no-untyped-def]
    """Cut as a 50k-node graph is (segc.passes._simplify_segments), with the cut size lowered
    so these models of 60 to 200 nodes get a cut: what onnx-simplifier gives on the whole
    graph, node for node. resnet_fpn's cut needs the batch size the core finds behind a
    computed Resize size (data propagation); convnext's, the core's made-up names renumbered."""
    model = load_model(thirdparty_model(harness.MODELS_BY_NAME[name]), lazy=True)
    cut, whole, result = simplified_whole_and_in_segments(model, 10)
    assert result.stats["segments"] >= 2
    assert_same_graph(cut, whole, core_names=True)
