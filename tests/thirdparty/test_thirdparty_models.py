"""The acceptance set of third-party models x every target, compiled with a range.

Per (model, target): ``segc compile MODEL --target T --input-shape NAME:1,3,LO~HI,LO~HI``
(plus ``--verify-inputs`` of rendered text for a text detector) must exit 0 with a report in
which every pass was verified, and the compiled ONNX (vendor ops lowered back with
``segc.lowering``) must match the input model in onnxruntime at two shapes inside the range,
one odd, compared here and not by segc's verifier. ``bench/thirdparty_matrix.py`` runs the
same cells as a table. The model set is ``harness.MODELS``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import harness

CELLS = [
    pytest.param(spec, target, id=f"{spec.name}-{target}") for spec in harness.MODELS for target in harness.TARGETS
]


@pytest.mark.parametrize(("spec", "target"), CELLS)
def test_compiles_verified_and_rechecked(
    spec: harness.ModelSpec, target: str, thirdparty_model, tmp_path: Path
) -> None:
    model = thirdparty_model(spec)
    res = harness.compile_model(model, spec, target, tmp_path / "out")
    code, verdict = res.exit_code, res.verdict_line()
    assert code == 0, f"segc compile exited {code}: {verdict}"
    problems = harness.report_problems(res)
    assert not problems, problems
    checks = harness.recheck(model, res.compiled_onnx, spec)
    assert {c.shape for c in checks} == {spec.dims(h, w) for h, w in spec.check_shapes}
    assert checks and all(c.ok for c in checks), harness.describe(checks)
    if spec.content is harness.Content.TEXT:
        # the rendered text must light the probability map up, else the check compared zeros
        assert max(c.ref_max for c in checks) > 0.5, harness.describe(checks)
