"""segc batch end to end: real ``segc compile`` subprocesses on tiny onnx.helper models.

Compiles are counted, never timed: ``.segc-batch/compiles.log`` gets one line per compile
that ran, and a cell that was not recompiled keeps its report.json byte for byte (every
report records the compile's own wall time, so a recompile rewrites it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.cli import main


def tiny(seed: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(seed).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


MANIFEST = """
targets = ["onnxruntime", "tensorrt"]
[defaults]
verify = "none"
[[model]]
path = "models/good1.onnx"
[[model]]
path = "models/good2.onnx"
verify = "end"
[[model]]
path = "models/broken.onnx"
"""


def make_fleet(root: Path, manifest: str = MANIFEST) -> Path:
    (root / "models").mkdir(parents=True)
    onnx.save(tiny(1), root / "models" / "good1.onnx")
    onnx.save(tiny(2), root / "models" / "good2.onnx")
    (root / "models" / "broken.onnx").write_bytes(b"this is not an onnx model")
    path = root / "fleet.toml"
    path.write_text(manifest)
    return path


def compiles(out: Path) -> list[str]:
    log = out / ".segc-batch" / "compiles.log"
    return [json.loads(line)["cell"] for line in log.read_text().splitlines()] if log.exists() else []


def results(out: Path) -> dict[str, dict]:
    data = json.loads((out / "results.json").read_text())
    return {"/".join(p for p in (r["model"], r["target"], r["option_set"]) if p): r for r in data["results"]}


def reports(out: Path) -> dict[str, bytes]:
    return {str(p.parent.relative_to(out)): p.read_bytes() for p in out.glob("*/*/report.json")}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    root = tmp_path_factory.mktemp("fleet")
    manifest = make_fleet(root)
    out = root / "out"
    code = main(["batch", str(manifest), "-j", "2", "-o", str(out)])
    return manifest, out, code


CELLS = {
    "good1/onnxruntime",
    "good1/tensorrt",
    "good2/onnxruntime",
    "good2/tensorrt",
    "broken/onnxruntime",
    "broken/tensorrt",
}


def test_broken_cells_fail_the_rest_pass_exit_1(fleet) -> None:
    manifest, out, code = fleet
    assert code == 1
    res = results(out)
    assert set(res) == CELLS and sorted(compiles(out)) == sorted(CELLS)
    for label, r in res.items():
        if label.startswith("broken"):
            assert (r["status"], r["outcome"], r["exit_code"], r["report"]) == ("error", "error", 2, None)
            assert "not a readable ONNX model" in r["verdict"]["failure"]
        else:
            assert (r["status"], r["outcome"], r["exit_code"], r["cached"]) == ("passed", "passed", 0, False), r
            assert r["report"] == f"{label}/report.md" and (out / label / "report.md").is_file()
            assert (out / label / "build.sh").is_file() and r["verdict"]["report_status"] == "ok"
    assert res["good2/tensorrt"]["options"] == ["--verify", "end"]
    assert json.loads((out / "good2" / "tensorrt" / "report.json").read_text())["verify_mode"] == "end"
    md = (out / "results.md").read_text()
    assert "| good1 | [passed " in md and "| broken | error " in md and "## Failures" in md
    page = (out / "results.html").read_text()
    assert page.count("class='passed'") >= 4 and "class='error'" in page
    assert "href='good1/onnxruntime/report.md'" in page and "onclick='sortBy(2)'" in page


def test_rerun_compiles_nothing(fleet) -> None:
    manifest, out, _ = fleet
    before, n = reports(out), len(compiles(out))
    assert main(["batch", str(manifest), "-j", "2", "-o", str(out)]) == 1  # the broken cells still fail
    assert len(compiles(out)) == n
    assert reports(out) == before
    res = results(out)
    assert {r["status"] for r in res.values()} == {"cached"} and all(r["cached"] for r in res.values())
    assert res["broken/onnxruntime"]["outcome"] == "error" and res["good1/tensorrt"]["outcome"] == "passed"


def test_changed_model_recompiles_only_its_cells(fleet) -> None:
    manifest, out, _ = fleet
    before, n = reports(out), len(compiles(out))
    onnx.save(tiny(3), manifest.parent / "models" / "good2.onnx")
    assert main(["batch", str(manifest), "-j", "2", "-o", str(out)]) == 1
    assert sorted(compiles(out)[n:]) == ["good2/onnxruntime", "good2/tensorrt"]
    after = reports(out)
    assert {k for k in after if after[k] != before[k]} == {"good2/onnxruntime", "good2/tensorrt"}
    res = results(out)
    assert res["good2/tensorrt"]["status"] == "passed" and res["good1/tensorrt"]["status"] == "cached"


def test_timeout_fails_that_cell_only_and_is_not_cached_no_cache_compiles_all(tmp_path: Path) -> None:
    manifest = make_fleet(
        tmp_path,
        'targets = ["onnxruntime"]\n[defaults]\nverify = "none"\n'
        '[[model]]\npath = "models/good1.onnx"\ntimeout = 0.2\n[[model]]\npath = "models/good2.onnx"\n',
    )
    out = tmp_path / "out"
    for _ in range(2):
        assert main(["batch", str(manifest), "-j", "2", "-o", str(out)]) == 1
    res = results(out)
    assert (res["good1/onnxruntime"]["status"], res["good1/onnxruntime"]["exit_code"]) == ("timeout", None)
    assert res["good2/onnxruntime"]["status"] == "cached"
    assert compiles(out).count("good1/onnxruntime") == 2 and compiles(out).count("good2/onnxruntime") == 1
    assert main(["batch", str(manifest), "-j", "2", "-o", str(out), "--no-cache"]) == 1
    assert compiles(out).count("good2/onnxruntime") == 2 and results(out)["good2/onnxruntime"]["status"] == "passed"


def test_killed_run_resumes(tmp_path: Path) -> None:
    manifest = make_fleet(tmp_path, 'targets = ["onnxruntime", "tensorrt"]\n[defaults]\nverify = "none"\n'
                                    '[[model]]\npath = "models/good1.onnx"\n[[model]]\npath = "models/good2.onnx"\n')
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "segc", "batch", str(manifest), "-j", "1", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while len(compiles(out)) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the batch and the compile it is running
    proc.wait()
    first = compiles(out)
    assert 1 <= len(first) < 4 and not (out / "results.json").exists()
    assert main(["batch", str(manifest), "-j", "2", "-o", str(out)]) == 0
    res = results(out)
    assert {k for k, r in res.items() if r["cached"]} == set(first)
    assert sorted(compiles(out)) == sorted(res)  # each cell compiled exactly once over both runs
    assert all(r["outcome"] == "passed" for r in res.values())
    assert not list(out.glob("*/.segc-stage-*")) and not list(out.glob("*/*/.segc-stage-*"))


def test_bad_arguments_exit_2_before_work(tmp_path: Path, capsys) -> None:
    manifest = make_fleet(tmp_path)
    for argv, fragment in ((["-j", "0"], "-j 0"), (["--address", "ray://x:1"], "add --executor ray")):
        assert main(["batch", str(manifest), "-o", str(tmp_path / "out"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "out").exists()


def _comparable(out: Path) -> dict[str, tuple]:
    """What must not depend on the executor: each cell's outcome, verdict and compiled model."""
    table = {}
    for label, r in results(out).items():
        out_sha = json.loads((out / label / "report.json").read_text())["output"]["sha256"] if r["report"] else None
        table[label] = (r["status"], r["outcome"], r["exit_code"], r["options"], r["report"], r["key"],
                        {k: v for k, v in r["verdict"].items()}, out_sha)
    return table


def test_ray_executor_matches_local(tmp_path: Path) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("ray is not installed (pip install 'segc[fleet]'); the Ray executor cannot run here")
    manifest = make_fleet(tmp_path, 'targets = ["onnxruntime"]\n[defaults]\nverify = "end"\n'
                                    '[[model]]\npath = "models/good1.onnx"\n[[model]]\npath = "models/good2.onnx"\n'
                                    '[[model]]\npath = "models/broken.onnx"\n')
    local, distributed = tmp_path / "local", tmp_path / "ray"
    assert main(["batch", str(manifest), "-j", "2", "-o", str(local)]) == 1
    assert main(["batch", str(manifest), "-j", "2", "-o", str(distributed), "--executor", "ray"]) == 1
    assert json.loads((distributed / "results.json").read_text())["executor"] == "ray"
    assert _comparable(distributed) == _comparable(local)
    assert (
        sorted(compiles(distributed))
        == sorted(compiles(local))
        == ["broken/onnxruntime", "good1/onnxruntime", "good2/onnxruntime"]
    )
    assert (distributed / "good1" / "onnxruntime" / "report.md").is_file()


def _children(pid: int) -> list[int]:
    """Child pids of ``pid``: a compile is the child of the pool thread that started it."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:  # that thread just ended
            continue
    return found


def test_sigterm_stops_the_batch_and_its_compiles(tmp_path: Path) -> None:
    manifest = make_fleet(
        tmp_path, 'targets = ["onnxruntime"]\n[defaults]\nverify = "none"\n[[model]]\npath = "models/good1.onnx"\n'
    )
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "segc", "batch", str(manifest), "-j", "1", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    children: list[int] = []
    deadline = time.monotonic() + 120
    while not children and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        children = _children(proc.pid)
    assert children, "the batch never started its compile"
    proc.send_signal(signal.SIGTERM)  # the batch only, as a scheduler or `timeout` would
    try:
        assert proc.wait(timeout=60) == 130
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    for pid in children:  # killed and reaped, not orphaned holding the OUTDIR lock
        assert not Path(f"/proc/{pid}").exists() or "(Z)" in Path(f"/proc/{pid}/stat").read_text()
    assert compiles(out) == []
    res = results(out)  # what finished (nothing here) and what did not, still written
    assert (res["good1/onnxruntime"]["status"], res["good1/onnxruntime"]["exit_code"]) == ("not run", None)
