"""build.sh writer: header, quoting, tool checks, runs from anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from segc.targets.base import BuildOptions
from segc.targets.buildscript import Requirement, Step, parse_steps, relative_name, render_script, write_build_script


def _opts(**kw: object) -> BuildOptions:
    base = dict(
        segc_version="9.9.9", input_sha256="ab" * 32, command_line="segc compile 'my model.onnx' --target ascend"
    )
    base.update(kw)
    return BuildOptions(**base)  # type: ignore[arg-type]


def test_header_and_preamble() -> None:
    text = render_script(_opts(), [Requirement("atc", "install CANN")], [Step(("atc", "--framework=5"))], title="t")
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "segc 9.9.9" in text and "ab" * 32 in text
    assert "# command line: segc compile 'my model.onnx' --target ascend" in lines
    assert "set -euo pipefail" in lines
    assert 'case "${BASH_SOURCE[0]}" in */*) cd -- "${BASH_SOURCE[0]%/*}/" ;; esac' in lines
    assert "command -v atc >/dev/null || { echo 'build.sh: atc not found (install CANN)' >&2; exit 127; }" in lines
    assert parse_steps(text) == [["atc", "--framework=5"]]


def test_command_line_with_newline_stays_a_comment(tmp_path: Path, bash_syntax_ok) -> None:
    opts = _opts(command_line="segc compile x.onnx\nrm -rf /")
    art = write_build_script(tmp_path, opts, [], [Step(("true",))], title="t")
    text = art.path.read_text()
    assert "\nrm -rf /" not in text
    bash_syntax_ok(art.path)


def test_awkward_paths_round_trip(awkward_dir: Path, bash_syntax_ok) -> None:
    weird = str(awkward_dir / "model.onnx")
    art = write_build_script(awkward_dir, _opts(), [], [Step(("printf", "%s\\n", weird, "a'b", "$HOME"))], title="t")
    assert art.path == awkward_dir / "build.sh" and art.kind == "script"
    assert os.access(art.path, os.X_OK)
    bash_syntax_ok(art.path)
    assert parse_steps(art.path.read_text()) == [["printf", "%s\\n", weird, "a'b", "$HOME"]]
    # run it from elsewhere: arguments arrive verbatim, nothing expanded
    proc = subprocess.run(["bash", str(art.path)], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [weird, "a'b", "$HOME"]


def test_runs_in_its_own_folder(awkward_dir: Path) -> None:
    (awkward_dir / "here.txt").write_text("found\n")
    art = write_build_script(awkward_dir, _opts(), [], [Step(("cat", "here.txt"))], title="t")
    proc = subprocess.run(["bash", str(art.path)], capture_output=True, text=True, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "found\n"


def test_missing_tool_exits_127_before_any_step(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    reqs = [Requirement("segc-no-such-tool-xyz", "install the Frobnicator SDK")]
    art = write_build_script(tmp_path, _opts(), reqs, [Step(("touch", str(marker)))], title="t")
    proc = subprocess.run(["bash", str(art.path)], capture_output=True, text=True)
    assert proc.returncode == 127
    assert proc.stderr.strip() == "build.sh: segc-no-such-tool-xyz not found (install the Frobnicator SDK)"
    assert not marker.exists()


def test_missing_python_module(tmp_path: Path) -> None:
    if shutil.which("python3") is None:
        pytest.skip("no python3 on PATH")
    reqs = [Requirement("segc_no_such_module_xyz", "pip install it", kind="python-module")]
    art = write_build_script(tmp_path, _opts(), reqs, [Step(("true",))], title="t")
    proc = subprocess.run(["bash", str(art.path)], capture_output=True, text=True)
    assert proc.returncode == 127
    assert "python module segc_no_such_module_xyz not found (pip install it)" in proc.stderr


def test_failed_step_stops_the_build(tmp_path: Path) -> None:
    marker = tmp_path / "after"
    art = write_build_script(tmp_path, _opts(), [], [Step(("false",)), Step(("touch", str(marker)))], title="t")
    proc = subprocess.run(["bash", str(art.path)], capture_output=True, text=True)
    assert proc.returncode != 0 and not marker.exists()


def test_multiline_argument_parses_back() -> None:
    prog = "import sys\nprint('it''s', sys.argv[1])\n"
    text = render_script(_opts(), [], [Step(("python3", "-c", prog, "a b")), Step(("echo", "done"))], title="t")
    assert parse_steps(text) == [["python3", "-c", prog, "a b"], ["echo", "done"]]


@pytest.mark.parametrize("name", ["-dash", "ends in newline\n", "-", "x\n\n"])
def test_runs_in_folders_dirname_and_cd_mangle(tmp_path: Path, name: str) -> None:
    """``cd "$(dirname "$0")"`` fails on ``-dash`` (an option to dirname) and drops a trailing
    newline; the script must still run in its own folder, not the caller's."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "here.txt").write_text("found\n")
    art = write_build_script(folder, _opts(), [], [Step(("cat", "here.txt"))], title="t")
    for how in (["bash", str(art.path)], [str(art.path)], ["bash", "--", f"{name}/build.sh"]):
        proc = subprocess.run(how, capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stdout == "found\n", (how, proc.stderr)
    # called by its bare name from inside the folder, and with a CDPATH that would mislead cd
    proc = subprocess.run(
        ["bash", "build.sh"], capture_output=True, text=True, cwd=folder, env={**os.environ, "CDPATH": "/"}
    )
    assert proc.returncode == 0 and proc.stdout == "found\n", proc.stderr


def test_file_names_starting_with_a_dash_are_not_options(tmp_path: Path) -> None:
    assert relative_name(tmp_path / "-m.tensorrt.onnx", tmp_path) == "./-m.tensorrt.onnx"
    assert relative_name(tmp_path / "m.onnx", tmp_path) == "m.onnx"


def test_script_replaces_a_link_and_never_writes_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim.onnx"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "build.sh").symlink_to(victim)
    art = write_build_script(out, _opts(), [], [Step(("true",))], title="t")
    assert victim.read_bytes() == b"precious"
    assert not art.path.is_symlink() and art.path.read_text().startswith("#!/usr/bin/env bash")


def test_script_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        art = write_build_script(tmp_path, _opts(), [], [Step(("true",))], title="t")
    finally:
        os.umask(old)
    assert art.path.stat().st_mode & 0o777 == 0o750
