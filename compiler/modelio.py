"""Loading and saving ONNX models safely.

Loading refuses what would otherwise fail late or dangerously: missing, empty, truncated or
non-ONNX files, external data that points outside the model's folder (a path traversal in a
downloaded model must not make segc read arbitrary files), and opsets segc cannot handle.

Saving is atomic (a temporary file in the destination folder, then ``os.replace``) so an
interrupted run never leaves a half-written model, lowers the IR version to one onnxruntime
reads, switches to external data above protobuf's 2 GiB limit, and never writes over the
model it was given.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from segc.errors import SegcError

MIN_OPSET = 7
MAX_OPSET = 23
MAX_IR_VERSION = 10  # onnxruntime 1.31 reads <= 13; 10 is what the vendor tools expect too
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # leave headroom under protobuf's hard 2 GiB cap


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load and sanity-check an ONNX model, with its external data; SegcError on bad input."""
    path = Path(path)
    if not path.exists():
        raise SegcError(f"{path}: no such file")
    if path.is_dir():
        raise SegcError(f"{path}: is a folder, not an ONNX file")
    if path.stat().st_size == 0:
        raise SegcError(f"{path}: the file is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise SegcError(f"{path}: not a readable ONNX model (truncated or another format): {_first_line(exc)}") from None
    if not model.graph.node and not model.graph.output:
        # protobuf happily parses many byte strings as an empty message
        raise SegcError(f"{path}: not an ONNX model (no graph found)")
    _check_opsets(model, path)
    _load_external_data(model, path)
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain ("" or "ai.onnx") opset version, 0 when absent."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def _check_opsets(model: onnx.ModelProto, path: Path) -> None:
    version = default_opset(model)
    if version == 0:
        raise SegcError(f"{path}: the model imports no default-domain opset")
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise SegcError(f"{path}: opset {version} is not supported (segc handles opsets {MIN_OPSET} to {MAX_OPSET})")


def _external_locations(model: onnx.ModelProto) -> list[str]:
    locations = []
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.append(entry.value)
    return locations


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    locations = _external_locations(model)
    if not locations:
        return
    base = path.resolve().parent
    for loc in set(locations):
        if os.path.isabs(loc) or Path(loc).is_absolute():
            raise SegcError(f"{path}: external data location {loc!r} is absolute; segc only reads data beside the model")
        target = (base / loc).resolve()
        if base not in target.parents:
            raise SegcError(f"{path}: external data location {loc!r} points outside the model's folder")
        if not target.is_file():
            raise SegcError(f"{path}: external data file {loc!r} is missing")
    try:
        onnx.load_external_data_for_model(model, str(base))
    except (OSError, ValueError, RuntimeError) as exc:
        raise SegcError(f"{path}: cannot read external data: {_first_line(exc)}") from None
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise SegcError(f"{path}: external data for {tensor.name!r} is truncated")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def readable_ir(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose IR version onnxruntime (and the vendor parsers) read."""
    if model.ir_version <= MAX_IR_VERSION:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.ir_version = MAX_IR_VERSION
    return out


def save_model(model: onnx.ModelProto, path: str | Path, *, protect: list[str | Path] = ()) -> Path:
    """Write ``model`` to ``path`` atomically; refuses to overwrite any file in ``protect``.

    Models above protobuf's 2 GiB limit are written with their weights in ``<name>.data``
    beside the model (also atomically: both files are written under temporary names first).
    """
    path = Path(path)
    for other in protect:
        if Path(other).exists() and path.exists() and path.resolve() == Path(other).resolve():
            raise SegcError(f"{path}: refusing to write over the input model")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = readable_ir(model)
    # estimated from dims: protobuf's ByteSize walks every byte and costs seconds on big models
    large = weight_bytes(model) > PROTOBUF_LIMIT
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = staging / path.name
        if large:
            data_name = path.name + ".data"
            onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            os.replace(staging / data_name, path.parent / data_name)  # weights first, model last
        else:
            staged.write_bytes(model.SerializeToString())
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, from its dims and element type (no walk over the data)."""
    count = 1
    for d in t.dims:
        count *= d
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):  # strings and exotic types: measure the message
        return t.ByteSize()
    return count * itemsize


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of constant data: initializers and Constant nodes."""
    total = sum(tensor_nbytes(t) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            total += sum(tensor_nbytes(a.t) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return total
