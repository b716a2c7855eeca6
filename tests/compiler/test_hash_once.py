"""A compile hashes its input once and never reads a file it wrote back to hash it.

sha256 runs at about 0.5 GiB/s here, so every extra pass over hrnet_w48_ocr's 268 MiB cost
half a second: the output was hashed twice (report.json, then the manifest) and the
manifest re-read every report. ``segc.outdir._hash_file`` is the one place a file is read
back to be hashed; these tests count its calls during a real compile, and check that the
digests segc reports are still the files' real sha256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from segc import outdir
from segc.cli import main


def _model(path: Path) -> Path:
    """A Conv with 1.2 MiB of weights (so the model is written in pieces) and a foldable Add."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 3, 40, 40)).astype(np.float32), "w")
    two = numpy_helper.from_array(np.array([2.0], np.float32), "two")
    g = helper.make_graph(
        [helper.make_node("Add", ["two", "two"], ["four"]),
         helper.make_node("Conv", ["x", "w"], ["a"]),
         helper.make_node("Mul", ["a", "four"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 48, 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 9, 9])], [w, two])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("verify", ["none", "each"])
def test_input_hashed_once_outputs_never_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verify: str
) -> None:
    model = _model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    hashed: list[Path] = []
    real = outdir._hash_file

    def counting(path: str | Path) -> str:
        hashed.append(Path(path).resolve())
        return str(real(path))

    monkeypatch.setattr(outdir, "_hash_file", counting)
    assert (
        main(
            [
                "compile",
                str(model),
                "--target",
                "ascend",
                "-o",
                str(out),
                "--verify",
                verify,
                "--input-shape",
                "x:1,3,48,48",
            ]
        )
        == 0
    )
    assert hashed == [model.resolve()]  # the input, once; nothing segc wrote
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["sha256"] == _sha(model)
    compiled = out / "m.ascend.onnx"
    assert report["output"]["sha256"] == _sha(compiled)
    manifest = {f["name"]: f["sha256"] for f in json.loads((out / outdir.MANIFEST_NAME).read_text())["files"]}
    assert manifest and all(manifest[name] == _sha(out / name) for name in manifest)
    assert f"input model sha256: {_sha(model)}" in (out / "build.sh").read_text()


def test_write_file_remembers_what_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.random.default_rng(1).bytes(3 << 20)  # over the size hashed on a second thread
    path = outdir.write_chunks(tmp_path / "f.bin", [data[:10], data[10 : 2 << 20], memoryview(data)[2 << 20 :]])
    monkeypatch.setattr(outdir, "_hash_file", lambda p: pytest.fail(f"{p} read back to be hashed"))
    assert outdir.file_sha256(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1])  # changed since: the remembered digest no longer applies
    monkeypatch.undo()
    assert outdir.file_sha256(path) == hashlib.sha256(data[:-1]).hexdigest()


def test_background_hash_of_a_missing_file_is_one_line(tmp_path: Path) -> None:
    pending = outdir.BackgroundSha256(tmp_path / "gone.onnx")
    with pytest.raises(outdir.SegcError, match="gone.onnx: cannot read"):
        pending.hexdigest()
