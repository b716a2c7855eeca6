"""The output folder contract: the input is never written, a user's files are never replaced
without --force, a compile completes its OUTDIR or leaves it as it was, one at a time.

Every test runs the real CLI in-process on a three-node model; each one failed on the code
before segc.outdir (input overwritten, files lost, half-written folders, internal errors).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segc.cli import main
from segc.outdir import LOCK_PREFIX, MANIFEST_NAME, STAGE_PREFIX
from tests.graphs import conv_identity_relu as tiny




def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> dict[str, str]:
    """Every entry of a folder (recursively) and its content hash: 'left as it was' means equal."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (
            sha(p) if p.is_file() and not p.is_symlink() else f"-> {os.readlink(p)}" if p.is_symlink() else "dir"
        )
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "m.onnx"
    path.parent.mkdir()
    path.write_bytes(tiny().SerializeToString())
    return path


def compile_(model: Path, *extra: str, target: str = "onnxruntime") -> list[str]:
    return ["compile", str(model), "--target", target, "--passes", "cleanup", "--verify", "none", *extra]


def error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    errors = [line for line in err if line.startswith("segc: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err) and "internal error" not in errors[0], err
    return errors[0]


# -- the input is never written -------------------------------------------------------------


def test_dump_dir_holding_the_input_is_refused_before_any_pass(tmp_path: Path, capsys) -> None:
    dumps = tmp_path / "dumps"
    assert main(compile_(tmp_path_model(tmp_path), "-o", str(tmp_path / "o1"), "--dump-dir", str(dumps))) == 0
    again = dumps / "00_cleanup.onnx"  # compile a dump again, dumping into the same folder
    before = sha(again)
    line = error_line(capsys, compile_(again, "-o", str(tmp_path / "o2"), "--dump-dir", str(dumps)))
    assert "00_cleanup.onnx" in line and "input" in line
    assert sha(again) == before
    assert not (tmp_path / "o2").exists()


def tmp_path_model(tmp_path: Path) -> Path:
    path = tmp_path / "in.onnx"
    path.write_bytes(tiny().SerializeToString())
    return path


def test_force_never_writes_through_a_link_to_the_input(model_path: Path, capsys) -> None:
    out = model_path.parent / "out"
    out.mkdir()
    (out / "build.sh").symlink_to(model_path)
    before = sha(model_path)
    line = error_line(capsys, compile_(model_path, "-o", str(out), "--force"))
    assert "refusing to write over" in line
    assert sha(model_path) == before
    assert listing(out) == {"build.sh": f"-> {model_path}"}


def test_force_replaces_a_link_to_another_file_not_its_target(model_path: Path) -> None:
    out = model_path.parent / "out"
    out.mkdir()
    other = model_path.parent / "notes.txt"
    other.write_text("mine\n")
    (out / "report.md").symlink_to(other)
    assert main(compile_(model_path, "-o", str(out), "--force")) == 0
    assert other.read_text() == "mine\n"
    assert not (out / "report.md").is_symlink() and (out / "report.md").read_text().startswith("# segc report")


# -- a user's files are never replaced without --force --------------------------------------


@pytest.mark.parametrize("target, name", [("onnxruntime", "report.md"), ("onnxruntime", "report.json"),
                                          ("tensorrt", "compare_tensorrt.sh")])
def test_user_files_in_outdir_are_kept_without_force(model_path: Path, capsys, target: str, name: str) -> None:
    folder = model_path.parent  # -o the input's own folder
    (folder / name).write_text("the user's own\n")
    before = listing(folder)
    line = error_line(capsys, compile_(model_path, "-o", str(folder), target=target))
    assert name in line and "--force" in line
    assert listing(folder) == before
    assert main(compile_(model_path, "-o", str(folder), "--force", target=target)) == 0
    assert (folder / name).read_text() != "the user's own\n"
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert name in {f["name"] for f in manifest["files"]} and "m.onnx" not in {f["name"] for f in manifest["files"]}


def test_segc_replaces_its_own_files_and_keeps_others(model_path: Path) -> None:
    out = model_path.parent / "out"
    assert main(compile_(model_path, "-o", str(out))) == 0
    (out / "mine.txt").write_text("keep me\n")
    first = sha(out / "report.json")
    assert main(compile_(model_path, "-o", str(out), "--seed", "1")) == 0  # its own files: no --force needed
    assert sha(out / "report.json") != first and (out / "mine.txt").read_text() == "keep me\n"


# -- one compile at a time; all or nothing ---------------------------------------------------


def test_a_second_compile_into_a_locked_outdir_exits_2(model_path: Path, capsys) -> None:
    out = model_path.parent / "out"
    lock = model_path.parent / f"{LOCK_PREFIX}out"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write("4242\n")
        fh.flush()
        line = error_line(capsys, compile_(model_path, "-o", str(out)))
    assert "another segc compile is writing" in line and "4242" in line
    assert not out.exists()


def test_disk_full_leaves_outdir_as_it_was(model_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    out = model_path.parent / "out"
    real_replace = os.replace

    def full(src, dst, *a, **kw):
        if os.fspath(dst).endswith("report.md"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", full)
    line = error_line(capsys, compile_(model_path, "-o", str(out)))
    assert "report.md" in line and "No space left on device" in line
    assert not out.exists()  # a new OUTDIR: not created at all
    assert sorted(p.name for p in model_path.parent.iterdir()) == ["m.onnx"]  # no staging, no lock left
    # an existing OUTDIR keeps its previous build, byte for byte
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(compile_(model_path, "-o", str(out))) == 0
    before = listing(out)
    monkeypatch.setattr(os, "replace", full)
    error_line(capsys, compile_(model_path, "-o", str(out), "--seed", "3"))
    assert listing(out) == before


def test_disk_full_while_writing_build_sh(model_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def full(fd, data):
        if bytes(data[:2]) == b"#!":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    out = model_path.parent / "out"
    line = error_line(capsys, compile_(model_path, "-o", str(out)))
    assert "build.sh" in line and "No space left" in line
    assert not out.exists()


def test_staging_left_by_a_killed_compile_is_cleaned(model_path: Path) -> None:
    out = model_path.parent / "out"
    # a real process that stages a big file and is SIGKILLed before it can commit
    program = (
        "import os, signal, sys\n"
        "from segc.outdir import StagedOutput\n"
        "s = StagedOutput(sys.argv[1], force=False)\n"
        "s.open()\n"
        "s.path('m.onnxruntime.onnx').write_bytes(b'x' * (8 << 20))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", program, str(out)], capture_output=True)
    assert proc.returncode == -9
    left = [p for p in model_path.parent.iterdir() if p.name.startswith(STAGE_PREFIX)]
    assert len(left) == 1 and not out.exists()
    assert main(compile_(model_path, "-o", str(out))) == 0
    assert not [p for p in model_path.parent.iterdir() if p.name.startswith((STAGE_PREFIX, LOCK_PREFIX))]
    assert (out / "build.sh").is_file()


def test_reports_follow_the_umask(model_path: Path) -> None:
    out = model_path.parent / "out"
    old = os.umask(0o022)
    try:
        assert main(compile_(model_path, "-o", str(out))) == 0
    finally:
        os.umask(old)
    for name in ("report.json", "report.md", "m.onnxruntime.onnx"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name
    assert (out / "build.sh").stat().st_mode & 0o777 == 0o755
    assert out.stat().st_mode & 0o777 == 0o755


# -- bad output paths are one line, exit 2, before any pass --------------------------------


def test_bad_output_paths(model_path: Path, tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    assert "not a folder" in error_line(capsys, compile_(model_path, "-o", str(a_file / "out")))
    assert "/proc" in error_line(capsys, compile_(model_path, "-o", "/proc/segc-out"))
    assert "--dump-dir" in error_line(
        capsys, compile_(model_path, "-o", str(tmp_path / "o"), "--dump-dir", str(a_file))
    )
    bad = os.fsdecode(bytes(tmp_path) + b"/out\xff")
    assert "UTF-8" in error_line(capsys, compile_(model_path, "-o", bad))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "src"]
    assert sorted(p.name for p in model_path.parent.iterdir()) == ["m.onnx"]


def test_parents_made_for_a_failed_compile_are_removed(model_path: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "v.npy").write_bytes(b"")
    line = error_line(capsys, ["compile", str(model_path), "--target", "onnxruntime", "--passes", "cleanup",
                               "-o", str(tmp_path / "a" / "b" / "out"), "--verify-inputs", str(tmp_path / "v.npy")])
    assert "v.npy" in line
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04broken", b"\x93NUMPY\x01\x00garbage"])
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_empty_or_corrupt_verify_inputs(model_path: Path, tmp_path: Path, capsys, content: bytes, suffix: str) -> None:
    data = tmp_path / f"inputs{suffix}"
    data.write_bytes(content)
    line = error_line(capsys, ["compile", str(model_path), "--target", "onnxruntime", "--passes", "cleanup",
                               "-o", str(tmp_path / "o"), "--verify-inputs", str(data)])
    assert str(data) in line and "cannot read" in line
    assert not (tmp_path / "o").exists()


def test_read_only_parent_is_one_line(model_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root a read-only mount cannot be made in a test; the file system's answer is simulated."""
    real_open = os.open

    def read_only(path, flags, *a, **kw):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", read_only)
    line = error_line(capsys, compile_(model_path, "-o", str(model_path.parent / "out")))
    assert "Read-only file system" in line and str(model_path.parent) in line


def test_existing_outdir_is_staged_inside_so_its_parent_may_be_read_only(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = model_path.parent / "out"
    out.mkdir()
    parent = str(model_path.parent)
    real_open, real_mkdir = os.open, os.mkdir

    def no_write_in_parent(fn):
        def guarded(path, *a, **kw):
            if os.path.dirname(os.fspath(path)) == parent and (fn is real_mkdir or a[0] & os.O_CREAT):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
            return fn(path, *a, **kw)
        return guarded

    monkeypatch.setattr(os, "open", no_write_in_parent(real_open))
    monkeypatch.setattr(os, "mkdir", no_write_in_parent(real_mkdir))
    assert main(compile_(model_path, "-o", str(out))) == 0
    assert (out / "build.sh").is_file()
    assert sorted(p.name for p in model_path.parent.iterdir()) == ["m.onnx", "out"]
    assert not [p.name for p in out.iterdir() if p.name.startswith((STAGE_PREFIX, ".segc-lock"))]
    # a new OUTDIR there needs the parent: one line naming it
    assert parent in error_line(capsys, compile_(model_path, "-o", str(model_path.parent / "new")))


def test_staging_inside_an_existing_outdir_left_by_a_kill_is_cleaned(model_path: Path) -> None:
    out = model_path.parent / "out"
    assert main(compile_(model_path, "-o", str(out))) == 0
    program = ("import os, signal, sys\nfrom segc.outdir import StagedOutput\n"
               "s = StagedOutput(sys.argv[1], force=False)\ns.open()\n"
               "s.path('m.onnxruntime.onnx').write_bytes(b'x' * (1 << 20))\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", program, str(out)]).returncode == -9
    assert [p for p in out.iterdir() if p.name.startswith(STAGE_PREFIX)]
    assert main(compile_(model_path, "-o", str(out))) == 0
    assert not [p for p in out.iterdir() if p.name.startswith((STAGE_PREFIX, ".segc-lock"))]


def test_a_locked_existing_outdir(model_path: Path, capsys) -> None:
    out = model_path.parent / "out"
    assert main(compile_(model_path, "-o", str(out))) == 0
    with open(out / ".segc-lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write("777\n")
        fh.flush()
        assert "(pid 777)" in error_line(capsys, compile_(model_path, "-o", str(out)))


def test_a_model_named_like_an_option_stays_a_file_name(tmp_path: Path) -> None:
    from segc.targets.buildscript import parse_steps

    src = tmp_path / "-m.onnx"
    src.write_bytes(tiny().SerializeToString())
    out = tmp_path / "-out"
    assert main(compile_(src, "-o", str(out), target="tensorrt")) == 0
    (compare,) = parse_steps((out / "compare_tensorrt.sh").read_text())
    assert compare[:3] == ["polygraphy", "run", "./-m.tensorrt.onnx"]
    (build,) = parse_steps((out / "build.sh").read_text())
    assert build[1] == "--onnx=./-m.tensorrt.onnx"


def test_outdir_that_is_a_broken_link(model_path: Path, capsys) -> None:
    out = model_path.parent / "out"
    out.symlink_to(model_path.parent / "gone")
    assert "broken link" in error_line(capsys, compile_(model_path, "-o", str(out)))
    assert out.is_symlink() and not (model_path.parent / "gone").exists()


def test_staging_left_by_older_segc_and_killed_dumps_are_cleaned(model_path: Path, tmp_path: Path) -> None:
    out = model_path.parent / "out"
    assert main(compile_(model_path, "-o", str(out))) == 0
    legacy = out / ".m.onnxruntime.onnx.k3j_x9q2"  # what save_model's mkdtemp left on a kill
    legacy.mkdir()
    (legacy / "m.onnxruntime.onnx").write_bytes(b"x" * 4096)
    user_dir = out / ".notes.onnx.abcdefgh"  # same pattern, but holds something else: not ours
    user_dir.mkdir()
    (user_dir / "todo.txt").write_text("keep\n")
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    stale = dumps / ".00_cleanup.onnx.segc-tmp-99999999-abcd1234"
    stale.write_bytes(b"half")
    assert main(compile_(model_path, "-o", str(out), "--dump-dir", str(dumps))) == 0
    assert not legacy.exists() and (user_dir / "todo.txt").exists()
    assert not stale.exists() and (dumps / "00_cleanup.onnx").is_file()


def test_two_processes_one_outdir(model_path: Path, capsys) -> None:
    """A real second process mid-compile (holding the OUTDIR) makes this compile exit 2, naming it."""
    out = model_path.parent / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom segc.outdir import StagedOutput\n"
            "with StagedOutput(sys.argv[1], force=False) as s:\n    print('ready', flush=True)\n    "
            "sys.stdin.readline()\n",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        line = error_line(capsys, compile_(model_path, "-o", str(out)))
        assert f"(pid {holder.pid})" in line
    finally:
        holder.communicate("go\n", timeout=30)
    assert holder.returncode == 0 and not out.exists()  # the holder never committed
    assert main(compile_(model_path, "-o", str(out))) == 0  # and once it is gone, the folder is free


def test_an_input_changed_during_the_compile_writes_nothing(
    model_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segc import pipeline

    real = pipeline.run_pipeline

    def and_touch(*a, **kw):
        result = real(*a, **kw)
        with open(model_path, "ab") as fh:  # someone else appends to the input meanwhile
            fh.write(b"\0")
        return result

    monkeypatch.setattr("segc.compile_cmd.run_pipeline", and_touch)
    out = model_path.parent / "out"
    assert "changed while segc was compiling it" in error_line(capsys, compile_(model_path, "-o", str(out)))
    assert not out.exists()
