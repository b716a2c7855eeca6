"""Device runners' output files read back as arrays: what ``segc evaluate --from-outputs`` scores.

msame and ais_bench write ``<input stem>_<output index>.bin`` (msame also ``_output_<i>``),
raw in the output's dtype with no shape; a Python infer writes ``.npy``; trtexec's
``--exportOutput`` writes one JSON per run. A raw file's shape comes from onnx shape
inference at the file's input shape, else from the output's known dims with H, W solved from
the element count and the input's aspect ratio; a byte count that fits neither is an error
naming the file, never a silent reshape.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx

from segc.errors import SegcError
from segc.onnx_graph import real_inputs


class OutputReader:
    """A device run's output files for one model output, as arrays of the model's dtype.

    A raw ``.bin`` carries no shape: it comes from onnx shape inference at the file's input
    shape, else from the output's known dims with H, W solved from the element count and the
    input's aspect ratio; a byte count that fits neither is an error naming the file.
    """

    def __init__(self, folder: Path, model: onnx.ModelProto, index: int, name: str):
        if not folder.is_dir():
            raise SegcError(f"outputs folder {folder}: no such folder")
        self.folder, self.model, self.index, self.name = folder, model, index, name
        out = next(o for o in model.graph.output if o.name == name)
        t = out.type.tensor_type
        self.dtype = (
            np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)) if t.elem_type else np.dtype(np.float32)
        )
        self.dims = (
            [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
        )
        self._inferred: dict[tuple[int, ...], list[int | None] | None] = {}

    def path(self, stem: str) -> Path:
        for name in (f"{stem}_{self.index}", f"{stem}_output_{self.index}"):
            for ext in (".npy", ".bin"):
                if (self.folder / (name + ext)).is_file():
                    return self.folder / (name + ext)
        if (self.folder / f"{stem}.json").is_file():  # trtexec --exportOutput
            return self.folder / f"{stem}.json"
        raise SegcError(f"outputs folder {self.folder}: no {stem}_{self.index}.bin or .npy for image {stem}")

    def read(self, stem: str, input_shape: tuple[int, ...]) -> np.ndarray:
        path = self.path(stem)
        if path.suffix == ".npy":
            return np.asarray(np.load(path))
        if path.suffix == ".json":
            return self._trtexec_json(path)
        data = np.fromfile(path, self.dtype.newbyteorder("<"))
        shape = self._shape(input_shape, data.size)
        if shape is None:
            raise SegcError(f"{path}: {data.size} {self.dtype} values do not fit output {self.name!r} "
                            f"(dims {self.dims}) for input {list(input_shape)}")
        return data.reshape(shape)

    def _trtexec_json(self, path: Path) -> np.ndarray:
        """trtexec's export: a list of {"name", "dimensions": "1x19x256x512", "values": [...]}."""
        try:
            entries = json.loads(path.read_text())
            entry = next(e for e in entries if e.get("name") == self.name)
            dims = tuple(int(d) for d in str(entry["dimensions"]).split("x"))
            return np.asarray(entry["values"], self.dtype).reshape(dims)
        except StopIteration:
            raise SegcError(f"{path}: trtexec export has no output {self.name!r}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SegcError(f"{path}: not a trtexec --exportOutput file: {exc}") from None

    def _shape(self, input_shape: tuple[int, ...], count: int) -> tuple[int, ...] | None:
        if input_shape not in self._inferred:
            self._inferred[input_shape] = _infer_output_dims(self.model, self.name, input_shape)
        for dims in (self._inferred[input_shape], self.dims):
            if dims is None:
                continue
            dims = list(dims)
            if dims and dims[0] is None:
                dims[0] = input_shape[0]
            unknown = [i for i, d in enumerate(dims) if d is None]
            known = int(np.prod([d for d in dims if d is not None])) if dims else 1
            if not unknown and known == count:
                return tuple(int(d) for d in dims if d is not None)
            if unknown and known and count % known == 0:
                rest = count // known
                if len(unknown) == 1:
                    dims[unknown[0]] = rest
                    return tuple(int(d) for d in dims if d is not None)
                if len(unknown) == 2:
                    ratio = input_shape[-2] / input_shape[-1]
                    h = int(round(math.sqrt(rest * ratio)))
                    if h and rest % h == 0:
                        dims[unknown[0]], dims[unknown[1]] = h, rest // h
                        return tuple(int(d) for d in dims if d is not None)
        return None


def _infer_output_dims(model: onnx.ModelProto, name: str, input_shape: tuple[int, ...]) -> list[int | None] | None:
    from onnx import shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    first = next(iter(real_inputs(m)))
    for d, v in zip(first.type.tensor_type.shape.dim, input_shape, strict=False):
        d.Clear()
        d.dim_value = int(v)
    try:
        m = shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # noqa: BLE001 - a model inference cannot handle: fall back to the dims
        return None
    for o in m.graph.output:
        if o.name == name and o.type.tensor_type.HasField("shape"):
            return [d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim]
    return None
