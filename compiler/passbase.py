"""The pass contract: GraphPass, its result, its context, and the registry.

A pass is a small class over an onnx-graphsurgeon graph that returns what it did. Its
``contract`` tells the verifier how to judge it (docs/design.md, "The pass contract"):

=============  ===================================================================
exact          same function up to float reassociation
approximate    deliberately changes numerics; judged against a budget
outputs        changes which tensors are outputs; kept outputs compared with the same
               tensors exposed in the graph before the pass
target-only    produces ops onnxruntime cannot run; the verifier lowers them first
=============  ===================================================================

Passes register themselves with ``@register_pass``; a duplicate name is an error at import
time, so two modules can never silently shadow each other.
"""

from __future__ import annotations

import enum
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import onnx
import onnx_graphsurgeon as gs

from segc.errors import SegcError
from segc.recipe import Recipe


class Contract(str, enum.Enum):
    """How the verifier judges a pass (see module docstring)."""

    EXACT = "exact"
    APPROXIMATE = "approximate"
    OUTPUTS = "outputs"
    TARGET_ONLY = "target-only"


@dataclass
class PassResult:
    """What a pass did. ``changed`` False means the graph is untouched and is not re-verified."""

    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class PassContext:
    """Read-only facts a pass may need, plus a place to leave model metadata.

    ``options`` holds this pass's own options (already merged: target default < recipe <
    command line). ``metadata`` is written into the model's ``metadata_props`` after the pass,
    which is how e.g. ``set_shape_range`` tells the targets the range it set. ``source`` lets a
    pass that hands the model to a file-based tool (``simplify``) skip re-serialising it.
    """

    options: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    recipe: Recipe | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    model_metadata: dict[str, str] = field(default_factory=dict)  # the model's metadata_props, read-only
    source: Path | None = None  # the file the model came from, set only while the model is exactly that file


    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


class GraphPass:
    """Base class of every pass.

    Subclasses set ``name``, ``contract`` and a one-line ``summary``, and implement ``run``.
    The runner calls ``apply``, which imports the model into onnx-graphsurgeon, runs the
    pass, cleans up and toposorts, and exports again. A pass that must see the whole
    ``ModelProto`` (e.g. ``simplify``, which hands it to onnx-simplifier) overrides ``apply``.

    Options a pass accepts are listed in ``options`` (name -> one-line help) so that
    ``segc passes`` can show them and unknown options are rejected before anything runs.
    """

    name: ClassVar[str] = ""
    contract: ClassVar[Contract] = Contract.EXACT
    summary: ClassVar[str] = ""
    options: ClassVar[dict[str, str]] = {}

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        """Run the pass on a copy of ``model``; the input model is never modified.

        The pipeline does not call this for a pass that keeps it: it runs ``run`` on a graph
        shared by consecutive graph passes (``segc.pipeline.WorkingModel``). So ``run`` sees
        the model's metadata only through ``ctx.model_metadata``, and must leave the graph
        untouched when it returns ``changed=False``.
        """
        if not ctx.model_metadata:
            ctx.model_metadata = {p.key: p.value for p in model.metadata_props}
        graph = gs.import_onnx(model)
        result = self.run(graph, ctx)
        if not result.changed:
            return model, result
        graph.cleanup().toposort()
        out = gs.export_onnx(graph)
        carry_model_fields(model, out)
        return out, result


def carry_model_fields(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    """Copy what onnx-graphsurgeon drops on the round trip (metadata, producer, IR version)."""
    existing = {p.key for p in dst.metadata_props}
    for prop in src.metadata_props:
        if prop.key not in existing:
            dst.metadata_props.add(key=prop.key, value=prop.value)
    if src.producer_name and not dst.producer_name:
        dst.producer_name = src.producer_name
        dst.producer_version = src.producer_version
    dst.ir_version = src.ir_version
    if src.doc_string and not dst.doc_string:
        dst.doc_string = src.doc_string


_REGISTRY: dict[str, type[GraphPass]] = {}


def register_pass(cls: type[GraphPass]) -> type[GraphPass]:
    """Class decorator: add a pass to the registry. Duplicate or empty names are rejected."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no pass name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(
            f"pass name {cls.name!r} is registered twice ({_REGISTRY[cls.name].__module__} and {cls.__module__})"
        )
    _REGISTRY[cls.name] = cls
    return cls


def unregister_pass(name: str) -> None:
    """Remove a pass (tests register throw-away passes and take them out again)."""
    _REGISTRY.pop(name, None)


_LOADED = False


def load_builtin_passes() -> None:
    """Import every module of segc.passes once, so their decorators run."""
    global _LOADED
    if _LOADED:
        return
    import segc.passes as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"segc.passes.{info.name}")
    _LOADED = True


def all_passes() -> dict[str, type[GraphPass]]:
    load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[GraphPass]:
    """Look a pass up by name; an unknown name is a usage error that lists the closest."""
    import difflib

    known = all_passes()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known passes: {', '.join(known)}"
        raise SegcError(f"unknown pass {name!r}{hint}")
    return known[name]
