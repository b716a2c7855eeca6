"""Whose fault it is: a bug exits 70 with one line, a refusing pass exits 1 with its report, usage exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from segc.cli import build_parser, main
from segc.errors import ExitStatus, SegcError
from segc.passbase import PassResult, get_pass
from segc.pipeline import PassSpec, run_pipeline
from tests.graphs import conv_identity_relu as tiny




@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(tiny().SerializeToString())
    return path


def _compile(src: Path, out: Path, *extra: str) -> list[str]:
    return ["compile", str(src), "--target", "onnxruntime", "-o", str(out), "--passes", "cleanup", *extra]


def _crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: object, graph: object, ctx: object) -> PassResult:
        raise RuntimeError("cleanup broke\nsecond line of detail")

    monkeypatch.setattr(get_pass("cleanup"), "run", boom)


def _refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    def no(self: object, graph: object, ctx: object) -> PassResult:
        raise SegcError("cleanup: this graph has a shape it cannot take")

    monkeypatch.setattr(get_pass("cleanup"), "run", no)


def _segc_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("segc:")]


def test_a_crashing_pass_is_an_internal_error_with_the_traceback_in_the_report(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _crash(monkeypatch)
    out = tmp_path / "out"
    code = main(_compile(src, out))
    err = capsys.readouterr().err
    assert code == ExitStatus.INTERNAL == 70
    assert "Traceback" not in err
    assert _segc_lines(err) == [f"segc: internal error: RuntimeError: cleanup broke (report: {out / 'report.json'})"]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "internal_error" and report["failed_pass"] == "cleanup"
    crash = report["internal_error"]
    assert crash["type"] == "RuntimeError" and crash["where"] == "pass cleanup"
    assert "Traceback (most recent call last)" in crash["traceback"] and "in boom" in crash["traceback"]
    assert "second line of detail" in crash["traceback"]
    assert report["passes"][0]["status"] == "error"
    assert "in boom" in (out / "report.md").read_text()  # the Markdown carries it too


def test_debug_prints_the_crash_traceback(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _crash(monkeypatch)
    code = main(["--debug", *_compile(src, tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 70 and "Traceback (most recent call last)" in err and "in boom" in err
    assert _segc_lines(err)[-1].startswith("segc: internal error: RuntimeError: cleanup broke (report: ")


def test_a_bug_outside_the_pipeline_is_one_line_and_leaves_the_folder_untouched(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import segc.compile_cmd

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("lost")

    monkeypatch.setattr(segc.compile_cmd, "build_report", broken)
    out = tmp_path / "out"
    assert main(_compile(src, out)) == 70
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert _segc_lines(err) == ["segc: internal error: KeyError: 'lost' (run with --debug for the traceback)"]
    assert not out.exists()  # complete or untouched: a crash before the commit writes nothing
    assert main(["--debug", *_compile(src, out)]) == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert _segc_lines(err) == ["segc: internal error: KeyError: 'lost'"]


def test_a_refusing_pass_exits_1_and_the_report_names_it(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _refuse(monkeypatch)
    out = tmp_path / "out"
    code = main(_compile(src, out))
    err = capsys.readouterr().err
    assert code == ExitStatus.FAILED == 1
    assert "Traceback" not in err and not any("error:" in line for line in _segc_lines(err)), err
    assert "FAILED: pass cleanup refused the graph: cleanup: this graph has a shape it cannot take" in err
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["failed_pass"] == "cleanup" and report["internal_error"] is None
    assert report["passes"][0]["status"] == "refused" and "cannot take" in report["passes"][0]["error"]
    assert "refused the graph" in (out / "report.md").read_text()


def test_pipeline_records_refusal_and_crash() -> None:
    class Refuse:
        def run(self, graph: object, ctx: object) -> PassResult:
            raise SegcError("no")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(get_pass("cleanup"), "run", Refuse.run)
        result = run_pipeline(tiny(), [PassSpec("cleanup")], verify="none")
    assert result.failed_pass == "cleanup" and result.records[0].status == "refused" and result.internal_error is None
    with pytest.MonkeyPatch.context() as mp:
        _crash(mp)
        result = run_pipeline(tiny(), [PassSpec("cleanup")], verify="none")
    assert result.records[0].status == "error" and result.internal_error is not None
    assert result.internal_error.exc_type == "RuntimeError" and result.internal_error.message == "cleanup broke"


@pytest.mark.parametrize("argv", [
    ["compile"],
    ["compile", "m.onnx", "--target", "nvdla"],
    ["compile", "m.onnx", "--target", "onnxruntime", "--passes", "simplfy"],
])
def test_usage_errors_still_exit_2(src: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(src.parent)
    assert main(argv) == ExitStatus.USAGE == 2
    lines = _segc_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("segc: error:") and "internal" not in lines[0]


def test_help_documents_the_exit_codes() -> None:
    text = build_parser().format_help()
    assert "exit status:" in text and "70   a bug in segc" in text and "2    bad usage" in text
