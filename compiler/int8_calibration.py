"""int8: the calibration set as files every vendor's calibration step reads, and the expected drop.

``--precision int8 --calib-images DIR``: the images are preprocessed by the recipe (resize
to the build's optimisation shape, the recipe's mean/std and channel order, as
``--verify-inputs`` does) and written into the build folder twice, once per file format the
vendor tools read:

* ``calib.npy``: every image stacked (``N x`` the input shape), read by ``calib_loader.py``, the
  data loader of polygraphy's calibrator that makes TensorRT's calibration cache (trtexec
  cannot calibrate from images itself);
* ``calib_NNNN.bin``: raw float32, one per image, what AMCT's ``amct_onnx calibration
  --data_dir`` takes with ``--data_types float32`` (CANN AMCT guide, command-line options:
  https://www.hiascend.com/document/detail/en/canncommercial/850/devaids/amct/atlasamct_16_0336.html);
  build.sh gathers them into ``calib_bin/`` first (the build folder itself is flat).

Before any device, the expected drop is measured in onnxruntime: the graph is quantised with
static QDQ quantisation (``onnxruntime.quantization.quantize_static``, per-channel weights,
MinMax calibration) on the same calibration set, and its outputs are compared with fp32 on
those inputs (cosine, label agreement, max error). It is an estimate: each vendor picks its own
int8 kernels and scales, but a model that drops badly here drops on the device too.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx.version_converter

from segc.errors import SegcError
from segc.metrics import OutputMetrics, compare_output
from segc.onnx_graph import real_input_names
from segc.ortrun import run_model
from segc.outdir import write_file
from segc.recipe import Recipe

if TYPE_CHECKING:
    # segc.verify_inputs (probe inputs, images) only where calibration images are read: every
    # compile imports this module for DEFAULT_SAMPLES (issue 11)
    from segc.verify_inputs import Feed
    from segc.targets.base import BuildOptions

NPY_FILE = "calib.npy"
BIN_DIR = "calib_bin"  # made by build.sh from the flat calib_NNNN.bin files
BIN_PATTERN = "calib_*.bin"
DEFAULT_SAMPLES = 32
LAYER_COSINE = 0.99  # a layer whose int8 output falls below this against fp32 is named in the report


def calibration_feeds(folder: str | Path, model: onnx.ModelProto, recipe: Recipe | None,
                      shape: tuple[int, ...], limit: int = DEFAULT_SAMPLES) -> list[Feed]:
    """The calibration images of ``folder``, preprocessed for the model's one image input."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SegcError(f"--calib-images {folder}: not a folder")
    name = model.graph.input[0].name if model.graph.input else "input"
    names = real_input_names(model)
    if len(names) != 1 or len(shape) != 4:
        raise SegcError(f"--calib-images needs a model with one NCHW image input; this one has {names}")
    name = names[0]
    from segc.verify_inputs import load_user_feeds

    try:
        return load_user_feeds(folder, model, recipe, {name: tuple(shape)}, limit=limit)
    except SegcError as exc:
        raise SegcError(str(exc).replace("--verify-inputs", "--calib-images")) from None


@dataclass
class CalibrationFiles:
    """What ``write_calibration`` wrote, relative to the build folder."""

    input_name: str
    shape: list[int]
    count: int
    npy_file: str = NPY_FILE
    bin_dir: str = BIN_DIR
    paths: list[Path] = field(default_factory=list)  # every file written


def write_calibration(outdir: Path, feeds: list[Feed], formats: tuple[str, ...] = ("npy", "bin")) -> CalibrationFiles:
    """``calib.npy`` (all images) and/or ``calib_NNNN.bin`` (float32, one per image) in ``outdir``."""
    import io

    name = next(iter(feeds[0].arrays))
    arrays = [np.ascontiguousarray(f.arrays[name], dtype=np.float32) for f in feeds]
    paths = []
    if "npy" in formats:
        buf = io.BytesIO()
        np.save(buf, np.stack(arrays), allow_pickle=False)
        paths.append(write_file(Path(outdir) / NPY_FILE, buf.getvalue()))
    if "bin" in formats:
        paths += [write_file(Path(outdir) / f"calib_{i:04d}.bin", a.tobytes()) for i, a in enumerate(arrays)]
    return CalibrationFiles(name, list(arrays[0].shape), len(arrays), paths=paths)


@dataclass
class Int8Estimate:
    """The QDQ model's outputs against fp32, on the calibration set."""

    samples: int
    quantized_nodes: int  # QuantizeLinear nodes onnxruntime inserted
    cosine: float | None
    agreement: float | None
    max_abs: float | None
    per_output: list[dict[str, Any]] = field(default_factory=list)
    # segc.localize between fp32 and the QDQ model on the first image: where int8 hurts most
    first_divergence: dict[str, Any] | None = None
    worst_layers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[Feed]) -> None:
        self._it = iter([f.arrays for f in feeds])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_qdq(model: onnx.ModelProto, feeds: list[Feed]) -> onnx.ModelProto:
    """``model`` statically quantised to int8 QDQ, calibrated on ``feeds``.

    Per-channel weight scales (what the vendors use for convolutions) need the ``axis`` of
    opset-13 Quantize/DequantizeLinear: an older model is converted to opset 13 for the
    estimate, or quantised per tensor when the conversion fails.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from segc.errors import SegcError
    from segc.modelio import save_model
    from segc.onnx_graph import default_opset
    from segc.passes._opset import convert_model_opset

    per_channel = True
    if (default_opset(model) or 0) < 13:  # absent: load_model refuses such models
        try:
            model = convert_model_opset(model, 13, who="int8 estimate")
        except SegcError:  # per tensor still works
            per_channel = False
    with tempfile.TemporaryDirectory(prefix="segc-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "qdq.onnx"
        save_model(model, src)  # weights kept on disk written in: the quantiser reads one file
        quantize_static(str(src), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return onnx.load(str(dst))


def int8_drop(model: onnx.ModelProto, feeds: list[Feed]) -> Int8Estimate:
    """Quantise on ``feeds`` and compare the QDQ model with fp32 on the same inputs."""
    qdq = quantize_qdq(model, feeds)
    metrics: list[OutputMetrics] = []
    for feed in feeds:
        ref = run_model(model, feed.arrays)
        cand = run_model(qdq, feed.arrays)
        metrics += [compare_output(o, feed.label, ref[o], cand[o]) for o in ref if o in cand]

    def worst(attr: str, fn: Callable[[list[float]], float]) -> float | None:
        vals = [getattr(m, attr) for m in metrics if getattr(m, attr) is not None]
        return fn(vals) if vals else None

    per_output = []
    for name in dict.fromkeys(m.output for m in metrics):
        ms = [m for m in metrics if m.output == name]
        per_output.append({"output": name,
                           "cosine": min((m.cosine for m in ms if m.cosine is not None), default=None),
                           "agreement": min((m.agreement for m in ms if m.agreement is not None), default=None)})
    from segc.localize import localize
    from segc.metrics import Tolerances
    from segc.passbase import Contract

    # QDQ keeps the float tensors' names (Q/DQ pairs go between them), so the layers line up
    loc = localize(model, qdq, feeds[0], contract=Contract.APPROXIMATE, tolerances=Tolerances(cosine=LAYER_COSINE), k=5)
    return Int8Estimate(samples=len(feeds), quantized_nodes=sum(n.op_type == "QuantizeLinear" for n in qdq.graph.node),
                        cosine=worst("cosine", min), agreement=worst("agreement", min), max_abs=worst("max_abs", max),
                        per_output=per_output,
                        first_divergence=loc.first_divergence.to_dict() if loc.first_divergence else None,
                        worst_layers=[t.to_dict() for t in loc.worst])


CALIB_LOADER = '''\
#!/usr/bin/env python3
"""polygraphy data loader over segc's calibration set ({npy_file}), written by segc.

polygraphy convert --int8 --data-loader-script calib_loader.py calls load_data(); each
row of {npy_file} is one preprocessed calibration image for input {input_name!r}.
"""
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def load_data():
    for array in np.load(os.path.join(HERE, {npy_file!r})):
        yield {{{input_name!r}: array}}
'''


def calib_loader_text(files: CalibrationFiles) -> str:
    return CALIB_LOADER.format(input_name=files.input_name, npy_file=files.npy_file)


def gather_bins_argv() -> tuple[str, ...]:
    """The build.sh step that puts the flat ``calib_NNNN.bin`` files into ``calib_bin/`` for AMCT."""
    code = (f'import glob, os, shutil; os.makedirs("{BIN_DIR}", exist_ok=True); '
            f'[shutil.copy(p, "{BIN_DIR}") for p in sorted(glob.glob("{BIN_PATTERN}"))]')
    return ("python3", "-c", code)


def emit_calibration(model: onnx.ModelProto, outdir: Path, options: BuildOptions,
                     formats: tuple[str, ...] = ("npy", "bin"), batch: int | None = None) -> CalibrationFiles | None:
    """At emit time: the calibration files for ``options.calib_images`` at the build's
    optimisation shape (None when no folder was given). ``batch`` replaces the shape's batch
    dim (MagicMind writes one image per row and batches them itself)."""
    if options.calib_images is None:
        return None
    names = real_input_names(model)
    ranges = {r.name: r for r in options.shape_ranges}
    if len(names) != 1 or names[0] not in ranges:
        raise SegcError(f"--calib-images needs a model with one image input of known shape; inputs {names}")
    shape = tuple(ranges[names[0]].opt)
    if batch is not None and shape:
        shape = (batch, *shape[1:])
    feeds = calibration_feeds(options.calib_images, model, options.recipe, shape, options.calib_samples)
    return write_calibration(Path(outdir), feeds, formats)
