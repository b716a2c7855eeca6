"""Loading and saving ONNX models safely.

Loading refuses what would otherwise fail late or dangerously: missing, empty, truncated or
non-ONNX files, graphs onnx.checker rejects (cycles, names defined twice), external data that
points outside the model's folder from any tensor of any graph (a path traversal in a
downloaded model must not make segc read arbitrary files) or is shorter than its tensor, and
opsets segc cannot handle.

Saving goes through segc's one atomic writer (``segc.outdir``), so an interrupted run never
leaves a half-written model and a link to the input is never written through. It also lowers
the IR version to one onnxruntime reads, switches to external data above protobuf's 2 GiB
limit, and never writes over the model it was given.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

import numpy as np
import onnx
from google.protobuf.message import DecodeError, Message
from onnx import numpy_helper

from segc.errors import SegcError, first_line
from segc.lazy_load import LAZY_MIN, Reference, read_skeleton, varint_bytes
from segc.onnx_graph import default_opset
from segc.outdir import file_sha256, private_folder, refuse_protected, remember_sha256, write_chunks, write_file

__all__ = [
    "DiskTensor",
    "disk_tensor",
    "disk_tensors",
    "has_disk_tensors",
    "check_source",
    "read_disk_bytes",
    "tensor_array",
    "inline_copy",
    "file_sha256",
    "load_model",
    "load_model_and_files",
    "save_model",
    "serialised_chunks",
    "readable_ir",
    "tensor_nbytes",
    "weight_bytes",
]

MIN_OPSET = 7
MAX_OPSET = 23
MAX_IR_VERSION = 10  # onnxruntime 1.31 reads <= 13; 10 is what the vendor tools expect too
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # leave headroom under protobuf's hard 2 GiB cap


def load_model(path: str | Path, *, lazy: bool = False) -> onnx.ModelProto:
    """Load and sanity-check an ONNX model, with its external data; SegcError on bad input.
    ``lazy``: see :func:`load_model_and_files`."""
    return load_model_and_files(path, lazy=lazy)[0]


def load_model_and_files(path: str | Path, *, lazy: bool = False) -> tuple[onnx.ModelProto, list[Path]]:
    """:func:`load_model`, plus the files it read (the model and its external data): the
    files a compile must never write over, whatever links or folders lead to them.

    With ``lazy``, weights of :data:`segc.lazy_load.LAZY_MIN` bytes or more are not read:
    they stay where the file (or its external data) holds them, by reference, as the
    weights of models over 2 GiB always do (see ON_DISK_MIN). Passes see names, types and
    dims; :func:`tensor_array` reads the values of one when a pass needs them."""
    path = Path(path)
    if not path.exists():
        raise SegcError(f"{path}: no such file")
    if path.is_dir():
        raise SegcError(f"{path}: is a folder, not an ONNX file")
    if path.stat().st_size == 0:
        raise SegcError(f"{path}: the file is empty")
    skeleton = read_skeleton(path) if lazy else None
    try:
        if skeleton is not None:
            model = onnx.ModelProto.FromString(skeleton.model_bytes)
        else:
            model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise SegcError(f"{path}: not a readable ONNX model (truncated or another format): {first_line(exc)}") from None
    if not model.graph.node and not model.graph.output:
        # protobuf happily parses many byte strings as an empty message
        raise SegcError(f"{path}: not an ONNX model (no graph found)")
    _check_opsets(model, path)
    data_files = _load_external_data(model, path, keep_min=LAZY_MIN if lazy else None)
    _check_graph(model, path)
    if skeleton is not None:
        _refer_to_file(model, path.resolve(), skeleton.references)
    return model, [path.resolve(), *sorted(data_files)]


def _refer_to_file(model: onnx.ModelProto, path: Path, references: list[Reference]) -> None:
    """Point the initializers :func:`segc.lazy_load.read_skeleton` left out at their bytes in
    ``path``. A tensor whose bytes do not fit its type and dims gets them back inline, as an
    ordinary load would have it (the mismatch is onnxruntime's to report, as before)."""
    size = path.stat().st_size
    for ref in references:
        tensor = model.graph.initializer[ref.index]
        expected = _expected_nbytes(tensor)
        if (expected is not None and expected != ref.length) or ref.offset + ref.length > size:
            with open(path, "rb") as fh:
                fh.seek(ref.offset)
                tensor.raw_data = fh.read(ref.length)
            continue
        _refer_to(tensor, path, ref.offset, ref.length)
    _remember_source(path)


def _check_opsets(model: onnx.ModelProto, path: Path) -> None:
    version = default_opset(model)
    if version is None:
        raise SegcError(f"{path}: the model imports no default-domain opset")
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise SegcError(f"{path}: opset {version} is not supported (segc handles opsets {MIN_OPSET} to {MAX_OPSET})")


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and every subgraph in it (If branches, Loop and Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _attribute_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
            elif attr.type == onnx.AttributeProto.SPARSE_TENSORS:
                for sp in attr.sparse_tensors:
                    yield from (sp.values, sp.indices)


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor that can hold data: initializers and attribute tensors of every graph,
    subgraphs and functions included. A path check that skips one of them is no check."""
    for graph in _graphs(model.graph):
        yield from graph.initializer
        for sp in graph.sparse_initializer:
            yield from (sp.values, sp.indices)
        yield from _attribute_tensors(graph.node)
    for function in model.functions:
        yield from _attribute_tensors(function.node)


# packed or variable-size types: their byte count does not follow from dims and itemsize
_UNSIZED = {onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED}
for _name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2"):
    if hasattr(onnx.TensorProto, _name):
        _UNSIZED.add(getattr(onnx.TensorProto, _name))


def _expected_nbytes(tensor: onnx.TensorProto) -> int | None:
    if tensor.data_type in _UNSIZED:
        return None
    try:
        return tensor_nbytes(tensor)
    except Exception:  # noqa: BLE001 - an unknown type: no size to check against
        return None


def _load_external_data(model: onnx.ModelProto, path: Path, keep_min: int | None = None) -> set[Path]:
    """Read every tensor's external data, refusing paths outside the model's folder and data
    files too short for what the tensor says it holds. Top-level initializers of ``keep_min``
    bytes or more stay on disk, by reference (a lazy load: the one-file save inlines exactly
    those, ``serialised_chunks``); over 2 GiB, every tensor of ON_DISK_MIN bytes or more does
    (the split save writes them all to the data file).

    onnx's own loader reads ``length`` bytes at ``offset`` and keeps whatever comes back, so
    a truncated file gives a silently short tensor (and, with ``--verify none``, a corrupt
    compiled model). Hence segc reads the data itself and checks every size.
    """
    base = path.resolve().parent
    files: set[Path] = set()
    checked: list[tuple[onnx.TensorProto, Path, int, int]] = []
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        name = tensor.name or "(unnamed)"
        loc = info.get("location", "")
        if not loc:
            raise SegcError(f"{path}: external data of tensor {name!r} names no location")
        if os.path.isabs(loc) or Path(loc).is_absolute():
            raise SegcError(
                f"{path}: external data location {loc!r} is absolute; segc only reads data beside the model"
            )
        target = (base / loc).resolve()
        if base not in target.parents:
            raise SegcError(f"{path}: external data location {loc!r} points outside the model's folder")
        if not target.is_file():
            raise SegcError(f"{path}: external data file {loc!r} is missing")
        try:
            offset = int(info.get("offset") or 0)
            length = int(info["length"]) if info.get("length") else None
        except ValueError:
            raise SegcError(f"{path}: external data of tensor {name!r} has a malformed offset or length") from None
        if offset < 0 or (length is not None and length < 0):
            raise SegcError(f"{path}: external data of tensor {name!r} has a negative offset or length")
        expected = _expected_nbytes(tensor)
        want = length if length is not None else expected
        size = target.stat().st_size
        if offset > size or (want is not None and offset + want > size):
            raise SegcError(f"{path}: external data for {name!r} is truncated: it needs bytes {offset} to "
                            f"{offset + (want or 0)} of {loc!r}, which has {size}")
        if expected is not None and want != expected:
            raise SegcError(
                f"{path}: external data for {name!r} is {want} bytes, but its shape and type need {expected}"
            )
        checked.append((tensor, target, offset, want if want is not None else size - offset))
        files.add(target)
    inline = model.ByteSize() if checked else 0  # weightless tensors: cheap to measure
    keepable = {id(t) for t in model.graph.initializer}
    if inline + sum(n for *_, n in checked) > PROTOBUF_LIMIT:
        keep_min, keepable = ON_DISK_MIN, {id(t) for t in _all_tensors(model)}
    for tensor, target, offset, nbytes in checked:
        if keep_min is not None and nbytes >= keep_min and id(tensor) in keepable:
            _refer_to(tensor, target, offset, nbytes)
            continue
        try:
            with open(target, "rb") as fh:
                fh.seek(offset)
                data = fh.read(nbytes)
        except OSError as exc:
            raise SegcError(f"{path}: cannot read external data of {tensor.name!r}: {exc.strerror}") from None
        if len(data) != nbytes:
            raise SegcError(f"{path}: external data for {tensor.name!r} is truncated")
        tensor.raw_data = data
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    for target in files:
        _remember_source(target)
    return files


# Weights kept on disk. A model over protobuf's 2 GiB limit cannot be held as one message
# (nor serialised for onnxruntime or onnx-simplifier), and reading 2.4 GB of weights into
# Python only for every pass to copy them is what OOM-killed such compiles. So above the
# limit, each tensor of at least ON_DISK_MIN bytes stays where the file put it: segc's
# in-memory model refers to it by *absolute* path, offset and length (checked at load, and
# never written in that form: save_model copies the bytes into the output's own data file,
# segc.ortrun hands onnxruntime the folder). Passes see every tensor's name, type and dims,
# and copying such a model costs kilobytes.
#
#   input:  m.onnx (graph)  +  m.data [w1 | w2 | w3]          (the user's, read only)
#   memory: ModelProto, w1/w2/w3 -> ("/abs/dir/m.data", offset, length)
#   output: out/m.ascend.onnx + out/m.ascend.onnx.data [w1 | w2 | w3]  (copied in chunks)
ON_DISK_MIN = 1024 * 1024


def _refer_to(tensor: onnx.TensorProto, target: Path, offset: int, nbytes: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", str(target)), ("offset", str(offset)), ("length", str(nbytes))):
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = onnx.TensorProto.EXTERNAL


@dataclass(frozen=True)
class DiskTensor:
    """Where the bytes of a weight kept on disk are (see ON_DISK_MIN)."""

    file: Path
    offset: int
    length: int


def disk_tensor(tensor: onnx.TensorProto) -> DiskTensor | None:
    """The on-disk location of ``tensor``'s data, None when it holds its data itself."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    info = {e.key: e.value for e in tensor.external_data}
    return DiskTensor(Path(info["location"]), int(info.get("offset") or 0), int(info["length"]))


def disk_tensors(model: onnx.ModelProto) -> list[tuple[onnx.TensorProto, DiskTensor]]:
    """Every tensor of ``model`` whose data segc left on disk (empty for most models)."""
    return [(t, d) for t in _all_tensors(model) if (d := disk_tensor(t)) is not None]


# The files whose bytes weights kept on disk refer to, as they were when segc read them:
# (device, inode, size, mtime). A file changed during the compile would give a model
# built from two versions of the weights, so every read of such bytes checks first.
_SOURCES: dict[Path, tuple[int, int, int, int]] = {}


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _remember_source(path: Path) -> None:
    """Record ``path`` as it is now: each load of a file starts from what it holds then."""
    _SOURCES[path] = _identity(path)


def check_source(path: Path) -> None:
    """SegcError if a file weights refer to changed since it was read (see ``_SOURCES``)."""
    known = _SOURCES.get(path)
    try:
        now = _identity(path)
    except OSError:
        now = None
    if known is not None and now != known:
        raise SegcError(f"{path}: the file changed while segc was using its weights; run the compile again")


def read_disk_bytes(disk: DiskTensor, limit: int | None = None) -> Iterator[bytes]:
    """The bytes of a weight kept on disk (the first ``limit`` of them), in chunks of at most
    CHUNK (never all at once)."""
    check_source(disk.file)
    with open(disk.file, "rb") as fh:
        fh.seek(disk.offset)
        left = disk.length if limit is None else min(limit, disk.length)
        while left:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:
                raise SegcError(f"{disk.file}: the file shrank while segc was reading it")
            yield chunk
            left -= len(chunk)


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """A tensor's values as numpy, for tensors that hold them and weights kept on disk alike
    (``numpy_helper.to_array`` refuses the absolute locations segc keeps in memory)."""
    return numpy_helper.to_array(inline_copy(tensor) if disk_tensor(tensor) is not None else tensor)


def inline_copy(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of ``tensor`` that holds its data, read from disk if it was kept there."""
    inline = onnx.TensorProto()
    inline.CopyFrom(tensor)  # kilobytes for a weight kept on disk: the header
    disk = disk_tensor(tensor)
    if disk is not None:
        del inline.external_data[:]
        inline.ClearField("data_location")
        inline.raw_data = b"".join(read_disk_bytes(disk))
    return inline


def has_disk_tensors(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model))


def _check_graph(model: onnx.ModelProto, path: Path) -> None:
    """An invalid graph is bad input (exit 2), found before any pass rather than as a pass
    "failure" or, with ``--verify none``, not at all.

    segc checks the structure itself (every graph and subgraph: names defined once, used only
    after they are defined, which also catches cycles; outputs listed once), then runs
    onnx.checker for the rest (op schemas, attributes) on a weightless copy.
    """
    _check_structure(model.graph, set(), path)
    # the checker wants a shape on every graph input/output type; ONNX and onnxruntime allow
    # none (unknown rank), so the copy it checks gets an empty one
    skeleton = _without_weights(model)
    for g in _graphs(skeleton.graph):
        for vi in [*g.input, *g.output, *g.value_info]:
            if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape"):
                vi.type.tensor_type.shape.SetInParent()
    try:
        onnx.checker.check_model(skeleton)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise SegcError(f"{path}: not a valid ONNX graph: {' '.join(str(exc).split())[:300]}") from None


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose top-level initializers hold no data (name and type only).

    onnx.checker never looks at initializer values, but handing it the real model costs a
    full serialisation: seconds on a 250 MB network, at every load.
    """
    skeleton = onnx.ModelProto()
    copy_fields_except(model, skeleton, "graph")
    copy_fields_except(model.graph, skeleton.graph, "initializer")
    for t in model.graph.initializer:
        skeleton.graph.initializer.add(name=t.name, data_type=t.data_type, dims=[0])
    return skeleton


def copy_fields_except(src: Message, dst: Message, *skip: str) -> None:
    """Copy every set field of message ``src`` into ``dst`` but those named in ``skip`` (repeated fields appended)."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if hasattr(value, "extend"):  # a repeated field (FieldDescriptor.label is gone in protobuf 6)
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _check_structure(graph: onnx.GraphProto, outer: set[str], path: Path) -> None:
    def bad(why: str) -> SegcError:
        return SegcError(f"{path}: not a valid ONNX graph: {why} (graph {graph.name!r})")

    defined: set[str] = set()
    for name in [vi.name for vi in graph.input] + [t.name for t in graph.initializer]:
        defined.add(name)  # an initializer may also be listed as an input (IR < 4)
    for node in graph.node:
        for name in node.input:
            if name and name not in defined and name not in outer:
                raise bad(f"node {node.name or node.op_type!r} uses {name!r} before any node makes it "
                          "(nodes out of order, or a cycle)")
        for attr in node.attribute:
            subs = (
                [attr.g]
                if attr.type == onnx.AttributeProto.GRAPH
                else list(attr.graphs)
                if attr.type == onnx.AttributeProto.GRAPHS
                else []
            )
            for sub in subs:
                _check_structure(sub, outer | defined, path)
        for name in node.output:
            if not name:
                continue
            if name in defined:
                raise bad(f"{name!r} is made twice (node {node.name or node.op_type!r})")
            defined.add(name)
    seen: set[str] = set()
    for out in graph.output:
        if out.name in seen:
            raise bad(f"output {out.name!r} is listed twice")
        if out.name not in defined and out.name not in outer:
            raise bad(f"output {out.name!r} is made by no node")
        seen.add(out.name)


def readable_ir(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose IR version onnxruntime (and the vendor parsers) read."""
    if model.ir_version <= MAX_IR_VERSION:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.ir_version = MAX_IR_VERSION
    return out


def save_model(model: onnx.ModelProto, path: str | Path, *, protect: Sequence[str | Path] = ()) -> Path:
    """Write ``model`` to ``path`` through segc's atomic writer (:mod:`segc.outdir`);
    refuses a ``path`` that is, or links to, any file in ``protect``.

    A model within protobuf's 2 GiB limit is one file, weights kept on disk copied into it
    (:func:`serialised_chunks`). Models above the limit are written with their weights in
    ``<name>.data`` beside the model: both are written into a private folder, then the
    weights and the model are renamed into place (the model last).
    """
    path = Path(path)
    guarded = [Path(p) for p in protect]
    refuse_protected(path, guarded)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # `segc export -o new/folder/m.onnx`
    except OSError as exc:
        raise SegcError(f"{path}: cannot create its folder: {exc.strerror or type(exc).__name__}") from None
    model = readable_ir(model)
    # estimated from dims: protobuf's ByteSize walks every byte and costs seconds on big models
    if weight_bytes(model) <= PROTOBUF_LIMIT:
        return write_chunks(path, serialised_chunks(model), protect=guarded)
    data_name = path.name + ".data"
    refuse_protected(path.parent / data_name, guarded, "the input's data")
    try:
        with private_folder(path.parent) as folder:
            staged = Path(folder) / path.name
            digest = hashlib.sha256()
            with open(Path(folder) / data_name, "wb") as data:
                graph = _split_weights(model, _HashedSparseFile(data, digest), data_name)
                os.fsync(data.fileno())
            remember_sha256(Path(folder) / data_name, digest.hexdigest())
            write_file(staged, graph)
            os.replace(Path(folder) / data_name, path.parent / data_name)  # weights first, model last
            os.replace(staged, path)
    except OSError as exc:
        raise SegcError(f"{path}: cannot write: {exc.strerror or type(exc).__name__}") from None
    return path


STREAM_MIN = 1 << 20  # bytes of initializers below which a model is serialised in one piece


def serialised_chunks(model: onnx.ModelProto) -> Iterator[bytes]:
    """The model's protobuf encoding in pieces: what ``model.SerializeToString()`` encodes,
    without ever holding it whole.

    Why: one ``SerializeToString`` of hrnet_w48_ocr (268 MiB) took 1.26 s and raised the peak
    by 766 MiB (upb grows one buffer by doubling, then copies it into a bytes object), the
    peak of a whole compile; the 326 initializers one at a time took 0.25 s. Protobuf lets a
    message's fields come in any order, and a length-delimited field is its tag, its length
    and its bytes, so the model is written as

        [ModelProto fields but graph] [tag graph, len] [GraphProto fields but initializer]
                                                       [tag initializer, len][TensorProto] x N

    which every protobuf parser reads as the same message (only field order differs from
    the canonical encoding; tests/compiler/test_save_stream.py checks the round trip).

    A top-level weight kept on disk (:func:`disk_tensor`) is written inline: its header
    (name, type, dims) without the reference, then a ``raw_data`` field whose bytes are
    copied from its file in chunks. Weights in subgraphs are never kept on disk.
    """
    graph = model.graph
    # sized from dims: reading ``t.raw_data`` in Python copies the bytes
    if not has_disk_tensors(model) and (
        sum(tensor_nbytes(t) for t in graph.initializer if t.HasField("raw_data")) < STREAM_MIN
    ):
        yield model.SerializeToString()
        return
    head = onnx.ModelProto()
    copy_fields_except(model, head, "graph")
    rest = onnx.GraphProto()
    copy_fields_except(graph, rest, "initializer")
    rest_bytes = rest.SerializeToString()
    del rest
    pieces = [_InitializerPiece.of(t) for t in graph.initializer]
    body = len(rest_bytes) + sum(len(_INITIALIZER_TAG) + len(varint_bytes(p.size)) + p.size for p in pieces)
    yield head.SerializeToString()
    yield _GRAPH_TAG + varint_bytes(body)
    yield rest_bytes
    for tensor, piece in zip(graph.initializer, pieces, strict=True):
        yield _INITIALIZER_TAG + varint_bytes(piece.size)
        yield from piece.chunks(tensor)


@dataclass(frozen=True)
class _InitializerPiece:
    """How one initializer is encoded by :func:`serialised_chunks`: its size, known before
    any byte of it is written, and where its bytes come from."""

    size: int
    disk: DiskTensor | None
    header: bytes  # for a weight kept on disk: the TensorProto without data or reference

    @classmethod
    def of(cls, tensor: onnx.TensorProto) -> _InitializerPiece:
        disk = disk_tensor(tensor)
        if disk is None:
            return cls(tensor.ByteSize(), None, b"")
        head = onnx.TensorProto()
        head.CopyFrom(tensor)
        del head.external_data[:]
        head.ClearField("data_location")
        header = head.SerializeToString()
        return cls(len(header) + len(_RAW_DATA_TAG) + len(varint_bytes(disk.length)) + disk.length, disk, header)

    def chunks(self, tensor: onnx.TensorProto) -> Iterator[bytes]:
        if self.disk is None:
            data = tensor.SerializeToString()
            if len(data) != self.size:  # a tensor changed while it was written: never write a corrupt file
                raise RuntimeError(f"initializer {tensor.name!r} encodes to {len(data)} bytes, not {self.size}")
            yield data
            return
        yield self.header + _RAW_DATA_TAG + varint_bytes(self.disk.length)
        yield from read_disk_bytes(self.disk)


_GRAPH_TAG = bytes([7 << 3 | 2])  # ModelProto.graph = 7, wire type 2 (length-delimited)
_INITIALIZER_TAG = bytes([5 << 3 | 2])  # GraphProto.initializer = 5
_RAW_DATA_TAG = bytes([9 << 3 | 2])  # TensorProto.raw_data = 9


ALIGN = 4096  # onnxruntime memory-maps external data whose offset is page aligned (no copy)
CHUNK = 64 * 1024 * 1024


_ZEROS = bytes(CHUNK)


class _HashedSparseFile:
    """A data file written forwards only, hashed as it is written (so the manifest need not
    read gigabytes back), all-zero chunks left as holes (as ``cp --sparse`` does): zero
    weights then cost neither disk nor write time."""

    def __init__(self, fh: BinaryIO, digest: hashlib._Hash) -> None:
        self.fh, self.digest, self.size = fh, digest, 0

    def write(self, chunk: bytes) -> None:
        if chunk == _ZEROS[: len(chunk)]:
            self.fh.seek(len(chunk), os.SEEK_CUR)
        else:
            self.fh.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)

    def pad_to(self, align: int) -> None:
        self.write(_ZEROS[: -self.size % align])

    def finish(self) -> None:
        self.fh.truncate(self.size)  # a trailing hole still counts towards the file's size


def _split_weights(model: onnx.ModelProto, data: _HashedSparseFile, data_name: str) -> bytes:
    """The serialised graph of ``model`` with every tensor of 1 KiB or more written to
    ``data`` (page-aligned, so onnxruntime maps rather than reads it), named ``data_name``.

    Weights kept on disk are copied from their file in 64 MiB chunks; inline ones are moved
    to the file one tensor at a time. ``model`` itself is changed only for the length of
    the call and put back as it was, so no second copy of the weights is ever held.
    """
    undo: list[tuple[onnx.TensorProto, bytes | None, list[tuple[str, str]]]] = []
    try:
        for tensor in _all_tensors(model):
            src = disk_tensor(tensor)
            if src is None and (tensor.data_type in _UNSIZED or len(tensor.raw_data) < 1024):
                continue
            data.pad_to(ALIGN)
            offset = data.size
            if src is not None:
                for chunk in read_disk_bytes(src):
                    data.write(chunk)
                undo.append((tensor, None, [(e.key, e.value) for e in tensor.external_data]))
                length = src.length
            else:
                raw = tensor.raw_data
                for start in range(0, len(raw), CHUNK):
                    data.write(raw[start:start + CHUNK])
                tensor.ClearField("raw_data")
                undo.append((tensor, raw, []))
                length = len(raw)
            del tensor.external_data[:]
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                tensor.external_data.add(key=key, value=value)
            tensor.data_location = onnx.TensorProto.EXTERNAL
        data.finish()
        serialised: bytes = model.SerializeToString()
        return serialised
    finally:
        for tensor, saved, entries in reversed(undo):
            del tensor.external_data[:]
            for key, value in entries:
                tensor.external_data.add(key=key, value=value)
            if saved is not None:
                tensor.raw_data = saved
                tensor.data_location = onnx.TensorProto.DEFAULT


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, from its dims and element type (no walk over the data)."""
    count = 1
    for d in t.dims:
        count *= d
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):  # strings and exotic types: measure the message
        return int(t.ByteSize())
    return count * itemsize


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of constant data: initializers and Constant nodes."""
    total = sum(tensor_nbytes(t) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            total += sum(tensor_nbytes(a.t) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return total
