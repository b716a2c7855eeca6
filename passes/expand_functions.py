"""expand_functions: replace ops a vendor lacks by their ONNX function definition.

What
    ONNX defines many newer ops as *functions* of older ones: ``Gelu`` (opset 20) is
    ``0.5 * x * (1 + Erf(x / sqrt 2))``, ``HardSigmoid``, ``HardSwish``, ``Mish``, ``Celu``,
    ``LayerNormalization``, ``GroupNormalization`` and others come with a body in the ONNX
    schema itself. This pass inlines that body in place of each chosen node, so a vendor
    parser whose operator list lacks the op still gets the same computation in ops it has.

Why
    torch's dynamo exporter writes opset 18 to 20 and uses ``Gelu``/``LayerNormalization``
    directly (SegFormer, ConvNeXt, any transformer head). ATC's list stops at opset 18 and
    has no ``Gelu``; without this pass such a model is refused for Ascend although nothing
    about it is unbuildable. The body comes from onnx's own schema, so it is the op's
    definition, not segc's approximation of it.

How
    For each node: the schema's body (``get_context_dependent_function`` where the body
    depends on attributes or input types, as for Gelu's ``approximate``), with formal
    inputs/outputs renamed to the node's tensors and internal tensors given a unique prefix.
    ``CastLike(Constant, X)`` inside the body becomes a typed Constant (X's type is known
    from shape inference), because ``CastLike`` itself (opset 15) is missing from older
    parsers. A body is used only when every op in it has, at the model's opset, the same
    inputs and attributes as at the body's own opset (ReduceMean's ``axes`` moved from an
    attribute to an input at 18, so a body written for 18 cannot be dropped into an opset-13
    graph); a node whose body does not fit is left and reported.

    x --> Gelu --> y            x --> Div(x, 1.4142) --> Erf --> Add(1) --> Mul(x) --> Mul(0.5) --> y

Contract: exact. The body is the op's definition; only floating-point rounding differs
from a runtime's fused kernel (verified in onnxruntime within the exact tolerance).
"""

from __future__ import annotations

import itertools
from typing import Protocol, cast

import numpy as np
import onnx
from onnx import helper, numpy_helper

from segc.errors import SegcError
from segc.onnx_graph import default_opset
from segc.passbase import (Contract, ModelPass, OptionKind, PassContext, PassOption, PassResult, carry_model_fields,
                           register_pass)


class _FunctionSchema(Protocol):
    """The ``OpSchema`` members used here that onnx's own stub (onnx_cpp2py_export/defs.pyi,
    onnx 1.23) does not declare, although the C++ binding has them."""

    has_function: bool
    has_context_dependent_function: bool
    function_opset_versions: list[int]

    def get_function_with_opset_version(self, opset: int) -> bytes: ...

    def get_context_dependent_function(self, node: bytes, input_types: list[bytes]) -> bytes: ...


def _schema(op_type: str, opset: int) -> _FunctionSchema:
    """onnx's schema of ``op_type`` (default domain) at ``opset``; SchemaError when it has none."""
    return cast(_FunctionSchema, onnx.defs.get_schema(op_type, opset, ""))


def function_body(op_type: str, opset: int, node: onnx.NodeProto | None = None,
                  input_types: list[onnx.TypeProto] | None = None) -> onnx.FunctionProto | None:
    """The ONNX schema's body for ``op_type`` at ``opset`` (None when the op has none)."""
    try:
        schema = _schema(op_type, opset)
    except onnx.defs.SchemaError:
        return None
    fp = onnx.FunctionProto()
    if schema.has_function:
        versions = [v for v in schema.function_opset_versions if v <= opset] or list(schema.function_opset_versions)
        fp.ParseFromString(schema.get_function_with_opset_version(max(versions)))
        return fp
    if schema.has_context_dependent_function and node is not None:
        types = [t.SerializeToString() for t in (input_types or [])]
        try:
            data = schema.get_context_dependent_function(node.SerializeToString(), types)
        except Exception:  # noqa: BLE001 - the builder rejects types it cannot handle
            return None
        if not data:
            return None
        fp.ParseFromString(data)
        return fp
    return None


def has_function(op_type: str, opset: int) -> bool:
    """Whether onnx defines ``op_type`` (default domain) as a function at ``opset``."""
    try:
        schema = _schema(op_type, opset)
    except onnx.defs.SchemaError:
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def _fits(nodes: list[onnx.NodeProto], body: onnx.FunctionProto, opset: int) -> str | None:
    """None when every inlined node is valid as written at ``opset``; else the first that is not.

    A node fits when its op exists at ``opset`` with every attribute the node sets and room
    for every input it passes. That is what catches the real incompatibilities between
    opsets (ReduceMean, Squeeze, Split and Clip moved attributes to inputs); ops that only
    gained types keep their signature and fit.
    """
    body_opset = next((o.version for o in body.opset_import if o.domain in ("", "ai.onnx")), opset)
    for n in nodes:
        where = f"{n.op_type} (not valid as written at opset {opset}; the body is for opset {body_opset})"
        if n.domain not in ("", "ai.onnx"):
            return f"{n.op_type} (domain {n.domain})"
        try:
            schema = onnx.defs.get_schema(n.op_type, opset, "")
        except onnx.defs.SchemaError:
            return where
        if any(a.name not in schema.attributes for a in n.attribute):
            return where
        variadic = bool(schema.inputs) and schema.inputs[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic
        if not variadic and len(n.input) > len(schema.inputs):
            return where
    return None


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node (any of its attribute spellings), or None."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.asarray(helper.get_attribute_value(a))
    return None


def fold_castlike(nodes: list[onnx.NodeProto], elem_types: dict[str, int]) -> list[onnx.NodeProto]:
    """``CastLike(Constant c, X)`` -> ``Constant(c as X's type)`` where X's type is known.

    Constants left without a consumer are dropped, so the result holds no dead nodes.
    """
    constants = {n.output[0]: n for n in nodes if n.op_type == "Constant" and len(n.output) == 1}
    out = []
    for n in nodes:
        src = constants.get(n.input[0]) if n.op_type == "CastLike" and n.input else None
        value = _constant_value(src) if src is not None else None
        if value is not None and n.input[1] in elem_types:
            dtype = helper.tensor_dtype_to_np_dtype(elem_types[n.input[1]])
            n = helper.make_node("Constant", [], [n.output[0]], name=n.name,
                                 value=numpy_helper.from_array(np.asarray(value, dtype=dtype)))
        out.append(n)
    consumed = {t for n in out for t in n.input}
    return [
        n for n in out if not (n.op_type == "Constant" and n.output[0] not in consumed and n.output[0] in constants)
    ]


def _attribute_values(node: onnx.NodeProto, schema_op: str, opset: int) -> dict[str, onnx.AttributeProto]:
    """The node's attributes, with the schema's defaults for the ones it leaves out."""
    values = {a.name: a for a in node.attribute}
    schema = onnx.defs.get_schema(schema_op, opset, "")
    for name, attr in schema.attributes.items():
        if name not in values and attr.default_value is not None and attr.default_value.type:
            values[name] = attr.default_value
    return values


def inline(node: onnx.NodeProto, body: onnx.FunctionProto, prefix: str, opset: int) -> list[onnx.NodeProto]:
    """The body's nodes wired to ``node``'s tensors; internal tensors renamed with ``prefix``."""
    rename: dict[str, str] = {"": ""}
    for formal, actual in itertools.zip_longest(body.input, node.input, fillvalue=""):
        if formal:
            rename[formal] = actual
    for formal, actual in itertools.zip_longest(body.output, node.output, fillvalue=""):
        if formal:
            rename[formal] = actual or f"{prefix}{formal}"
    attrs = _attribute_values(node, node.op_type, opset)
    out: list[onnx.NodeProto] = []
    for k, n in enumerate(body.node):
        new = onnx.NodeProto()
        new.CopyFrom(n)
        new.name = f"{prefix}{n.op_type}_{k}"
        new.ClearField("input")
        new.ClearField("output")
        new.input.extend(rename.setdefault(t, f"{prefix}{t}") if t else "" for t in n.input)
        new.output.extend(rename.setdefault(t, f"{prefix}{t}") for t in n.output)
        resolved = []
        for a in new.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name not in attrs:
                    continue  # an optional attribute the node leaves unset: the body op's default applies
                value = onnx.AttributeProto()
                value.CopyFrom(attrs[a.ref_attr_name])
                value.name = a.name
                resolved.append(value)
            else:
                resolved.append(a)
        del new.attribute[:]
        new.attribute.extend(resolved)
        out.append(new)
    return out


@register_pass
class ExpandFunctions(ModelPass):
    name = "expand_functions"
    contract = Contract.EXACT
    summary = "replace ops a vendor lacks (Gelu, HardSigmoid, LayerNormalization...) by their ONNX function body"
    options = {"ops": PassOption(OptionKind.STR_LIST, "op types to expand (default: those with an ONNX function body "
                                                      "that the target's operator list lacks)")}
    runs_before = ("convert_opset",)
    order_reason = "function bodies are expanded at the opset they are defined for; the conversion covers their ops"

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        ops = self._ops(model, ctx)
        opset = default_opset(model) or 1
        nodes = list(model.graph.node)
        expanded: dict[str, int] = {}
        left: dict[str, str] = {}
        used = {t for n in nodes for t in [*n.input, *n.output]} | {n.name for n in nodes}
        # a body may use another function op (HardSwish's holds a HardSigmoid): a few rounds
        for _ in range(4):
            todo = [i for i, n in enumerate(nodes) if n.domain in ("", "ai.onnx") and n.op_type in ops
                    and (n.name or n.output[0]) not in left]
            if not todo:
                break
            types = _value_types(model, nodes)
            elem_types = {k: t.tensor_type.elem_type for k, t in types.items() if t.HasField("tensor_type")}
            replaced: dict[int, list[onnx.NodeProto]] = {}
            for i in todo:
                node = nodes[i]
                label = node.name or node.output[0]
                body = function_body(node.op_type, opset, node, [types.get(t) or _float_type() for t in node.input])
                if body is None:
                    left[label] = f"{label}: onnx gives no body for its input types"
                    continue
                prefix = _unique_prefix(f"{node.name or node.op_type + str(i)}/", used)
                inlined = fold_castlike(inline(node, body, prefix, opset), elem_types)
                misfit = _fits(inlined, body, opset)
                if misfit:
                    left[label] = f"{label}: its body uses {misfit}"
                    continue
                replaced[i] = inlined
                expanded[node.op_type] = expanded.get(node.op_type, 0) + 1
            if not replaced:
                break
            nodes = [m for i, n in enumerate(nodes) for m in replaced.get(i, [n])]
        if not expanded:
            return model, PassResult(changed=False, stats={"expanded": 0}, notes=list(left.values()))
        out = onnx.ModelProto()
        out.CopyFrom(model)
        del out.graph.node[:]
        out.graph.node.extend(nodes)
        carry_model_fields(model, out)
        notes = [
            f"expanded {', '.join(f'{op} x{n}' for op, n in sorted(expanded.items()))} into their ONNX function bodies"
        ]
        return out, PassResult(changed=True, stats={"expanded": sum(expanded.values()), "by_op": expanded},
                               notes=notes + list(left.values()))

    @staticmethod
    def _ops(model: onnx.ModelProto, ctx: PassContext) -> set[str]:
        given = ctx.option("ops")
        if given:
            ops = set(given)
            bad = sorted(op for op in ops if not has_function(op, default_opset(model) or 1))
            if bad:
                raise SegcError(
                    f"expand_functions: onnx defines no function body for {', '.join(bad)} at opset "
                    f"{default_opset(model) or 1}"
                )
            return ops
        if ctx.target is None:
            return set()
        from segc.targets.legality import load_profile

        profile = load_profile(ctx.target)
        if profile.data.get("ops", {}).get("partial", False):
            return set()  # an unlisted op there is unconfirmed, not known to be missing
        opset = default_opset(model) or 1
        return {n.op_type for n in model.graph.node
                if n.domain in ("", "ai.onnx") and n.op_type not in profile.ops and has_function(n.op_type, opset)}


def _value_types(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> dict[str, onnx.TypeProto]:
    """Types of every tensor where known (inputs, initializers, inferred intermediates)."""
    probe = onnx.ModelProto()
    probe.ir_version = model.ir_version
    probe.opset_import.extend(model.opset_import)
    probe.graph.input.extend(model.graph.input)
    probe.graph.output.extend(model.graph.output)
    probe.graph.node.extend(nodes)
    listed = {vi.name for vi in model.graph.input}
    for t in model.graph.initializer:  # types only: the weights themselves are not needed
        if t.name not in listed:
            probe.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    types: dict[str, onnx.TypeProto] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(probe)
    except Exception:  # noqa: BLE001 - types are a help; a float default is used without them
        inferred = probe
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type
    return types


def _float_type() -> onnx.TypeProto:
    return helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, None)


def _unique_prefix(base: str, used: set[str]) -> str:
    prefix, k = base, 1
    while any(u.startswith(prefix) for u in used):
        prefix, k = f"{base[:-1]}_{k}/", k + 1
    used.add(prefix)
    return prefix
