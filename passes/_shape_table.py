"""The shape analysis' handler table: op type -> the function that computes its outputs.

An explicit table rather than methods found by name (``getattr(self, "_op_" + op)``): the table
can be listed (which ops are modelled, ``HandlerTable.ops``), tested for coverage, and it refuses
a second handler for one op, where name lookup let a later ``_op_X`` silently replace an earlier
one and let an op family's set shadow (or be shadowed by) a handler of the same name.

Handlers live in ``_shape_arith`` (values and elementwise ops), ``_shape_ops`` (shape and index
manipulation) and ``_shape_spatial`` (convolution, pooling, padding, resizing); each registers
itself with ``@HANDLERS.register("Op", ...)`` when imported by ``_shape_expr``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

if TYPE_CHECKING:
    from segc.passes._shape_expr import ShapeAnalysis

Handler = Callable[["ShapeAnalysis", gs.Node], None]


class DuplicateHandler(ValueError):
    """Two handlers claim the same op type."""


class HandlerTable:
    """op type -> handler, filled once at import by ``register``."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, *ops: str) -> Callable[[Handler], Handler]:
        """Decorator: ``fn`` handles every op in ``ops``; DuplicateHandler if one already has a handler."""
        if not ops:
            raise ValueError("register needs at least one op type")

        def add(fn: Handler) -> Handler:
            for op in ops:  # check all first: a refused registration adds nothing
                held = self._handlers.get(op)
                if held is not None:
                    raise DuplicateHandler(
                        f"shape handler for {op!r}: {fn.__module__}.{fn.__qualname__} "
                        f"would replace {held.__module__}.{held.__qualname__}"
                    )
            if len(set(ops)) != len(ops):
                raise DuplicateHandler(f"{fn.__qualname__} is registered twice for one of {ops}")
            self._handlers.update(dict.fromkeys(ops, fn))
            return fn

        return add

    def get(self, op: str) -> Handler | None:
        return self._handlers.get(op)

    def ops(self) -> frozenset[str]:
        """Every op type with a handler."""
        return frozenset(self._handlers)


HANDLERS = HandlerTable()
