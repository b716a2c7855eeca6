"""Facts about an ONNX graph that several passes, checks and targets need: one answer each.

Before this module the same question had several answers: the default opset was looked up
five times with three spellings of "absent" (0, 1, None), constants were read through
``Identity`` by one helper and with ``value_ints`` by another, and the targets, checks and
passes each filtered initializers out of the graph inputs by hand. Each helper here says what
it returns when the fact is absent, so a caller's fallback is written where it is chosen.
(The first line of an exception message, the other text every module quoted, is
``segc.errors.first_line``.)

One module serves both representations segc works on: ``onnx`` protos (checks, targets,
input synthesis) and onnx-graphsurgeon graphs (passes). The two halves share the domain
rule and the Resize operand layout, which is why they are not split: a split would put
``resize_slots`` on one side and its only gs reader on the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import onnx
import onnx_graphsurgeon as gs

DEFAULT_DOMAINS = ("", "ai.onnx")  # the ONNX spec allows both spellings of the default domain


def is_default_domain(domain: str | None) -> bool:
    """True for the default ONNX operator domain ("" or "ai.onnx"; gs spells "" as None too)."""
    return (domain or "") in DEFAULT_DOMAINS


# opsets --------------------------------------------------------------------------------------


def default_opset(model: onnx.ModelProto) -> int | None:
    """The model's default-domain opset version; None when the model imports none.

    None, not a number: a model without a default-domain import is malformed (``modelio``
    refuses to load one), and a made-up number would hide that from the caller.
    """
    for imp in model.opset_import:
        if is_default_domain(imp.domain):
            return int(imp.version)
    return None


def graph_opset(graph: gs.Graph) -> int:
    """A gs graph's default-domain opset version (never absent).

    The import list wins over ``graph.opset`` because ``set_default_opset``-style edits and
    onnx's own importer keep the list authoritative; ``graph.opset`` is always set (gs
    defaults it), so there is no absent case to spell.
    """
    for imp in graph.import_domains or []:
        if is_default_domain(imp.domain):
            return int(imp.version)
    return int(graph.opset)


# graph inputs --------------------------------------------------------------------------------


def real_inputs(graph: onnx.GraphProto | onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller feeds, in order: initializers also listed as inputs are not.

    Exporters before IR 4 list every weight as a graph input too; such an input has a
    default value and is not one a user (or a vendor build) supplies.
    """
    g = graph.graph if isinstance(graph, onnx.ModelProto) else graph
    weights = {t.name for t in g.initializer}
    return [vi for vi in g.input if vi.name not in weights]


def input_dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    """Each dim of ``vi``: its size, its symbolic name, or None when it has neither.

    Here, not in ``segc.verify_inputs`` (which re-exports it), because every compile reads
    input dims and only a verifying one needs the probe inputs (issue 11)."""
    dims: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def real_input_names(graph: onnx.GraphProto | onnx.ModelProto) -> list[str]:
    """Names of ``real_inputs``, in order."""
    return [vi.name for vi in real_inputs(graph)]


# gs tensors ----------------------------------------------------------------------------------


def is_absent(tensor: gs.Tensor | None) -> bool:
    """True for a missing optional input: None, or the empty-named Variable gs imports for ``""``."""
    return tensor is None or (isinstance(tensor, gs.Variable) and not tensor.name)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node writing ``tensor``; None for a constant or a graph input."""
    return tensor.inputs[0] if isinstance(tensor, gs.Variable) and tensor.inputs else None


_SCALAR_ATTRS = {"value_float": np.float32, "value_int": np.int64}
_LIST_ATTRS = {"value_floats": np.float32, "value_ints": np.int64}


def constant_array(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a tensor fixed at build time, else None (also for None and absent inputs).

    Fixed means: an initializer, or the output of a ``Constant`` node in any numeric spelling
    (``value``, ``value_float(s)``, ``value_int(s)``), looked for through any chain of
    ``Identity`` nodes (exporters share deduplicated weights through Identity). String
    constants (``value_string(s)``) are not numbers and give None. The array is the tensor's
    own buffer where gs holds one: do not write to it.
    """
    if tensor is None:
        return None
    seen: set[int] = set()
    node = producer(tensor)
    while node is not None and node.op == "Identity" and node.inputs and id(node) not in seen:
        seen.add(id(node))
        tensor = node.inputs[0]
        node = producer(tensor)
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if node is None or node.op != "Constant" or not is_default_domain(node.domain):
        return None
    value = node.attrs.get("value")
    if isinstance(value, gs.Constant):
        return np.asarray(value.values)
    for key, dtype in _SCALAR_ATTRS.items():
        if key in node.attrs:
            return np.asarray(node.attrs[key], dtype=dtype)
    for key, dtype in _LIST_ATTRS.items():
        if key in node.attrs:
            return np.asarray(list(node.attrs[key]), dtype=dtype)
    return None


def constant_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The shape of ``constant_array(tensor)`` (without loading an initializer's data)."""
    if isinstance(tensor, gs.Constant):
        return tuple(int(d) for d in tensor.shape)
    value = constant_array(tensor)
    return None if value is None else tuple(value.shape)


# names ---------------------------------------------------------------------------------------


def unique_name(base: str, taken: set[str]) -> str:
    """``base`` if not in ``taken``, else the first free ``base_1``, ``base_2``...; added to ``taken``.

    Reserving the name is what lets one ``taken`` set serve many new tensors without a
    rescan of the graph per name. Which names count as taken (tensors only, or node names
    too) is the caller's choice: ONNX keeps the two namespaces apart.
    """
    name, index = base, 0
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    taken.add(name)
    return name


# Resize operands -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ResizeSlots:
    """Input positions of a Resize/Upsample's operands (None: this version has no such input).

    Upsample (opset 7..9) and Resize-10: ``(X, scales)``. Resize from opset 11:
    ``(X, roi, scales, sizes)``. Upsample before opset 9 holds its scales in an attribute
    (``attr_scales``), not an input.
    """

    roi: int | None
    scales: int | None
    sizes: int | None
    attr_scales: bool = False


def resize_slots(op_type: str, opset: int) -> ResizeSlots:
    """Where ``op_type`` ("Resize" or "Upsample") at default-domain ``opset`` takes each operand."""
    if op_type == "Upsample":
        return ResizeSlots(None, None, None, attr_scales=True) if opset < 9 else ResizeSlots(None, 1, None)
    if op_type != "Resize":
        raise ValueError(f"resize_slots: {op_type!r} is not Resize or Upsample")
    return ResizeSlots(None, 1, None) if opset <= 10 else ResizeSlots(1, 2, 3)


class ResizeOperands(NamedTuple):
    """A Resize/Upsample's scales and sizes tensors; None where absent (unpacks as a pair)."""

    scales: gs.Tensor | None
    sizes: gs.Tensor | None


def resize_operands(node: gs.Node, opset: int) -> ResizeOperands:
    """The scales and sizes of a Resize/Upsample node at ``opset``, None where absent.

    Absent means: no input at that position, an empty-named one, or (opset 11/12, which make
    ``scales`` required even next to ``sizes``) a scales constant with zero elements.
    Upsample before opset 9 gives (None, None): its scales are an attribute.
    """
    slots = resize_slots(node.op, opset)

    def at(index: int | None) -> gs.Tensor | None:
        if index is None or index >= len(node.inputs) or is_absent(node.inputs[index]):
            return None
        return node.inputs[index]

    scales, sizes = at(slots.scales), at(slots.sizes)
    if scales is not None and constant_shape(scales) == (0,):
        scales = None
    return ResizeOperands(scales, sizes)
