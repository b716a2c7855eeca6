"""Opset conversion that tolerates vendor ops.

onnx's version converter refuses graphs holding ops it has no schema for, such as Ascend's
``DeformableConv2D`` in the default domain. Those ops have no versioned meaning to convert,
so they are parked in a private domain for the conversion and put back afterwards.
"""

from __future__ import annotations

import onnx

from segc.errors import SegcError, first_line
from segc.onnx_graph import default_opset

_PARKING_DOMAIN = "segc.unversioned"


def convert_model_opset(model: onnx.ModelProto, version: int, *, who: str) -> onnx.ModelProto:
    """A copy of ``model`` converted to default-domain opset ``version``; SegcError naming ``who`` if impossible."""
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
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
    return converted
