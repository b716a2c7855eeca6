"""NVIDIA TensorRT: a ``trtexec`` build and a ``polygraphy`` comparison with onnxruntime.

``build.sh`` runs ``trtexec --onnx=M --saveEngine=M.engine`` with:

* ``--shapes`` for a static build, or one optimisation profile
  ``--minShapes/--optShapes/--maxShapes`` for a range (DBNet: 640 / 1280 / 4096), written only
  for inputs the model leaves dynamic (a static model takes its shapes from the graph). The
  optimum is the one chosen (``--opt-shape``, the recipe's), else the middle of the range on
  its ``/M`` grid (or a multiple of 32): TensorRT tunes its kernels for the opt shape, and the
  range's minimum, segc's own default for verification, would tune them for the smallest
  input. A range with ``/M`` multiples gets a comment in ``build.sh`` saying so;
* ``--fp16`` or ``--int8`` (``--int8`` also allows fp16 fallback; trtexec reads the
  calibration cache ``--calib=calib.cache``, made in build.sh from ``--calib-images`` or copied
  from ``--calib-cache FILE``; without either the int8 engine only serves timing, and the
  script says so);
* ``--memPoolSize=workspace:<MiB>M`` from ``--workspace-mb`` (or the recipe's); never the old
  ``--workspace`` (deprecated since TensorRT 8.4, gone in 10), which the OCRNet seed still used.

``compare_tensorrt.sh`` runs ``polygraphy run M --trt --onnxrt`` at the same shapes and
precision, with tolerances loose enough for fp16 (``1e-2``) and tight for fp32 (``1e-4``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import onnx

from segc.errors import SegcError
from segc.onnx_graph import real_inputs
from segc.outdir import write_text
from segc.shapes import ShapeRange, parse_static_shape
from segc.targets.base import (Artefact, BuildOptions, Target, TargetFlag, TargetOptions, Violation, own_options,
                               register_target)
from segc.targets.buildscript import Requirement, Step, relative_name, write_build_script, write_script
from segc.targets.runscript import write_run_script
from segc.targets.legality import check_model, load_profile

TRTEXEC_HINT = "install TensorRT and put its bin/ folder (trtexec) on PATH"
POLYGRAPHY_HINT = "pip install polygraphy tensorrt onnxruntime"
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-1}


def _dims(shape: tuple[int, ...], sep: str = "x") -> str:
    return sep.join(str(d) for d in shape)


def dynamic_inputs(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Real inputs and their dims (None where symbolic)."""
    out: dict[str, list[int | None]] = {}
    for value in real_inputs(model):
        out[value.name] = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value.type.tensor_type.shape.dim
        ]
    return out


def build_ranges(model: onnx.ModelProto, options: BuildOptions) -> list[ShapeRange]:
    """Ranges for the inputs TensorRT needs told about (those with symbolic dims).

    ``batch_sizes`` widen a dynamic batch dimension to min..max of the sizes, the optimum
    being the largest (TensorRT picks kernels for the opt shape; throughput matters most at
    the largest batch).
    """
    inputs = dynamic_inputs(model)
    given = {r.name: r for r in options.shape_ranges}
    ranges: list[ShapeRange] = []
    for name, dims in inputs.items():
        if all(d is not None for d in dims):
            continue  # static input: trtexec takes its shape from the graph
        if name not in given:
            raise SegcError(
                f"tensorrt needs a shape for input {name!r} (its dims are not all fixed): give --input-shape "
                f"{name}:N,C,H,W or a range"
            )
        r = with_optimum(given[name], options)
        if options.batch_sizes and dims and dims[0] is None:
            lo, hi, opt = list(r.min), list(r.max), list(r.opt)
            lo[0], hi[0], opt[0] = min(options.batch_sizes), max(options.batch_sizes), max(options.batch_sizes)
            r = replace(r, min=tuple(lo), max=tuple(hi), opt=tuple(opt))
        ranges.append(r)
    return ranges


@dataclass(frozen=True)
class TensorRTOptions(TargetOptions):
    """TensorRT's own settings."""

    workspace_mb: int | None = None  # --workspace-mb (recipe: OCRNet's 15000): trtexec's workspace pool
    calib_cache: Path | None = None  # --calib-cache: an existing TensorRT calibration cache for int8


FLAGS = (
    TargetFlag(
        "--workspace-mb", "trtexec workspace pool in MiB (--memPoolSize=workspace:N)", kind="int", metavar="MIB"
    ),
    TargetFlag(
        "--calib-cache",
        "an existing TensorRT int8 calibration cache: copied into the build as calib.cache, "
        "used instead of calibrating",
        kind="path",
        metavar="FILE",
    ),
)


def tensorrt_options(values: Mapping[str, Any]) -> TensorRTOptions:
    """``--workspace-mb`` (or the recipe's: OCRNet's 15000) must be positive; ``--calib-cache`` a file."""
    mb = values.get("workspace_mb")
    if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int) or mb <= 0):
        raise SegcError(f"--workspace-mb must be positive, got {mb!r}")
    cache = values.get("calib_cache")
    if cache is not None and not Path(cache).is_file():
        raise SegcError(f"--calib-cache {cache}: no such file")
    return TensorRTOptions(workspace_mb=mb, calib_cache=Path(cache).resolve() if cache is not None else None)


def has_calibration(options: BuildOptions) -> bool:
    """Whether the build folder gets calib.cache: copied from --calib-cache or made from --calib-images."""
    return own_options(options, TensorRTOptions).calib_cache is not None or options.calib_images is not None


GRID = 32  # the spatial grid of an optimum picked for a range without /M


def _recipe_opt(name: str, options: BuildOptions) -> tuple[int, ...] | None:
    recipe = options.recipe
    if recipe is None:
        return None
    for text in (recipe.opt_shape or "").split(";"):
        if text.strip():
            input_name, dims = parse_static_shape(text)
            if input_name == name:
                return dims
    return None


def with_optimum(r: ShapeRange, options: BuildOptions) -> ShapeRange:
    """``r`` with the opt shape TensorRT should tune for (see the module docstring)."""
    if r.opt_given or r.is_static or r.opt != r.min:  # chosen (also when built without the flag)
        return r
    chosen = _recipe_opt(r.name, options)
    if (
        chosen is not None
        and len(chosen) == len(r.min)
        and all(a <= v <= b for a, v, b in zip(r.min, chosen, r.max, strict=False))
    ):
        return replace(r, opt=tuple(chosen), opt_given=True)
    opt = list(r.opt)
    for axis in r.dynamic_axes:
        lo, hi = r.min[axis], r.max[axis]
        step = r.step(axis) if r.step(axis) > 1 else (GRID if axis >= 2 else 1)
        mid = round((lo + hi) / 2 / step) * step
        opt[axis] = mid if lo <= mid <= hi else (lo + hi) // 2
    return replace(r, opt=tuple(opt), opt_given=True)


def shape_flags(ranges: list[ShapeRange]) -> list[str]:
    """trtexec shape flags: ``--shapes`` when every range is a point, else a profile."""
    if not ranges:
        return []
    if all(r.is_static for r in ranges):
        return ["--shapes=" + ",".join(f"{r.name}:{_dims(r.min)}" for r in ranges)]
    return [
        "--minShapes=" + ",".join(f"{r.name}:{_dims(r.min)}" for r in ranges),
        "--optShapes=" + ",".join(f"{r.name}:{_dims(r.opt)}" for r in ranges),
        "--maxShapes=" + ",".join(f"{r.name}:{_dims(r.max)}" for r in ranges),
    ]


def precision_flags(options: BuildOptions) -> list[str]:
    if options.precision == "fp32":
        return []
    if options.precision == "fp16":
        return ["--fp16", *keep_fp32_flags(options)]
    if options.precision == "int8":
        flags = ["--int8", "--fp16"]
        if has_calibration(options):
            flags.append(f"--calib={CALIB_CACHE}")
        return flags
    raise SegcError(f"unknown precision {options.precision!r}; use fp32, fp16 or int8")


def keep_fp32_flags(options: BuildOptions) -> list[str]:
    """The layers ``emulate_fp16`` keeps in fp32, in trtexec's syntax (none: plain ``--fp16``).

    ``--layerPrecisions`` sets the compute precision, ``--layerOutputTypes`` the type the layer
    writes (an fp32 layer writing fp16 would overflow right there), and
    ``--precisionConstraints=obey`` makes them binding instead of hints. TensorRT's ONNX parser
    names layers after the ONNX node names (trtexec --help; NVIDIA/TensorRT issue 4605).
    """
    if not options.fp32_layers:
        return []
    for name in options.fp32_layers:
        if any(c in name for c in ",:") or not name:
            raise SegcError(
                f"node {name!r} is to be kept fp32, but trtexec's --layerPrecisions cannot name it "
                f"(',' and ':' separate its list); rename the node"
            )
    return [
        "--precisionConstraints=obey",
        "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in options.fp32_layers),
        "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in options.fp32_layers),
    ]


def workspace_flags(options: BuildOptions) -> list[str]:
    mb = own_options(options, TensorRTOptions).workspace_mb
    return [] if mb is None else [f"--memPoolSize=workspace:{mb}M"]


def trtexec_argv(model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions) -> tuple[str, ...]:
    name = Path(model_path).name
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return (
        "trtexec",
        f"--onnx={relative_name(Path(model_path), outdir)}",
        f"--saveEngine={stem}.engine",
        *precision_flags(options),
        *shape_flags(build_ranges(model, options)),
        *workspace_flags(options),
    )


def polygraphy_argv(model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions) -> tuple[str, ...]:
    """``polygraphy run M --trt --onnxrt`` at the build's shapes and precision."""
    ranges = build_ranges(model, options)
    argv: list[str] = ["polygraphy", "run", relative_name(Path(model_path), outdir), "--trt", "--onnxrt"]
    if options.precision in ("fp16", "int8"):
        argv.append("--fp16")
    if options.precision == "fp16" and options.fp32_layers:
        argv += [
            "--precision-constraints",
            "obey",
            "--layer-precisions",
            *(f"{n}:float32" for n in options.fp32_layers),
        ]
    if options.precision == "int8":
        argv.append("--int8")
        if has_calibration(options):
            argv += ["--calibration-cache", CALIB_CACHE]
    if ranges:
        argv.append("--input-shapes")
        argv += [f"{r.name}:[{_dims(r.opt, ',')}]" for r in ranges]
        if not all(r.is_static for r in ranges):
            for flag, pick in (("--trt-min-shapes", "min"), ("--trt-opt-shapes", "opt"), ("--trt-max-shapes", "max")):
                argv.append(flag)
                argv += [f"{r.name}:[{_dims(getattr(r, pick), ',')}]" for r in ranges]
    mb = own_options(options, TensorRTOptions).workspace_mb
    if mb is not None:
        argv += ["--pool-limit", f"workspace:{mb}M"]
    tol = TOLERANCE.get(options.precision, 1e-4)
    argv += ["--atol", f"{tol:g}", "--rtol", f"{tol:g}"]
    return tuple(argv)


CALIB_CACHE = "calib.cache"
CALIB_LOADER = "calib_loader.py"


def calibration_steps(
    model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions
) -> tuple[list[Step], list[Artefact]]:
    """The calibration cache trtexec's ``--calib`` reads, made by polygraphy's calibrator.

    trtexec cannot calibrate from images; polygraphy's ``convert --int8`` runs TensorRT's
    entropy calibrator over ``calib_loader.py`` (which yields segc's preprocessed
    images from ``calib.npy``) and writes ``--calibration-cache``; the engine it builds on the way is
    thrown away and trtexec builds the real one from the cache
    (https://github.com/NVIDIA/TensorRT/tree/main/tools/Polygraphy/examples/cli/convert/01_int8_calibration_in_tensorrt).
    """
    from segc.int8_calibration import calib_loader_text, emit_calibration

    files = emit_calibration(model, outdir, options, formats=("npy",))
    assert files is not None
    loader = outdir / CALIB_LOADER
    write_text(loader, calib_loader_text(files))
    argv = [
        "polygraphy",
        "convert",
        relative_name(model_path, outdir),
        "--int8",
        "--data-loader-script",
        CALIB_LOADER,
        "--calibration-cache",
        CALIB_CACHE,
        "-o",
        "calib_probe.engine",
    ]
    ranges = build_ranges(model, options)
    if ranges and not all(r.is_static for r in ranges):
        for flag, pick in (("--trt-min-shapes", "min"), ("--trt-opt-shapes", "opt"), ("--trt-max-shapes", "max")):
            argv.append(flag)
            argv += [f"{r.name}:[{_dims(getattr(r, pick), ',')}]" for r in ranges]
    step = Step(
        tuple(argv), comment=f"int8 calibration cache from {files.count} preprocessed images in {files.npy_file}"
    )
    return [step], [Artefact(loader, "program"), Artefact(outdir / files.npy_file, "data")]


@register_target
class TensorRTTarget(Target):
    """NVIDIA GPUs through TensorRT's ONNX parser (trtexec)."""

    name = "tensorrt"
    description = "NVIDIA TensorRT: trtexec engine build and a polygraphy comparison with onnxruntime"
    default_passes = ("simplify", "cleanup")
    flags = FLAGS

    def target_options(self, values: Mapping[str, Any]) -> TensorRTOptions:
        return tensorrt_options(values)

    def validate_options(self, options: BuildOptions) -> None:
        precision_flags(options)
        workspace_flags(options)

    def check(self, model: onnx.ModelProto, options: BuildOptions) -> list[Violation]:
        precision_flags(options)  # unknown precision: user error before anything is written
        return check_model(model, load_profile(self.name), options)

    def emit(self, model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions) -> list[Artefact]:
        outdir = Path(outdir)
        notes = []
        calib_steps: list[Step] = []
        calib_files: list[Artefact] = []
        given_cache = own_options(options, TensorRTOptions).calib_cache
        if options.precision == "int8" and given_cache is not None:
            from segc.outdir import write_file

            calib_files = [Artefact(write_file(outdir / CALIB_CACHE, given_cache.read_bytes()), "data")]
            notes.append(f"int8 calibration cache copied from {given_cache}")
        elif options.precision == "int8" and options.calib_images is not None:
            calib_steps, calib_files = calibration_steps(model, Path(model_path), outdir, options)
        if options.precision == "int8" and not has_calibration(options):
            notes.append(
                "int8 without --calib-images or --calib-cache: trtexec uses placeholder scales, "
                "so this engine is for timing only"
            )
        grid = "; ".join(r.multiples_text() for r in build_ranges(model, options) if r.has_multiples)
        comment = "build the engine (and time it)" + (
            f"; {grid} (segc folded the Resizes for those sizes only)" if grid else ""
        )
        build = Step(trtexec_argv(model, Path(model_path), outdir, options), comment=comment)
        needs = [Requirement("trtexec", TRTEXEC_HINT)] + (
            [Requirement("polygraphy", POLYGRAPHY_HINT)] if calib_steps else []
        )
        script = write_build_script(outdir, options, needs, [*calib_steps, build], title="TensorRT build", notes=notes)
        compare = Step(
            polygraphy_argv(model, Path(model_path), outdir, options),
            comment="compare TensorRT with onnxruntime on the same random inputs",
        )
        compare_script = write_script(
            outdir / "compare_tensorrt.sh",
            options,
            [Requirement("polygraphy", POLYGRAPHY_HINT)],
            [compare],
            title="TensorRT vs onnxruntime comparison",
            notes=notes,
        )
        engine = next(a[len("--saveEngine=") :] for a in build.argv if a.startswith("--saveEngine="))
        return [*calib_files, script, compare_script, *write_run_script(outdir, options, "tensorrt", engine, model)]
