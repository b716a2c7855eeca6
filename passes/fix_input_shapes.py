"""fix_input_shapes: give symbolic input dimensions the numbers a static build uses.

What
    ``shapes`` (``x:1,3,640,640``; ``-1`` keeps a dim as it is) replace the symbolic
    (``dim_param``) or unknown dims of the named graph inputs by numbers. Dims that are
    already numbers must agree, else it is an error (the pass never changes what a model was
    traced at). Intermediate shape annotations are dropped and the output shapes are inferred
    again, so every consumer sees the new, static shapes.

Why
    A static ``--input-shape`` for an export with symbolic dims (torch dynamo, paddle2onnx)
    means the vendor build is for one shape only. While the dims stay symbolic, every
    ``Shape -> Gather -> Mul -> Resize`` chain stays a run-time computation: onnx-simplifier
    must keep dynamic dims symbolic (``simplify`` discards a result that froze them), and
    Ascend refuses run-time Resize sizes even for a static build. Fixing the dims first turns
    each chain into constants that ``simplify`` folds. It must run before ``simplify``.

Contract: exact at the fixed shape (the function is unchanged there; it is simply no longer
defined at other shapes, which the build does not use)::

    input x: [1, 3, "h", "w"]                     input x: [1, 3, 64, 96]
    Shape(x) -> Gather(2) -> Mul(2) -> Concat     Shape(x) -> Gather(2) -> Mul(2) -> Concat
       -> Resize(x, sizes)                   ==>     -> Resize(x, sizes)   (now foldable)
    output y: [1, 3, "2*h", "2*w"]                output y: [1, 3, 128, 192]
"""

from __future__ import annotations

import onnx

from segc.errors import SegcError
from segc.passbase import (Contract, ModelPass, OptionKind, PassContext, PassOption, PassResult, carry_model_fields,
                           register_pass)
from segc.shapes import ShapeRange


def parse_fixed_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``x:1,3,640,640`` or ``x:-1,3,640,640`` (``-1``: keep that dim)."""
    name, sep, dims_text = str(text).rpartition(":")
    if not sep or not name.strip():
        raise SegcError(f"fix_input_shapes: malformed shape {text!r}: expected NAME:D1,D2,... (-1 keeps a dim)")
    try:
        dims = tuple(int(d) for d in dims_text.split(","))
    except ValueError:
        raise SegcError(
            f"fix_input_shapes: malformed shape {text!r}: dims must be whole numbers (-1 keeps a dim)"
        ) from None
    if any(d == 0 or d < -1 for d in dims):
        raise SegcError(f"fix_input_shapes: malformed shape {text!r}: dims must be positive, or -1 to keep one")
    return name.strip(), dims


def fixed_shape_option(rng: ShapeRange, keep: tuple[int, ...] = ()) -> str:
    """The option text for a static range, with ``keep`` axes left as they are (``-1``)."""
    return f"{rng.name}:" + ",".join("-1" if i in keep else str(d) for i, d in enumerate(rng.min))


@register_pass
class FixInputShapes(ModelPass):
    name = "fix_input_shapes"
    contract = Contract.EXACT
    summary = "give symbolic input dims the numbers of a static build, so shape computations fold (run before simplify)"
    options = {"shapes": PassOption(OptionKind.STR_LIST,
                                    "NAME:D1,D2,... per input ('-1' keeps a dim); a list, or ';'-separated")}
    runs_before = ("simplify",)
    order_reason = "fixed dims let simplify fold the shape computations"

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        texts: list[str] = ctx.option("shapes") or []
        if not texts:
            raise SegcError("fix_input_shapes needs option shapes, e.g. x:1,3,640,640")
        wanted = dict(parse_fixed_shape(t) for t in texts)
        inputs = {vi.name: vi for vi in model.graph.input}
        for name, dims in wanted.items():
            if name not in inputs:
                raise SegcError(f"fix_input_shapes: {name!r} is not an input (inputs: {', '.join(inputs)})")
            have = inputs[name].type.tensor_type.shape.dim
            if len(have) != len(dims):
                raise SegcError(f"fix_input_shapes: {name!r} has {len(have)} dims, the shape gives {len(dims)}")
            for axis, (d, v) in enumerate(zip(have, dims, strict=False)):
                if v != -1 and d.HasField("dim_value") and d.dim_value != v:
                    raise SegcError(f"fix_input_shapes: {name!r} dim {axis} is {d.dim_value} in the graph, not {v}")

        fixed: list[str] = []
        out = onnx.ModelProto()
        out.CopyFrom(model)
        for vi in out.graph.input:
            for axis, (d, v) in enumerate(zip(vi.type.tensor_type.shape.dim, wanted.get(vi.name, ()), strict=False)):
                if v != -1 and not d.HasField("dim_value"):
                    fixed.append(f"{vi.name}[{axis}] {d.dim_param or '?'}->{v}")
                    d.Clear()
                    d.dim_value = v
        if not fixed:
            return model, PassResult(changed=False, stats={"fixed": []}, notes=["every named dim is already a number"])
        _reinfer(out)
        carry_model_fields(model, out)
        return out, PassResult(changed=True, stats={"fixed": fixed})


def _reinfer(model: onnx.ModelProto) -> None:
    """Drop stale intermediate shapes and infer the outputs again from the fixed inputs.

    An output dim inference cannot resolve loses its symbolic name (it is unknown, not
    symbolic: nothing in the graph is symbolic any more), so ``simplify`` cannot take the
    static result for a frozen dynamic dim.
    """
    del model.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference fails on vendor ops; outputs are then cleared
        inferred = None
    shapes = {vi.name: vi for vi in inferred.graph.output} if inferred is not None else {}
    for vi in model.graph.output:
        new = shapes.get(vi.name)
        new_dims = list(new.type.tensor_type.shape.dim) if new is not None else []
        dims = vi.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if d.HasField("dim_value"):
                continue
            value = (
                new_dims[i].dim_value
                if i < len(new_dims) and len(new_dims) == len(dims) and new_dims[i].HasField("dim_value")
                else None
            )
            d.Clear()
            if value:
                d.dim_value = value
