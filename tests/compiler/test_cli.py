"""The command line contract: exit 0/1/2, one-line errors, no tracebacks, inputs never touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from segc.cli import main
from tests.graphs import conv_identity_relu


def tiny(dynamic: bool = False) -> onnx.ModelProto:
    return conv_identity_relu(("N", 3, "H", "W") if dynamic else (1, 3, 16, 16))


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(tiny().SerializeToString())
    return path


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    errors = [line for line in err if line.startswith("segc: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


@pytest.mark.parametrize("content, fragment", [(None, "no such file"), (b"", "empty"), (b"not onnx at all", "not")])
def test_bad_model_files(tmp_path: Path, capsys, content, fragment) -> None:
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    for argv in (["compile", str(path), "--target", "onnxruntime"], ["inspect", str(path)]):
        assert fragment in one_line_error(capsys, argv)


def test_truncated_model(tmp_path: Path, capsys) -> None:
    data = tiny().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) - 40])
    line = one_line_error(capsys, ["compile", str(path), "--target", "onnxruntime"])
    assert "internal" not in line and "not a readable ONNX model" in line, line  # the user's file, not a bug


@pytest.mark.parametrize("extra, fragment", [
    (["--target", "nvdla"], "invalid choice: 'nvdla'"),
    (["--target", "onnxruntime", "--passes", "simplfy"], "did you mean simplify"),
    (["--target", "onnxruntime", "--skip", "nothing_like_this"], "unknown pass"),
    (["--target", "onnxruntime", "--input-shape", "x1,3,16,16"], "malformed --input-shape"),
    (["--target", "onnxruntime", "--input-shape", "x:1,3,16~8,16"], "malformed --input-shape"),
    (["--target", "onnxruntime", "--input-shape", "x:1,3,a,16"], "malformed --input-shape"),
    (["--target", "onnxruntime", "--input-shape", "nope:1,3,16,16"], "the model's inputs are: x"),
    (["--target", "onnxruntime", "--input-shape", "x:1,3,16"], "has 3 dims"),
    (["--target", "onnxruntime", "--option", "cleanup.x=1"], "has no option x"),
    (["--target", "onnxruntime", "--option", "cleanup"], "malformed --option"),
    (["--target", "onnxruntime", "--tolerance", "rtol=fast"], "malformed --tolerance"),
    (["--target", "onnxruntime", "--verify", "sometimes"], "invalid choice"),
    (["--target", "onnxruntime", "--batch", "1,x"], "malformed --batch"),
    ([], "required"),
])
def test_usage_errors(model_path: Path, capsys, extra: list[str], fragment: str) -> None:
    before = model_path.read_bytes()
    assert fragment in one_line_error(capsys, ["compile", str(model_path), *extra])
    assert model_path.read_bytes() == before
    assert sorted(p.name for p in model_path.parent.iterdir()) == ["m.onnx"]  # nothing written


def test_compile_writes_everything_and_keeps_the_input(model_path: Path, capsys) -> None:
    before = model_path.read_bytes()
    out = model_path.parent / "out dir"
    assert main(["compile", str(model_path), "--target", "onnxruntime", "-o", str(out), "--passes", "cleanup"]) == 0
    assert model_path.read_bytes() == before
    names = {p.name for p in out.iterdir()}
    assert {"m.onnxruntime.onnx", "build.sh", "report.json", "report.md"} <= names
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "ok" and report["input"]["sha256"] and report["output"]["sha256"]
    assert report["passes"][0]["name"] == "cleanup" and report["passes"][0]["changed"]
    assert report["versions"]["onnxruntime"] and report["session_config"]["optimization"] == "basic"
    assert report["command_line"].startswith("segc compile")
    # a second run may replace what the first wrote (the manifest says it is segc's) ...
    assert main(["compile", str(model_path), "--target", "onnxruntime", "-o", str(out), "--passes", "cleanup"]) == 0
    # ... but not a file the user changed since, unless --force
    (out / "build.sh").write_text("echo my own build\n")
    assert "not written by segc" in one_line_error(
        capsys, ["compile", str(model_path), "--target", "onnxruntime", "-o", str(out)]
    )
    assert (
        main(["compile", str(model_path), "--target", "onnxruntime", "-o", str(out), "--passes", "cleanup", "--force"])
        == 0
    )


@pytest.mark.parametrize("argv_tail", [["--passes", "cleanup"], ["--passes", "no_such_pass"]])
def test_a_command_hands_the_collector_back_as_it_found_it(model_path: Path, capsys, argv_tail: list[str]) -> None:
    """main() switches the cyclic collector off while a command imports and freezes what start-up
    made (segc.memory.StartUp): a caller in the same process gets it back on, nothing frozen,
    whether the command ran or failed."""
    import gc

    main(["compile", str(model_path), "--target", "onnxruntime", "-o", str(model_path.parent / "o"), *argv_tail])
    capsys.readouterr()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        main(["compile", str(model_path), "--target", "onnxruntime", "-o", str(model_path.parent / "o2"), *argv_tail])
        assert not gc.isenabled() and gc.get_freeze_count() == 0  # a caller's own choice is kept
    finally:
        gc.enable()


def test_segc_as_the_process_exits_with_the_heap_frozen(model_path: Path, capsys, monkeypatch) -> None:
    """main() with no argv is the process's own command line, which exits next: the heap stays
    frozen, so the interpreter's exit does not walk it again (segc.memory)."""
    import gc

    monkeypatch.setattr(sys, "argv", ["segc", "compile", str(model_path), "--target", "onnxruntime",
                                      "-o", str(model_path.parent / "o"), "--passes", "cleanup"])
    try:
        assert main() == 0
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_dynamic_input_needs_a_shape_for_the_build(tmp_path: Path, capsys) -> None:
    path = tmp_path / "d.onnx"
    path.write_bytes(tiny(dynamic=True).SerializeToString())
    code = main(["compile", str(path), "--target", "onnxruntime", "-o", str(tmp_path / "o"), "--passes", "cleanup",
                 "--input-shape", "x:1,3,32,48"])
    assert code == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["verified_shapes"] == ["random[x:1x3x32x48]"]


def test_passes_and_inspect_and_verify(model_path: Path, tmp_path: Path, capsys) -> None:
    assert main(["passes", "--json"]) == 0
    listed = {p["name"] for p in json.loads(capsys.readouterr().out)}
    assert {"simplify", "cleanup"} <= listed
    assert main(["inspect", str(model_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["nodes"] == 3 and info["inputs"][0]["dims"] == [1, 3, 16, 16] and info["parameters"] == 108
    other = tmp_path / "other.onnx"
    broken = tiny()
    broken.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w"))
    other.write_bytes(broken.SerializeToString())
    assert main(["verify", str(model_path), str(model_path)]) == 0
    assert main(["verify", str(model_path), str(other)]) == 1


@pytest.mark.parametrize("launcher", [[sys.executable, "-m", "segc"], [str(Path(sys.executable).parent / "segc")]])
def test_real_process_prints_one_line(tmp_path: Path, launcher: list[str]) -> None:
    proc = subprocess.run([*launcher, "compile", str(tmp_path / "missing.onnx"), "--target", "onnxruntime"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"segc: error: {tmp_path / 'missing.onnx'}: no such file"


def test_ctrl_c_while_starting_up_is_one_line(monkeypatch, capsys) -> None:
    """Building the parser imports the export zoo (torch: seconds), so that is where a Ctrl-C
    most often lands at start-up: exit 130 and one line, no traceback."""
    import segc.cli as cli

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["passes"]) == 130
    assert capsys.readouterr().err.strip() == "segc: error: interrupted"


def test_real_sigint_during_start_up(tmp_path: Path) -> None:
    """A real SIGINT delivered inside the parser's imports (the export zoo's torch import, the
    slowest start-up there is), as a user's Ctrl-C: one line, exit 130, no traceback. The
    signal is sent by the process to itself at that import, so the test does not depend on
    how fast the machine is."""
    script = (
        "import builtins, os, signal, sys\n"
        # as at a terminal: a shell starts background jobs (nohup, &) with SIGINT ignored, and
        # Python then leaves it ignored, so this test run from one would see no interrupt at all
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import segc.cli\n"
        "real = builtins.__import__\n"
        "def hook(name, *args, **kwargs):\n"
        "    if name == 'segc.models.export':\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = hook\n"
        "sys.exit(segc.cli.main(['export', '--help']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 130 and proc.stderr.strip() == "segc: error: interrupted", proc.stderr


@pytest.mark.parametrize("flag, dims", [
    ("--input-shape", "1,3,99999999999999999999999,16"),  # past int64: numpy's "Maximum allowed dimension exceeded"
    ("--input-shape", "1,3,16~" + "9" * 5000),  # past Python's 4300-digit int() limit
    ("--opt-shape", "1,3," + "9" * 5000 + ",16"),
    ("--input-shape", "1,3,2147483648,16"),  # one past int32: no vendor tool takes it
])
def test_over_long_dim_is_bad_input(model_path: Path, capsys, flag: str, dims: str) -> None:
    before = model_path.read_bytes()
    line = one_line_error(
        capsys,
        ["compile", str(model_path), "--target", "tensorrt", "-o", str(model_path.parent / "out"), flag, f"x:{dims}"],
    )
    assert "larger than 2147483647" in line and len(line) < 300, line
    assert model_path.read_bytes() == before and not (model_path.parent / "out").exists()
