"""segc batch's manifest: parsing, validation (one line, exit 2) and expansion into cells."""

from __future__ import annotations

from pathlib import Path

import pytest

from segc.batch_manifest import expand, load_manifest
from segc.cli import main


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    for name in ("a", "b"):
        (tmp_path / "models" / f"{name}.onnx").write_bytes(b"x")  # the manifest only checks the file exists
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


GOOD = """
targets = ["onnxruntime", "ascend"]
timeout = 60
[defaults]
verify = "none"
[option_sets.fp32]
[option_sets.fp16]
precision = "fp16"
[[model]]
path = "models/a.onnx"
input_shapes = ["x:1,3,8,8"]
precision = "fp32"
[model.per_target.ascend]
batch = [1, 4]
soc = "Ascend310P3"
[[model]]
path = "models/b.onnx"
name = "bee"
targets = ["onnxruntime"]
passes = ["simplify", "cleanup"]
pass_options = ["simplify.x=1"]
verify = "end"
timeout = 5
[[model]]
zoo = "dbnet_r50"
export = { shape = "1,3,64,64", static = true, opset = 11 }
"""


def test_expands_model_x_target_x_option_set(tmp_path: Path) -> None:
    manifest = load_manifest(write(tmp_path, GOOD))
    cells = expand(manifest)
    assert [c.label for c in cells] == [
        "a/onnxruntime/fp32", "a/onnxruntime/fp16", "a/ascend/fp32", "a/ascend/fp16",
        "bee/onnxruntime/fp32", "bee/onnxruntime/fp16",
        "dbnet_r50/onnxruntime/fp32", "dbnet_r50/onnxruntime/fp16", "dbnet_r50/ascend/fp32", "dbnet_r50/ascend/fp16"]
    by = {c.label: c for c in cells}
    # defaults < model < per_target < option set
    assert by["a/onnxruntime/fp32"].compile_flags == (
        "--input-shape",
        "x:1,3,8,8",
        "--precision",
        "fp32",
        "--verify",
        "none",
    )
    assert by["a/ascend/fp16"].compile_flags == ("--input-shape", "x:1,3,8,8", "--batch", "1,4", "--precision", "fp16",
                                                 "--verify", "none", "--soc", "Ascend310P3")
    assert by["bee/onnxruntime/fp16"].compile_flags == ("--precision", "fp16", "--passes", "simplify,cleanup",
                                                        "--option", "simplify.x=1", "--verify", "end")
    assert by["bee/onnxruntime/fp32"].timeout == 5 and by["a/ascend/fp32"].timeout == 60
    zoo = manifest.models[2]
    assert zoo.path is None and zoo.zoo.export_argv == ("--shape", "1,3,64,64", "--static", "--opset", "11")
    assert manifest.models[0].path == (tmp_path / "models" / "a.onnx").resolve()


def test_no_option_sets_gives_unnamed_cells(tmp_path: Path) -> None:
    cells = expand(load_manifest(write(tmp_path, 'targets = ["onnxruntime"]\n[[model]]\npath = "models/a.onnx"\n')))
    assert [(c.label, c.option_set, str(c.rel_outdir)) for c in cells] == [("a/onnxruntime", None, "a/onnxruntime")]


def test_list_prints_each_cells_compile_command(tmp_path: Path, capsys) -> None:
    path = write(
        tmp_path, 'targets = ["onnxruntime", "tensorrt"]\n[[model]]\npath = "models/a.onnx"\nverify = "none"\n'
    )
    assert main(["batch", str(path), "-o", str(tmp_path / "out"), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    model = (tmp_path / "models" / "a.onnx").resolve()
    assert lines == [
        f"a/onnxruntime: segc compile {model} --target onnxruntime -o {tmp_path}/out/a/onnxruntime --verify none",
        f"a/tensorrt: segc compile {model} --target tensorrt -o {tmp_path}/out/a/tensorrt --verify none",
    ]


BAD = [
    ("targets = [", "not valid TOML"),
    ('[[model]]\npath = "models/a.onnx"\n', "`targets` must list at least one target"),
    ('targets = ["ascnd"]\n[[model]]\npath = "models/a.onnx"\n', "unknown target 'ascnd'"),
    ('targets = ["ascend"]\n', "no [[model]] entries"),
    ('targets = ["ascend"]\n[[model]]\npath = "models/zzz.onnx"\n', "model file 'models/zzz.onnx' not found"),
    ('targets = ["ascend"]\n[[model]]\nzoo = "dbnet"\n', "unknown zoo model 'dbnet'"),
    ('targets = ["ascend"]\n[[model]]\npath = "models/a.onnx"\nzoo = "dbnet_r50"\n', "exactly one of `path`"),
    (
        'targets = ["ascend"]\n[[model]]\npath = "models/a.onnx"\nprecison = "fp16"\n',
        "unknown key 'precison' (did you mean 'precision'?)",
    ),
    (
        'targets = ["ascend"]\n[[model]]\npath = "models/a.onnx"\nprecision = "fp8"\n',
        "expected one of fp32, fp16, int8",
    ),
    ('targets = ["ascend"]\n[[model]]\npath = "models/a.onnx"\nbatch = 4\n', "`batch` must be a non-empty list"),
    (
        'targets = ["ascend"]\n[[model]]\npath = "models/a.onnx"\n[[model]]\npath = "models/a.onnx"\n',
        "two [[model]] entries are named 'a'",
    ),
    (
        'targets = ["ascend"]\n[[model]]\npath = "models/a.onnx"\ntargets = ["tensorrt"]\n',
        "not in the manifest's `targets`",
    ),
    ('targets = ["ascend"]\n[option_sets."a/b"]\n[[model]]\npath = "models/a.onnx"\n', "names a folder"),
    ('targets = ["ascend"]\ntimeout = -1\n[[model]]\npath = "models/a.onnx"\n', "positive number of seconds"),
    ('targets = ["ascend"]\n[[model]]\nzoo = "dbnet_r50"\nexport = { shpe = "1,3,64,64" }\n', "unknown key 'shpe'"),
]


@pytest.mark.parametrize("text, fragment", BAD)
def test_bad_manifest_is_one_line_exit_2(tmp_path: Path, capsys, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    assert main(["batch", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"segc: error: {path}: "), err
    assert fragment in err[0], err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_missing_manifest(tmp_path: Path, capsys) -> None:
    assert main(["batch", str(tmp_path / "nope.toml")]) == 2
    assert "no such manifest" in capsys.readouterr().err


def test_example_seeds_manifest_is_five_seeds_x_four_targets() -> None:
    manifest = load_manifest(Path(__file__).parents[2] / "examples" / "seeds.toml")
    from segc.models.zoo import model_names

    assert sorted(m.zoo.name for m in manifest.models) == sorted(model_names())
    assert len(expand(manifest)) == 20 and set(manifest.targets) == {"onnxruntime", "ascend", "tensorrt", "magicmind"}
