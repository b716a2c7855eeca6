"""Over 2 GiB (protobuf's limit): a generated 2.25 GiB model compiles for every target with the
default pipeline and verification on, within 2x its size in peak memory, its weights
written as external data beside the compiled model, the input untouched.

Before segc kept such weights on disk, the default pipeline exited 2 ("use --verify none"),
and with --verify none RSS reached 10x the model and the process was OOM-killed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import onnx
import pytest

pytestmark = pytest.mark.slow

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "big_model.py"
_spec = importlib.util.spec_from_file_location("segc_bench_big_model", _BENCH)
big_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(big_model)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("over2gib")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # gigabytes: never left for pytest's retention


def _fingerprint(model: Path) -> tuple[str, int, int, str]:
    """The model file's sha256, and its data file's size, mtime and first 64 MiB's sha256."""
    data = model.with_suffix(".data")
    with open(data, "rb") as fh:
        head = hashlib.sha256(fh.read(64 << 20)).hexdigest()
    st = data.stat()
    return hashlib.sha256(model.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns, head


@pytest.mark.parametrize("target, extra", [("onnxruntime", []), ("ascend", []), ("magicmind", []),
                                           ("tensorrt", ["--outputs", "y"])])  # prune_outputs: a changed, verified pass
def test_over_2gib_compiles_for_every_target(workdir: Path, target: str, extra: list[str]) -> None:
    model = workdir / "model" / "big.onnx"
    if not model.exists():
        big_model.write_big_model(model.parent)
    nbytes = model.with_suffix(".data").stat().st_size
    assert nbytes > 2**31  # over protobuf's limit
    before = _fingerprint(model)
    out = workdir / target
    row = big_model.compile_measured(model, target, out, extra)
    assert row["rc"] == 0, row
    assert row["stderr"].startswith("done in"), row
    assert row["peak_mib"] * 2**20 <= 2 * nbytes, f"peak {row['peak_mib']} MiB for a {nbytes >> 20} MiB model"
    assert _fingerprint(model) == before

    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "ok"
    compiled = out / f"big.{target}.onnx"
    assert compiled.stat().st_size < 1 << 20  # the graph alone: weights are beside it
    graph = onnx.load(str(compiled), load_external_data=False)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {f"big.{target}.onnx.data"}  # relative, next to the model: never the input's path
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".segc-manifest.json"]
    data = out / f"big.{target}.onnx.data"
    lengths = [(int(i["offset"]), int(i["length"])) for i in
               ({e.key: e.value for e in t.external_data} for t in graph.graph.initializer)]
    assert data.stat().st_size == max(o + n for o, n in lengths)  # every weight is in it (contents: test_disk_weights)
    if target == "tensorrt":  # the changed pass really was verified in onnxruntime, weights read from their folder
        verdicts = {p["name"]: p["status"] for p in report["passes"]}
        assert verdicts["prune_outputs"] == "ok", verdicts
