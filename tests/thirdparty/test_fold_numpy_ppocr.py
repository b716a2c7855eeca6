"""onnx-simplifier's folds on a third-party model (PP-OCRv4 detector, from its wheel): each one
numpy computes (segc.passes._fold_numpy) is onnxruntime's result, byte for byte."""

from __future__ import annotations

import harness

from tests.onnxsim_parity import folds_checked_against_onnxruntime


def test_ppocrv4_folds_match_onnxruntime(thirdparty_model) -> None:  # type: ignore[no-untyped-def]
    assert folds_checked_against_onnxruntime(thirdparty_model(harness.MODELS_BY_NAME["ppocrv4_det"])) >= 1
