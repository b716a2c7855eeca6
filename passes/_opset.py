"""Opset conversion that tolerates vendor ops.

onnx's version converter refuses graphs holding ops it has no schema for, such as Ascend's
``DeformableConv2D`` in the default domain. Those ops have no versioned meaning to convert,
so they are parked in a private domain for the conversion and put back afterwards.
"""

from __future__ import annotations

import onnx

from segc.errors import SegcError, first_line
from segc.modelio import copy_fields_except, disk_tensor, tensor_nbytes
from segc.onnx_graph import default_opset

_PARKING_DOMAIN = "segc.unversioned"


def convert_model_opset(model: onnx.ModelProto, version: int, *, who: str) -> onnx.ModelProto:
    """A copy of ``model`` converted to default-domain opset ``version``; SegcError naming ``who`` if impossible.

    onnx's converter takes a ModelProto by serialising it, parses that in C++, converts,
    serialises and is parsed back: four passes over every weight (measured on
    dbnet_r50_dcn). Its adapters rewrite nodes and read only small constants (axes, shapes,
    scales), so every initializer of :data:`WEIGHTLESS_MIN` bytes or more is sent without its
    data and given it back by name afterwards (:func:`_restore_weights`), and the model is
    copied once instead of four times::

        model --skeleton (large raw_data left out)--> converter --> converted + raw_data by name
    """
    converted, weights = _skeleton(model)
    parked = False
    for node in converted.graph.node:
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            node.domain = _PARKING_DOMAIN
            parked = True
    if parked:
        converted.opset_import.add(domain=_PARKING_DOMAIN, version=1)
    try:
        converted = onnx.version_converter.convert_version(converted, version)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        first = first_line(exc)
        raise SegcError(
            f"{who}: cannot convert the graph from opset {default_opset(model)} to {version} ({first})"
        ) from None
    for node in converted.graph.node:
        if node.domain == _PARKING_DOMAIN:
            node.domain = ""
    kept = [o for o in converted.opset_import if o.domain != _PARKING_DOMAIN]
    del converted.opset_import[:]
    converted.opset_import.extend(kept)
    converted.ir_version = model.ir_version
    _restore_weights(converted, weights, who)
    return converted


WEIGHTLESS_MIN = 1024  # bytes of raw_data from which an initializer is converted without its data


def _skeleton(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy of ``model`` whose large initializers hold name, type and dims only, and those
    initializers of ``model`` by name (not copied)."""
    skeleton = onnx.ModelProto()
    copy_fields_except(model, skeleton, "graph")
    copy_fields_except(model.graph, skeleton.graph, "initializer")
    kept: dict[str, onnx.TensorProto] = {}
    for t in model.graph.initializer:
        # sized from dims: reading ``t.raw_data`` in Python copies the bytes
        big = t.HasField("raw_data") and tensor_nbytes(t) >= WEIGHTLESS_MIN
        if (big or disk_tensor(t) is not None) and t.name not in kept:  # weights kept on disk: their header too
            kept[t.name] = t
            skeleton.graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims, doc_string=t.doc_string)
        else:
            skeleton.graph.initializer.add().CopyFrom(t)
    return skeleton, kept


def _restore_weights(converted: onnx.ModelProto, kept: dict[str, onnx.TensorProto], who: str) -> None:
    """Put the data :func:`_skeleton` left out back; SegcError if the converter changed such a tensor."""
    back = 0
    for t in converted.graph.initializer:
        source = kept.get(t.name)
        if source is None:
            continue
        if t.data_type != source.data_type or list(t.dims) != list(source.dims) or _has_data(t):
            raise SegcError(f"{who}: the opset converter changed weight {t.name!r}; segc cannot restore its data")
        t.CopyFrom(source)
        back += 1
    if back != len(kept):  # a weight no node uses any more: dropped by the converter, as it drops any
        names = {t.name for t in converted.graph.initializer}
        missing = [n for n in kept if n not in names]
        raise SegcError(f"{who}: the opset converter dropped weights {', '.join(missing[:3])}")


def _has_data(t: onnx.TensorProto) -> bool:
    return any(len(getattr(t, f)) for f in ("raw_data", "float_data", "int32_data", "string_data", "int64_data",
                                                "double_data", "uint64_data"))
