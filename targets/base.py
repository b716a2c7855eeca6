"""What every target provides: a default pipeline, a legality check and an emitter.

``segc compile`` asks the target for its pipeline (unless the recipe or the command line
names one), runs and verifies the passes, asks the target to check the result, and only then
lets it write the build. A target never edits the graph itself: anything that changes the
graph is a pass, so it is verified like every other edit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import onnx

from segc.errors import SegcError
from segc.recipe import Recipe
from segc.shapes import ShapeRange


@dataclass
class BuildOptions:
    """Everything from the command line (and recipe) that shapes the vendor build."""

    precision: str = "fp32"  # fp32 | fp16 | int8
    batch_sizes: tuple[int, ...] = ()  # one static build per batch size (Ascend), or a batch range
    shape_ranges: list[ShapeRange] = field(default_factory=list)  # final input shapes/ranges
    soc: str | None = None
    outputs: list[str] = field(default_factory=list)  # chosen output tensors when pruning is off
    # fp16 builds: ONNX node names to keep in fp32, found by the emulate_fp16 pass (segc.fp16_emulation)
    fp32_layers: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # target-specific (cann, workspace, calib...)
    command_line: str = ""
    input_sha256: str = ""
    segc_version: str = ""


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


def get_target(name: str) -> Target:
    known = all_targets()
    if name not in known:
        raise SegcError(f"unknown target {name!r}; known targets: {', '.join(known)}")
    return known[name]()
