"""The pass contract: the two pass kinds, their options, result, context, and the registry.

A pass is a small class that returns what it did. Its ``contract`` tells the verifier how to
judge it (docs/design.md, "The pass contract"):

=============  ===================================================================
exact          same function up to float reassociation
approximate    deliberately changes numerics; judged against a budget
outputs        changes which tensors are outputs; kept outputs compared with the same
               tensors exposed in the graph before the pass
target-only    produces ops onnxruntime cannot run; the verifier lowers them first
=============  ===================================================================

Two kinds, told apart by base class (the pipeline dispatches on it)::

    GraphPass.run(graph, ctx) -> PassResult            one onnx-graphsurgeon graph, shared by
                                                       consecutive graph passes (no re-import)
    ModelPass.run_model(model, ctx) -> (model, result) the whole ModelProto, for passes that
                                                       hand it to a tool (onnx-simplifier, the
                                                       version converter, onnxruntime)

Options are declared as typed :class:`PassOption` fields and coerced once, before any pass
runs, so ``simplify.fold_constants=off`` is ``False`` everywhere and a pass never parses a
string itself. Ordering needs are declared too (``runs_after``, ``runs_before``,
``requires``); ``segc.pass_order`` turns them into one constraint graph.

Passes register themselves with ``@register_pass``; a duplicate name, or an ordering
constraint that closes a cycle, is an error at import time.
"""

from __future__ import annotations

import abc
import enum
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import onnx
import onnx_graphsurgeon as gs

from segc.errors import SegcError
from segc.recipe import Recipe
from segc.gs_import import import_graph


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


#: A coerced option value: what ``PassContext.option`` returns and report.json records.
OptionValue = bool | int | float | str | list[str]

_TRUE = ("true", "on", "yes", "1")
_FALSE = ("false", "off", "no", "0")


class OptionKind(str, enum.Enum):
    """The type of a pass option; ``segc passes --json`` shows it."""

    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    STR = "str"
    CHOICE = "choice"  # a str from ``choices``
    STR_LIST = "list[str]"  # a list, or one string that ``split`` cuts (default: on ';')


class OptionError(SegcError):
    """An option value that does not fit its declaration: a usage error (exit 2)."""


def _split_semicolons(text: str) -> list[str]:
    return [part.strip() for part in text.split(";") if part.strip()]


@dataclass(frozen=True)
class PassOption:
    """One declared option of a pass: its type, default, allowed values and help.

    Values arrive as JSON from ``--option`` (``=off`` is the string "off", ``=0`` the int 0),
    from recipes and manifests (any JSON/TOML value) and from segc itself (legalisation).
    :meth:`coerce` turns all of them into one Python type, or refuses with the valid values,
    so ``simplify.fold_constants=off`` cannot be truthy and no pass parses strings.
    ``default`` None means "unset": the pass sees ``None`` and decides. ``required`` options
    have no sensible default (``convert_opset.version``): leaving one out is refused with the
    other option errors, before the first pass, not when the pass is reached.
    """

    kind: OptionKind
    help: str
    default: OptionValue | None = None
    choices: tuple[str, ...] | None = None
    split: Callable[[str], list[str]] = _split_semicolons  # STR_LIST given as one string
    required: bool = False

    def __post_init__(self) -> None:
        if (self.kind is OptionKind.CHOICE) != bool(self.choices):
            raise ValueError("choices are given exactly for a CHOICE option")
        if self.required and self.default is not None:
            raise ValueError("a required option has no default")
        if self.default is not None:
            self.coerce(self.default, "<default>")  # a declaration error shows at import time

    def valid_values(self) -> str:
        """The values accepted, in words, for error messages and ``segc passes``."""
        if self.kind is OptionKind.BOOL:
            return ", ".join(_TRUE + _FALSE)
        if self.choices:
            return ", ".join(self.choices)
        return {OptionKind.INT: "a whole number", OptionKind.FLOAT: "a number", OptionKind.STR: "any text",
                OptionKind.STR_LIST: "a list of text, or one ';'-separated string"}[self.kind]

    def coerce(self, value: object, where: str) -> OptionValue:
        """``value`` as this option's type; ``where`` (``pass.key``) names it in the error."""
        out = self._coerce(value)
        if out is None:
            raise OptionError(f"option {where}={_show(value)} is not a valid {self.kind.value}; "
                              f"valid values: {self.valid_values()}")
        return out

    def _coerce(self, value: object) -> OptionValue | None:
        kind = self.kind
        if kind is OptionKind.BOOL:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower() if isinstance(value, (int, str)) else ""
            return True if text in _TRUE else False if text in _FALSE else None
        if isinstance(value, bool):
            return None  # True is an int to Python, never a number or a name to a user
        if kind is OptionKind.INT:
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return _parse(int, value)
        if kind is OptionKind.FLOAT:
            return float(value) if isinstance(value, (int, float)) else _parse(float, value)
        if kind is OptionKind.STR:
            return str(value) if isinstance(value, (str, int, float)) else None
        if kind is OptionKind.CHOICE:
            assert self.choices
            if not isinstance(value, (str, int)):
                return None
            return next((c for c in self.choices if c.lower() == str(value).strip().lower()), None)
        if isinstance(value, str):
            return self.split(value)
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
            return [str(v).strip() for v in value if str(v).strip()]
        return None

    def to_dict(self) -> dict[str, Any]:
        choices = list(self.choices) if self.choices else None
        return {"type": self.kind.value, "default": self.default, "choices": choices, "help": self.help,
                "required": self.required}


def _parse(kind: type[int | float], value: object) -> int | float | None:
    if not isinstance(value, str):
        return None
    try:
        return kind(value.strip())
    except ValueError:
        return None


def _show(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


@dataclass
class PassContext:
    """Read-only facts a pass may need, plus a place to leave model metadata.

    ``options`` holds this pass's own options, merged (target default < recipe < command
    line) and, once the pass is bound (``Pass.bind``), coerced with every default filled in.
    ``metadata`` is written into the model's ``metadata_props`` after the pass, which is how
    e.g. ``set_shape_range`` tells the targets the range it set.
    """

    options: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    recipe: Recipe | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    model_metadata: dict[str, str] = field(default_factory=dict)  # the model's metadata_props, read-only
    declared: Mapping[str, PassOption] | None = None  # set by Pass.bind: the pass's declarations

    def option(self, key: str) -> Any:
        """The coerced value of a declared option (its default when not given).

        Asking for an undeclared key is a bug in the pass, not a usage error."""
        if self.declared is not None and key not in self.declared:
            declared = ", ".join(self.declared) or "none"
            raise KeyError(f"option {key!r} is not declared by this pass (declared: {declared})")
        return self.options.get(key)


class Pass(abc.ABC):
    """What every pass declares; subclass :class:`GraphPass` or :class:`ModelPass`.

    ``options``: name -> :class:`PassOption`, shown by ``segc passes``; unknown options are
    rejected before anything runs. ``runs_after`` / ``runs_before``: passes that, when both
    are in a pipeline, must run before / after this one; ``requires``: passes that must be
    present, earlier. ``order_reason`` says why, for the error a violated order gives.
    """

    name: ClassVar[str] = ""
    contract: ClassVar[Contract] = Contract.EXACT
    summary: ClassVar[str] = ""
    options: ClassVar[dict[str, PassOption]] = {}
    runs_after: ClassVar[tuple[str, ...]] = ()
    runs_before: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    order_reason: ClassVar[str] = ""

    @classmethod
    def contract_for(cls, options: Mapping[str, Any]) -> Contract:
        """The contract under these (coerced) options; override when it depends on them."""
        return cls.contract

    @classmethod
    def tolerance_for(cls, options: Mapping[str, Any]) -> dict[str, float]:
        """Tolerance defaults this pass needs under these options (e.g. a noisier rewrite); none by default."""
        return {}

    @classmethod
    def resolve_options(cls, given: Mapping[str, object]) -> dict[str, OptionValue | None]:
        """Every declared option, coerced: the given ones checked, the rest at their default.

        Idempotent, so values already coerced pass through unchanged. An unknown key or a
        value of the wrong type is an :class:`OptionError` naming what is accepted.
        """
        unknown = sorted(set(given) - set(cls.options))
        if unknown:
            accepted = ", ".join(sorted(cls.options)) or "none"
            raise OptionError(f"pass {cls.name} has no option {', '.join(unknown)}; it accepts: {accepted}")
        out: dict[str, OptionValue | None] = {}
        for key, decl in cls.options.items():
            value = given.get(key)
            if value is None and decl.required:
                raise OptionError(f"pass {cls.name} needs option {key} ({decl.help}), e.g. "
                                  f"--option {cls.name}.{key}=...")
            out[key] = decl.default if value is None else decl.coerce(value, f"{cls.name}.{key}")
        return out

    def bind(self, ctx: PassContext) -> PassContext:
        """``ctx`` with this pass's options coerced (for callers that build a context by hand)."""
        ctx.options = dict(type(self).resolve_options(ctx.options))
        ctx.declared = type(self).options
        return ctx

    @abc.abstractmethod
    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        """Run the pass on ``model`` outside a pipeline; the input model is never modified."""


class GraphPass(Pass):
    """A pass over one onnx-graphsurgeon graph (``run``), shared by consecutive graph passes.

    The pipeline does not call ``apply`` for it: it runs ``run`` on a graph shared by
    consecutive graph passes (``segc.pipeline.WorkingModel``). So ``run`` sees the model's
    metadata only through ``ctx.model_metadata``, and must leave the graph untouched when it
    returns ``changed=False``. ``shortcut`` may answer from the protobuf without an import.
    """

    @abc.abstractmethod
    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Rewrite ``graph`` in place; say what changed."""

    def shortcut(self, model: onnx.ModelProto) -> PassResult | None:
        """A result found by scanning the protobuf, when the graph need not be imported at all.

        ``None`` (the default): import and run. ``cleanup`` uses it: it runs last and usually
        finds nothing, and importing a 50k-node graph to learn that costs seconds."""
        return None

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        ctx = self.bind(ctx)
        if not ctx.model_metadata:
            ctx.model_metadata = {p.key: p.value for p in model.metadata_props}
        early = self.shortcut(model)
        if early is not None:
            return model, early
        return run_on_graph(model, lambda graph: self.run(graph, ctx))


class ModelPass(Pass):
    """A pass that needs the whole ``ModelProto`` (it hands it to another tool)."""

    @abc.abstractmethod
    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        """Return the new model (or ``model`` itself when unchanged) and what was done."""

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        return self.run_model(model, self.bind(ctx))


def run_on_graph(model: onnx.ModelProto,
                 rewrite: Callable[[gs.Graph], PassResult]) -> tuple[onnx.ModelProto, PassResult]:
    """Import ``model``, let ``rewrite`` change the graph, export it (``model`` itself if unchanged)."""
    graph = import_graph(model)
    result = rewrite(graph)
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


_REGISTRY: dict[str, type[Pass]] = {}

P = TypeVar("P", bound=type[Pass])


def register_pass(cls: P) -> P:
    """Class decorator: add a pass to the registry.

    Rejected at import time: an empty or duplicate name, and ordering constraints that close
    a cycle with those already registered (no pipeline could satisfy them)."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no pass name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(
            f"pass name {cls.name!r} is registered twice ({_REGISTRY[cls.name].__module__} and {cls.__module__})"
        )
    from segc.pass_order import find_cycle

    cycle = find_cycle([*(c for c in _REGISTRY.values() if c.name != cls.name), cls])
    if cycle:
        raise ValueError(f"pass {cls.name}'s ordering constraints close a cycle: {' -> '.join(cycle)}")
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


def all_passes() -> dict[str, type[Pass]]:
    load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    """Look a pass up by name; an unknown name is a usage error that lists the closest."""
    import difflib

    known = all_passes()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known passes: {', '.join(known)}"
        raise SegcError(f"unknown pass {name!r}{hint}")
    return known[name]
