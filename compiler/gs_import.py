"""onnx-graphsurgeon's import, for models whose weights segc keeps on disk.

graph-surgeon imports an initializer as a constant whose values load lazily
(``LazyValues``), through ``onnx.numpy_helper.to_array``, which refuses the absolute
locations of weights segc keeps on disk (``segc.modelio.disk_tensor``; every big weight of
a compiled model, see ``segc.lazy_load``). :func:`import_graph` gives those constants
:class:`DiskValues`, which read the bytes from the file when (and only when) a pass asks for
the values. Exporting the graph again keeps the reference, as graph-surgeon exports any
``LazyValues`` by its tensor proto: a weight no pass looked at is never read. One a pass
read is exported with its values, like any constant held in memory.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from segc.modelio import disk_tensor, has_disk_tensors, tensor_array


class DiskValues(LazyValues):  # type: ignore[misc]  # graph-surgeon ships no type hints
    """Lazily loaded values of a weight kept on disk."""

    def load(self) -> np.ndarray:
        return np.array(tensor_array(self.tensor))


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``gs.import_onnx(model)``, with :class:`DiskValues` for weights kept on disk."""
    graph = gs.import_onnx(model)
    if has_disk_tensors(model):
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and isinstance(tensor._values, LazyValues):
                if disk_tensor(tensor._values.tensor) is not None:
                    tensor._values = DiskValues(tensor._values.tensor)
                    # graph-surgeon stamps an exported constant with the data_location it was
                    # imported with: once a pass has loaded (or replaced) the values, it holds
                    # them in memory and must be written as an ordinary tensor
                    tensor.data_location = None
    return graph
