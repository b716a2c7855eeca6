"""The model zoo: the five seed architectures, built with seeded weights and exported to ONNX.

Each hand-made guide exported its model its own way (opset 11 here, 10 there, dynamic batch
for one, dynamic H/W for another, numbered node names everywhere). The zoo keeps those
choices as data, one ``ZooEntry`` per model, and ``export_model`` turns any entry into a
checked ONNX file carrying the metadata a later ``segc compile`` needs::

    build(name)                        # torch module, eval mode, seeded or loaded weights
      -> torch.onnx.export             # legacy (TorchScript) or dynamo exporter
      -> post-checks                   # opset really honoured, Resize semantics expressible
      -> metadata_props                # segc.recipe / segc.model / segc.exporter / segc.opset
      -> onnx.checker + atomic save    # IR version <= 10, never over the weights file

torch is imported lazily: ``segc compile`` must run on machines without it, and only
``segc export`` should say that PyTorch is missing.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import onnx

from segc.errors import SegcError, first_line
from segc.models.weights import apply_state_dict, read_checkpoint
from segc.recipe import RECIPE_METADATA_KEY

if TYPE_CHECKING:
    import torch

#: Metadata keys the exporter writes besides ``segc.recipe``.
MODEL_METADATA_KEY = "segc.model"
EXPORTER_METADATA_KEY = "segc.exporter"
OPSET_METADATA_KEY = "segc.opset"
LOGITS_METADATA_KEY = "segc.logits"  # "true" when argmax was left out of a label-map model

EXPORTERS = ("legacy", "dynamo")

#: The dynamo exporter builds opset 18 graphs and down-converts; below 18 the conversion
#: often fails (Resize has no adapter), so its default is never lower than this.
DYNAMO_MIN_NATIVE_OPSET = 18

#: Opsets below 11 have no coordinate_transformation_mode: a linear Resize there cannot
#: express PyTorch's bilinear interpolation (half-pixel or align_corners).
RESIZE_COORDINATE_MODE_OPSET = 11

INSTALL_HINT = "install the export extra: pip install 'segc[export]' (PyTorch CPU and onnxscript)"


@dataclass(frozen=True)
class ZooEntry:
    """How one seed model is built and exported (the seed guide's choices, as data)."""

    name: str
    module: str  # import path of the architecture module, which defines build_model()
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    default_shape: tuple[int, int, int, int]
    default_opset: int
    spatial_multiple: int
    recipe: str
    description: str
    builder_kwargs: Mapping[str, Any] = field(default_factory=dict)
    min_opset: int = 9
    dynamic_by_default: bool = False
    #: input axes made dynamic by ``dynamic=True`` (axis -> dim name)
    dynamic_axes: Mapping[int, str] = field(default_factory=lambda: {0: "batch"})
    #: per output, the axes that follow the dynamic input axes (axis -> dim name)
    output_dynamic_axes: Mapping[int, str] = field(default_factory=lambda: {0: "batch"})
    has_logits_switch: bool = False  # build_model(logits=True) drops the final argmax
    bilinear: bool = False  # resizes bilinearly, so needs opset >= 11 (coordinate modes)
    #: outputs are [N, C, H/d, W/d] for d = output_divisor (+1 each for DeepLab's ceil-mode pool)
    output_divisor: int = 1
    output_plus_one: bool = False

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        """Spatial size of every output for an H x W input (each model's outputs share it)."""
        extra = 1 if self.output_plus_one else 0
        return h // self.output_divisor + extra, w // self.output_divisor + extra


_HW = {2: "height", 3: "width"}

ZOO: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        ZooEntry(
            name="ocrnet_hrnetw18",
            module="segc.models.ocrnet_hrnetw18",
            input_names=("x",),
            output_names=("output",),
            default_shape=(1, 3, 1024, 2048),
            default_opset=11,
            spatial_multiple=32,
            recipe="ocrnet_hrnetw18",
            description="OCRNet + HRNetV2-W18, Cityscapes, label map (argmax in graph), dynamic batch",
            # the guide built one model per batch size (1, 4, 8, 16): a dynamic batch lets segc
            # emit those builds from one verified graph
            dynamic_by_default=True,
            has_logits_switch=True,
            bilinear=True,
        ),
        ZooEntry(
            name="hrnet_w48_ocr",
            module="segc.models.hrnet_w48_ocr",
            input_names=("image",),
            output_names=("output1", "output2"),
            default_shape=(1, 3, 1024, 2048),
            default_opset=11,
            spatial_multiple=32,
            recipe="hrnet_w48_ocr",
            description="HRNetV2-W48 + OCR head, Cityscapes, aux and OCR logits at 1/4",
            bilinear=True,
            output_divisor=4,
        ),
        ZooEntry(
            name="deeplabv2_r101",
            module="segc.models.deeplabv2_r101",
            input_names=("image",),
            output_names=("output1", "output2"),
            default_shape=(1, 3, 512, 1024),
            default_opset=11,
            spatial_multiple=8,
            recipe="deeplabv2_r101",
            description="IntraDA DeepLabv2, ResNet-101 + ASPP, stride 8, dynamic batch",
            dynamic_by_default=True,
            output_divisor=8,
            output_plus_one=True,
        ),
        ZooEntry(
            name="dbnet_r50",
            module="segc.models.dbnet",
            input_names=("input",),
            output_names=("output",),
            default_shape=(1, 3, 640, 640),
            default_opset=10,
            spatial_multiple=32,
            recipe="dbnet_r50",
            description="DBNet, ResNet-50, dynamic H and W, probability map",
            builder_kwargs={"dcn": False},
            dynamic_by_default=True,
            dynamic_axes=_HW,
            output_dynamic_axes=_HW,
        ),
        ZooEntry(
            name="dbnet_r50_dcn",
            module="segc.models.dbnet",
            input_names=("input",),
            output_names=("output",),
            default_shape=(1, 3, 640, 640),
            default_opset=19,
            min_opset=19,  # ONNX DeformConv
            spatial_multiple=32,
            recipe="dbnet_r50_dcn",
            description="DBNet, deformable ResNet-50 (DCNv2 as ONNX DeformConv), dynamic H and W",
            builder_kwargs={"dcn": True},
            dynamic_by_default=True,
            dynamic_axes=_HW,
            output_dynamic_axes=_HW,
        ),
    )
}


def model_names() -> list[str]:
    """The zoo's model names, in the order README and docs/design.md list them."""
    return list(ZOO)


def get_entry(name: str) -> ZooEntry:
    """The zoo entry for ``name``; SegcError listing the known names otherwise."""
    try:
        return ZOO[name]
    except KeyError:
        raise SegcError(f"unknown model {name!r}; known models: {', '.join(ZOO)}") from None


def _import_torch() -> ModuleType:
    try:
        import torch
    except ImportError:
        raise SegcError(f"`segc export` needs PyTorch; {INSTALL_HINT}") from None
    return torch


def _architecture(entry: ZooEntry) -> ModuleType:
    _import_torch()
    try:
        return importlib.import_module(entry.module)
    except ImportError as exc:
        if exc.name == "torch":
            raise SegcError(f"`segc export` needs PyTorch; {INSTALL_HINT}") from None
        raise SegcError(f"model {entry.name!r}: its architecture module {entry.module} cannot be imported "
                        f"({exc})") from None


def io_names(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of ``name``: the architecture module's, when it declares them."""
    entry = get_entry(name)
    try:
        module = importlib.import_module(entry.module)
    except ImportError:
        return entry.input_names, entry.output_names
    return (tuple(getattr(module, "INPUT_NAMES", entry.input_names)),
            tuple(getattr(module, "OUTPUT_NAMES", entry.output_names)))


def build(name: str, *, weights: str | Path | None = None, logits: bool = False, seed: int = 0) -> "torch.nn.Module":
    """Build ``name`` in eval mode: seeded random weights, or the checkpoint ``weights``.

    The seed drives a private copy of torch's RNG (``fork_rng``), so building a model never
    changes the random stream of the caller.
    """
    entry = get_entry(name)
    torch = _import_torch()
    arch = _architecture(entry)
    # read (and so validate) the checkpoint before spending seconds on building the model
    state = read_checkpoint(weights) if weights is not None else None
    kwargs = dict(entry.builder_kwargs)
    if logits:
        if not entry.has_logits_switch:
            what = "a probability map" if name.startswith("dbnet") else "logits"
            with_switch = ", ".join(e.name for e in ZOO.values() if e.has_logits_switch)
            raise SegcError(f"--logits: {name} already outputs {what}; only {with_switch} has an argmax to leave out")
        kwargs["logits"] = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = arch.build_model(**kwargs)
        if state is None and kwargs.get("dcn"):
            # random offsets, not DB's zero init: with zero offsets DCNv2 is a plain conv and no
            # verifier could tell a wrong sampling layout from a right one
            arch.calibrate_offsets(model, torch.randn(1, 3, 128, 128) * 0.25)
    if state is not None and weights is not None:  # state was read from weights
        apply_state_dict(model, state, source=weights)
    return model.eval()


# ----------------------------------------------------------------------------- validation


def check_shape(entry: ZooEntry, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Validate an export shape (N,3,H,W with H, W multiples of the model's stride)."""
    dims = tuple(int(d) for d in shape)
    text = ",".join(str(d) for d in dims)
    if len(dims) != 4:
        raise SegcError(f"--shape {text}: {entry.name} takes a 4-D N,C,H,W input, got {len(dims)} dims")
    n, c, h, w = dims
    if min(dims) < 1:
        raise SegcError(f"--shape {text}: dimensions must be positive")
    if c != 3:
        raise SegcError(f"--shape {text}: {entry.name} takes 3 (RGB) channels, got C={c}")
    m = entry.spatial_multiple
    bad = [f"{axis}={v}" for axis, v in (("H", h), ("W", w)) if v % m]
    if bad:
        raise SegcError(f"--shape {text}: H and W of {entry.name} must be multiples of {m} "
                        f"(its output stride); got {', '.join(bad)}")
    return n, c, h, w


def legacy_max_opset() -> int:
    """The newest opset torch's TorchScript exporter writes (20 in torch 2.x)."""
    try:
        from torch.onnx import _constants

        return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))
    except ImportError:
        return 20


def resolve_opset(entry: ZooEntry, opset: int | None, exporter: str) -> int:
    """The opset to export at: the model's default (raised to 18 for dynamo) or ``opset``."""
    if exporter not in EXPORTERS:
        raise SegcError(f"--exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    if opset is None:
        opset = entry.default_opset
        if exporter == "dynamo":
            opset = max(opset, DYNAMO_MIN_NATIVE_OPSET)
    if opset < entry.min_opset:
        why = "ONNX DeformConv exists only from opset 19" if entry.min_opset >= 19 else "its operators need it"
        raise SegcError(f"--opset {opset}: {entry.name} needs opset {entry.min_opset} or newer ({why})")
    if entry.bilinear and opset < RESIZE_COORDINATE_MODE_OPSET:
        raise SegcError(_bilinear_message(entry, opset))
    if exporter == "legacy" and opset > legacy_max_opset():
        raise SegcError(f"--opset {opset}: the legacy exporter writes opsets up to {legacy_max_opset()}; "
                        "use --exporter dynamo for newer opsets")
    if opset > 23:
        raise SegcError(f"--opset {opset}: segc handles opsets up to 23")
    return opset


def _bilinear_message(entry: ZooEntry, opset: int) -> str:
    return (f"--opset {opset}: {entry.name} resizes bilinearly, which ONNX Resize can express only from "
            f"opset {RESIZE_COORDINATE_MODE_OPSET} (coordinate_transformation_mode); use --opset "
            f"{RESIZE_COORDINATE_MODE_OPSET} or newer")


# ----------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportSummary:
    """What one export produced (``segc export`` prints it on one line)."""

    path: Path
    model: str
    exporter: str
    opset: int
    shape: tuple[int, int, int, int]
    dynamic: bool
    nodes: int
    params: int
    bytes: int
    seconds: float

    def line(self) -> str:
        size = f"{self.bytes / 1e6:.1f} MB" if self.bytes >= 1e5 else f"{self.bytes / 1e3:.1f} kB"
        return (f"{self.path}: {self.model} ({self.exporter} exporter, opset {self.opset}, "
                f"{'dynamic' if self.dynamic else 'static'} {'x'.join(map(str, self.shape))}), "
                f"{size}, {self.nodes} nodes, {self.params:,} params, {self.seconds:.1f} s")


def export_model(
    name: str,
    path: str | Path,
    *,
    shape: tuple[int, ...] | None = None,
    dynamic: bool | None = None,
    weights: str | Path | None = None,
    opset: int | None = None,
    exporter: str = "legacy",
    logits: bool = False,
    seed: int = 0,
) -> Path:
    """Export zoo model ``name`` to ``path`` and return the path (see ``export_with_summary``)."""
    return export_with_summary(name, path, shape=shape, dynamic=dynamic, weights=weights, opset=opset,
                               exporter=exporter, logits=logits, seed=seed).path


def export_with_summary(
    name: str,
    path: str | Path,
    *,
    shape: tuple[int, ...] | None = None,
    dynamic: bool | None = None,
    weights: str | Path | None = None,
    opset: int | None = None,
    exporter: str = "legacy",
    logits: bool = False,
    seed: int = 0,
) -> ExportSummary:
    """Export ``name`` to a checked ONNX file at ``path``; SegcError on any bad request.

    ``dynamic`` None keeps the model's seed choice (dynamic H/W for DBNet, dynamic batch for
    DeepLabv2, static HRNets); True makes the entry's dynamic axes symbolic; False freezes all.
    The file is written atomically, never over ``weights``.
    """
    started = time.perf_counter()
    entry = get_entry(name)
    dims = check_shape(entry, shape if shape is not None else entry.default_shape)
    opset = resolve_opset(entry, opset, exporter)
    dynamic = entry.dynamic_by_default if dynamic is None else bool(dynamic)
    path = Path(path)
    if weights is not None and Path(weights).exists() and path.exists() and path.resolve() == Path(weights).resolve():
        raise SegcError(f"{path}: refusing to write the model over the --weights file")
    torch = _import_torch()

    model = build(name, weights=weights, logits=logits, seed=seed)
    input_names, output_names = io_names(name)
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(*dims, generator=generator)

    if exporter == "legacy":
        proto = _export_legacy(model, example, entry, input_names, output_names, opset, dynamic)
    else:
        proto = _export_dynamo(model, example, entry, input_names, output_names, opset, dynamic)

    _check_exported(proto, entry, exporter, opset, input_names, output_names)
    _tidy_output_dims(proto, entry, output_names, dynamic)
    _set_metadata(proto, {
        RECIPE_METADATA_KEY: entry.recipe,
        MODEL_METADATA_KEY: entry.name,
        EXPORTER_METADATA_KEY: exporter,
        OPSET_METADATA_KEY: str(opset),
        **({LOGITS_METADATA_KEY: "true"} if logits else {}),
    })
    proto.producer_name = "segc"
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise SegcError(f"{name}: the {exporter} exporter wrote an invalid ONNX model: "
                        f"{first_line(exc)}") from None

    from segc.modelio import save_model

    save_model(proto, path, protect=[weights] if weights is not None else [])
    return ExportSummary(
        path=path, model=name, exporter=exporter, opset=opset, shape=dims, dynamic=dynamic,
        nodes=len(proto.graph.node), params=_count_params(proto), bytes=path.stat().st_size,
        seconds=time.perf_counter() - started,
    )


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' chatter (deprecation notices, progress lines, warnings).

    The user asked for a file; segc reports what matters itself, and real problems surface
    as exceptions (turned into SegcError) or as post-export checks.
    """
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=False):
            lg.setLevel(level)


def _exporter_failure(entry: ZooEntry, exporter: str, opset: int, exc: BaseException) -> SegcError:
    return SegcError(f"the {exporter} exporter cannot export {entry.name} at opset {opset}: {first_line(exc)[:300]}")


def _export_legacy(model: "torch.nn.Module", example: "torch.Tensor", entry: ZooEntry,
                   input_names: tuple[str, ...], output_names: tuple[str, ...], opset: int,
                   dynamic: bool) -> onnx.ModelProto:
    """TorchScript export, the way the seed guides did it (constant folding on)."""
    import torch

    dynamic_axes: dict[str, dict[int, str]] | None = None
    if dynamic:
        dynamic_axes = {n: dict(entry.dynamic_axes) for n in input_names}
        dynamic_axes.update({n: dict(entry.output_dynamic_axes) for n in output_names})
    buffer = io.BytesIO()
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                model, (example,), buffer,  # type: ignore[arg-type]  # f: typed a path, a BytesIO is documented
                dynamo=False, opset_version=opset,
                input_names=list(input_names), output_names=list(output_names),
                dynamic_axes=dynamic_axes, do_constant_folding=True,
            )
    except SegcError:
        raise
    except Exception as exc:  # noqa: BLE001 - any exporter failure is "cannot do this request"
        raise _exporter_failure(entry, "legacy", opset, exc) from None
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(model: "torch.nn.Module", example: "torch.Tensor", entry: ZooEntry,
                   input_names: tuple[str, ...], output_names: tuple[str, ...], opset: int,
                   dynamic: bool) -> onnx.ModelProto:
    """torch.export-based export; symbolic dims are renamed to the zoo's names afterwards."""
    import torch

    dynamic_shapes = None
    if dynamic:
        # Dim.DYNAMIC lets torch.export derive the model's own constraints (e.g. H % 32 == 0)
        dynamic_shapes = ({axis: torch.export.Dim.DYNAMIC for axis in entry.dynamic_axes},)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, external_data=False, opset_version=opset,
                input_names=list(input_names), output_names=list(output_names),
                dynamic_shapes=dynamic_shapes, verbose=False,
            )
        assert program is not None  # dynamo=True returns the program
        proto = program.model_proto
    except SegcError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _exporter_failure(entry, "dynamo", opset, exc) from None
    if dynamic:
        _rename_symbolic_dims(proto, input_names, entry.dynamic_axes)
    return proto


def _tidy_output_dims(proto: onnx.ModelProto, entry: ZooEntry, output_names: tuple[str, ...], dynamic: bool) -> None:
    """Give the outputs the dims the zoo knows, whatever the exporter managed to infer.

    Both exporters lose track of some output dims: the legacy one names the batch of DBNet's
    output ``Sigmoidoutput_dim_0`` although the input batch is a static 1, and OCRNet's label
    map ``ArgMaxoutput_dim_2`` although H is static (shape-computed Resizes hide them); the
    dynamo one writes sympy expressions such as ``4*TruncToInt(8.0*ToFloat(((s53 - 1)//32) + 1))``.
    A target reading a spurious symbol would build for a dynamic shape nobody asked for, so:
    declared dynamic axes get their names, and an exporter-made symbol on an axis that is
    static in the input becomes its value (every zoo output is [N, C, H', W'] with H', W' from
    ``ZooEntry.output_hw``). Concrete dims the exporter did infer are left alone.
    """
    declared = dict(entry.output_dynamic_axes) if dynamic else {}
    in_dims = proto.graph.input[0].type.tensor_type.shape.dim
    static = [d.dim_value if d.HasField("dim_value") else 0 for d in in_dims]
    if len(static) != 4:
        return
    n, _, h, w = static
    oh, ow = entry.output_hw(h, w) if h and w else (0, 0)
    known = {0: n, 2: oh, 3: ow}
    for value in proto.graph.output:
        if value.name not in output_names:
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis in declared:
                dim.dim_param = declared[axis]
            elif not dim.HasField("dim_value") and known.get(axis):
                dim.dim_value = known[axis]


def _rename_symbolic_dims(proto: onnx.ModelProto, input_names: tuple[str, ...], axes: Mapping[int, str]) -> None:
    """Give torch.export's symbols (``s0``, ``s53``...) the zoo's names everywhere they occur.

    Symbols also appear inside derived dims (``(s53 - 1)//32 + 1``), so whole-word matches
    are replaced within those expressions too.
    """
    renames: dict[str, str] = {}
    for value in proto.graph.input:
        if value.name in input_names:
            dims = value.type.tensor_type.shape.dim
            for axis, dim_name in axes.items():
                if axis < len(dims) and dims[axis].dim_param:
                    renames[dims[axis].dim_param] = dim_name
    if not renames:
        return
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(renames, key=len, reverse=True)) + r")\b")
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: renames[m.group(1)], dim.dim_param)


def _check_exported(proto: onnx.ModelProto, entry: ZooEntry, exporter: str, opset: int,
                    input_names: tuple[str, ...], output_names: tuple[str, ...]) -> None:
    """Catch what the exporters do silently: a different opset, or Resize semantics lost."""
    actual = next((imp.version for imp in proto.opset_import if imp.domain in ("", "ai.onnx")), 0)
    if actual != opset:
        raise SegcError(f"the {exporter} exporter cannot write {entry.name} at opset {opset} "
                        f"(it produced opset {actual}); use --opset {actual} or --exporter "
                        f"{'legacy' if exporter == 'dynamo' else 'dynamo'}")
    if opset < RESIZE_COORDINATE_MODE_OPSET:
        linear = [n.name or n.op_type for n in proto.graph.node
                  if n.op_type in ("Resize", "Upsample")
                  and any(a.name == "mode" and a.s in (b"linear", b"bilinear") for a in n.attribute)]
        if linear:
            raise SegcError(_bilinear_message(entry, opset))
    got_in = tuple(v.name for v in proto.graph.input)
    got_out = tuple(v.name for v in proto.graph.output)
    if got_in[: len(input_names)] != input_names or got_out != output_names:
        raise SegcError(f"the {exporter} exporter named the graph's inputs {got_in} and outputs {got_out}, "
                        f"expected {input_names} and {output_names}")


def _set_metadata(proto: onnx.ModelProto, values: Mapping[str, str]) -> None:
    """Set ``metadata_props`` entries, replacing any existing key of the same name."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _count_params(proto: onnx.ModelProto) -> int:
    """Number of scalar weights in initializers (constants folded into Constant nodes too)."""
    total = 0
    for init in proto.graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        total += count
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.dims:
                    count = 1
                    for d in attr.t.dims:
                        count *= d
                    total += count
    return total
