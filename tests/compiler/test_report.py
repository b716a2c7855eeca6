"""segc.report: report.json's fields from a real pipeline run, and the Markdown a person reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from segc.pipeline import PassSpec, run_pipeline
from segc.report import (
    build_report,
    pass_rows,
    render_markdown,
    unverified_lines,
    versions,
    write_reports,
)


def conv() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
                           helper.make_node("Identity", ["a"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_report_of_a_verified_run(tmp_path: Path) -> None:
    result = run_pipeline(conv(), [PassSpec("cleanup")], verify="each")
    report = build_report(result, target="onnxruntime", status="ok", input={"path": "m.onnx"})
    assert report["target"] == "onnxruntime" and report["verify_mode"] == "each"
    assert report["failed_pass"] is None and report["ran_before_failure"] is None and report["internal_error"] is None
    (cleanup,) = report["passes"]
    assert cleanup["name"] == "cleanup" and cleanup["changed"] and cleanup["status"] == "ok"
    assert cleanup["verdict"]["ok"] and cleanup["verdict"]["summary"]["cosine"] > 0.999999
    row = pass_rows(report)[0]
    assert row[:4] == ["1", "cleanup", "exact", "yes"] and row[6] == "ok"
    assert versions()["onnxruntime"] and report["versions"]["segc"]
    json_path, md_path = write_reports(tmp_path, report)
    assert json.loads(json_path.read_text())["passes"][0]["name"] == "cleanup"
    md = md_path.read_text()
    assert md.startswith("# segc report: m.onnx -> onnxruntime") and "**Status: ok**" in md
    assert "| 1 | cleanup | exact | yes |" in md


def test_a_failed_run_names_the_pass_and_those_before_it() -> None:
    result = run_pipeline(conv(), [PassSpec("cleanup"), PassSpec("cleanup")], verify="none")
    result.failed_pass, result.failure = "cleanup", "pass cleanup failed verification (exact): y: max abs error"
    report = build_report(result, status="failed")
    assert report["ran_before_failure"] == []
    assert "**Status: failed** — pass cleanup failed verification" in render_markdown(report)
    assert [p["status"] for p in report["passes"]] == ["unverified", "unchanged"]


def test_unverified_lines_say_why_and_how_to_fix() -> None:
    report = {"passes": [{"name": "simplify", "status": "unverified",
                          "verdict": {"unverified": ["y: the reference carries no signal"], "fix": "give inputs"}}]}
    assert unverified_lines(report) == ["simplify: UNVERIFIED, y: the reference carries no signal; give inputs"]
    assert unverified_lines({"passes": [], "end_verdict": {"unverified": ["y: flat"], "fix": "f"}}) == [
        "pipeline: UNVERIFIED, y: flat; f"]
    assert unverified_lines({"passes": [{"name": "a", "status": "ok", "verdict": {}}]}) == []
