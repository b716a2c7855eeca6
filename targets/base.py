"""What every target provides: a default pipeline, a legality check and an emitter.

``segc compile`` asks the target for its pipeline (unless the recipe or the command line
names one), runs and verifies the passes, asks the target to check the result, and only then
lets it write the build. A target never edits the graph itself: anything that changes the
graph is a pass, so it is verified like every other edit.

Build settings come in two typed parts. :class:`BuildOptions` holds what every target reads
(precision, batch sizes, shapes, calibration images); :class:`TargetOptions` subclasses hold
one target's own settings (Ascend's chip and CANN release, TensorRT's workspace). A target
declares its command-line flags as :class:`TargetFlag` values and turns the parsed values into
its options type in :meth:`Target.target_options`, so ``segc compile`` (and ``segc batch``
manifests) learn a new target's flags from the registry, not from ``cli.py``:

    targets/foo.py  --flags-->  add_target_arguments(compile parser)   "options for foo"
                    <--values-- parsed args                            --foo-level 3
                    target_options(values) -> FooOptions(level=3) -> BuildOptions.target
"""

from __future__ import annotations

import argparse
import enum
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import onnx

from segc.errors import SegcError
from segc.recipe import Recipe
from segc.shapes import ShapeRange


@dataclass(frozen=True)
class TargetOptions:
    """One target's own build settings; each target subclasses it (the base has none)."""

    def to_dict(self) -> dict[str, Any]:
        """For report.json: every field, paths as strings."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class TargetFlag:
    """A command-line flag a target owns, e.g. ``TargetFlag("--soc", "Ascend chip")``.

    ``kind`` is how the value is read, on the command line and in a ``segc batch`` manifest:
    ``str``, ``int``, ``path`` (a file or folder; relative to the manifest there) or ``bool``
    (a switch). Two targets may own the same flag (``--soc``: Ascend's chip, MagicMind's MLU
    architecture) if they read it the same way; each gives its own help.
    """

    flag: str
    help: str
    kind: str = "str"  # str | int | path | bool
    metavar: str | None = None
    choices: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        """The argparse attribute and the manifest key: ``--cann-version`` -> ``cann_version``."""
        return self.flag.lstrip("-").replace("-", "_")


@dataclass
class BuildOptions:
    """Everything from the command line (and recipe) that shapes the vendor build.

    The fields here are read by every target (and by legalisation); ``target`` holds the
    chosen target's own settings, typed by that target.
    """

    precision: str = "fp32"  # fp32 | fp16 | int8
    batch_sizes: tuple[int, ...] = ()  # one static build per batch size (Ascend), or a batch range
    # a batch range the recipe asks for (MagicMind OCRNet: dim_range 1..16), instead of sizes
    batch_range: tuple[int, int] | None = None
    shape_ranges: list[ShapeRange] = field(default_factory=list)  # final input shapes/ranges
    outputs: list[str] = field(default_factory=list)  # chosen output tensors when pruning is off
    # fp16 builds: ONNX node names to keep in fp32, found by the emulate_fp16 pass (segc.fp16_emulation)
    fp32_layers: tuple[str, ...] = ()
    calib_images: Path | None = None  # --calib-images: int8 calibration images
    calib_samples: int = 32  # --calib-samples: how many of them calibrate
    allow_unlisted_ops: bool = False  # --allow-unlisted-ops: no warnings for ops a partial list lacks
    recipe: Recipe | None = None  # the model's recipe: preprocessing, opt shapes
    target: TargetOptions = field(default_factory=TargetOptions)
    command_line: str = ""
    input_sha256: str = ""
    segc_version: str = ""


TO = TypeVar("TO", bound=TargetOptions)


def own_options(options: BuildOptions, kind: type[TO]) -> TO:
    """The target's own options from ``options``, or that type's defaults when another was given."""
    given = options.target
    return given if isinstance(given, kind) else kind()


class Severity(str, enum.Enum):
    """How sure segc is that the vendor compiler rejects a node.

    ``error``: evidence says it is unsupported (a complete list lacks it, a documented
    constraint is broken). ``unconfirmed``: only that segc's list for the vendor is partial
    and does not name it; that is a warning, never a refusal.
    """

    ERROR = "error"
    UNCONFIRMED = "unconfirmed"


@dataclass(frozen=True)
class Violation:
    """A node (or the model) the target's compiler would reject, and why."""

    node: str
    op: str
    reason: str
    fixed_by: str | None = None  # the pass that fixes it, when one exists
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        fix = f" (fixed by pass {self.fixed_by})" if self.fixed_by else ""
        return f"{self.node} [{self.op}]: {self.reason}{fix}"


@dataclass(frozen=True)
class Artefact:
    """A file a target wrote, and what it is for (listed in the report)."""

    path: Path
    kind: str  # model | script | program | data


class Target:
    """Base class. Subclasses set ``name`` and ``description`` and override what they need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_passes: ClassVar[tuple[str, ...]] = ("simplify", "cleanup")
    # the flags this target adds to ``segc compile`` (and the keys of segc batch manifests)
    flags: ClassVar[tuple[TargetFlag, ...]] = ()
    # the legality profile; None: ``targets/<name>.json`` shipped with segc
    profile_path: ClassVar[Path | None] = None

    def pipeline(self, recipe: Recipe | None) -> list[str]:
        """Pass names to run when the command line names none: the recipe's, else the default."""
        if recipe is not None:
            passes = recipe.for_target(self.name).passes
            if passes is not None:
                return list(passes)
        return list(self.default_passes)

    def pass_options(self, recipe: Recipe | None) -> dict[str, dict[str, Any]]:
        """Options this target gives passes by default (recipe and command line override)."""
        opts: dict[str, dict[str, Any]] = {}
        if recipe is not None:
            for name, values in recipe.for_target(self.name).options.items():
                opts.setdefault(name, {}).update(values)
        return opts

    def target_options(self, values: Mapping[str, Any]) -> TargetOptions:
        """This target's typed options from its flags' values (``TargetFlag.dest`` -> value, None
        when not given; the command line over the recipe's ``TargetRecipe.flags``). Raise
        SegcError for a bad value."""
        return TargetOptions()

    def check(self, model: onnx.ModelProto, options: BuildOptions) -> list[Violation]:
        """What the vendor compiler would reject in ``model``. Empty means legal."""
        return []

    def validate_options(self, options: BuildOptions) -> None:
        """Raise SegcError for build settings this target cannot use, before any pass runs.

        The graph is not needed for these (precision, chip, tool versions, calibration data),
        so a typo costs nothing instead of a whole pipeline run.
        """

    def emit(self, model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions) -> list[Artefact]:
        """Write build.sh (and any build program) into ``outdir``; the model is already saved."""
        raise NotImplementedError


_TARGETS: dict[str, type[Target]] = {}


def register_target(cls: type[Target]) -> type[Target]:
    if not cls.name or cls.name in _TARGETS:
        raise ValueError(f"target name {cls.name!r} is empty or registered twice")
    _TARGETS[cls.name] = cls
    return cls


def all_targets() -> dict[str, type[Target]]:
    import importlib
    import pkgutil

    import segc.targets as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"segc.targets.{info.name}")
    return dict(sorted(_TARGETS.items()))


def registered(name: str) -> type[Target] | None:
    """The registered class of target ``name``, without importing the target modules."""
    return _TARGETS.get(name)


def get_target(name: str) -> Target:
    known = all_targets()
    if name not in known:
        raise SegcError(f"unknown target {name!r}; known targets: {', '.join(known)}")
    return known[name]()


# ------------------------------------------------------------------ target flags

_KIND_TYPES: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "path": str}


def target_flags() -> dict[str, tuple[TargetFlag, tuple[str, ...]]]:
    """Every target flag once: ``--flag`` -> (its spec, the targets that own it).

    Two targets owning one flag must read it the same way (kind, choices); a clash is a bug
    in a target module, raised as ValueError when the parser is built.
    """
    merged: dict[str, tuple[TargetFlag, tuple[str, ...]]] = {}
    for name, cls in all_targets().items():
        for spec in cls.flags:
            if spec.flag in merged:
                first, owners = merged[spec.flag]
                if (first.kind, first.choices) != (spec.kind, spec.choices):
                    raise ValueError(f"targets {owners[0]} and {name} declare {spec.flag} differently")
                merged[spec.flag] = (first, (*owners, name))
            else:
                merged[spec.flag] = (spec, (name,))
    return merged


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``--target`` (choices from the registry) and every target's flags, grouped by owner."""
    known = all_targets()
    parser.add_argument("--target", required=True, choices=list(known), metavar="TARGET",
                        help="; ".join(f"{n}: {cls.description}" for n, cls in known.items()))
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    for flag, (spec, owners) in target_flags().items():
        if owners not in groups:
            groups[owners] = parser.add_argument_group(f"options for {' and '.join(owners)}")
        helps = [f"{n}: {s.help}" for n in owners for s in known[n].flags if s.flag == flag]
        kwargs: dict[str, Any] = {"dest": spec.dest, "default": None, "help": "; ".join(helps)}
        if spec.kind == "bool":
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = _KIND_TYPES[spec.kind]
            kwargs["metavar"] = spec.metavar or spec.dest.upper()
            if spec.choices:
                kwargs["choices"] = list(spec.choices)
        groups[owners].add_argument(flag, **kwargs)


def target_values(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    """The values of ``target``'s flags from parsed ``args``; a flag of another target is a
    usage error naming whose it is (it would be ignored otherwise)."""
    for flag, (spec, owners) in target_flags().items():
        if target.name not in owners and getattr(args, spec.dest, None) not in (None, False):
            raise SegcError(f"{flag} is an option of target {' and '.join(owners)}, not of {target.name}")
    return {spec.dest: getattr(args, spec.dest, None) for spec in target.flags}
