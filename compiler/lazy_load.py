"""Reading an .onnx file without reading its weights: big initializers stay in the file.

Why: a compile reads every weight (``onnx.load``), hands every weight to each tool it runs
(onnx-simplifier, onnx's converters, graph-surgeon exports) and writes every weight again,
although no default pass looks at a convolution's values. On hrnet_w48_ocr (268 MiB of
weights) those copies cost more than a bare load and save of the file. So ``segc compile``
reads the file's *structure* only: each top-level initializer of :data:`LAZY_MIN` bytes or
more whose values the file holds inline (``raw_data``) becomes a reference to where those
bytes already are, in the .onnx file itself::

    file:    [ModelProto ... graph [node ...][initializer name dims raw_data=####][...]]
                                                                          ^ offset, length
    memory:  ModelProto ... graph [node ...][initializer name dims -> (file, offset, length)]

That is exactly the form segc already uses for the weights of models over protobuf's 2 GiB
limit (``segc.modelio.ON_DISK_MIN``): every pass sees names, types and dims, onnxruntime maps
the bytes (``segc.ortrun``), and the compiled model is written with the bytes copied from the
file in chunks (``segc.modelio.serialised_chunks``).

How: protobuf's wire format is a sequence of ``(tag, value)`` fields and a length-delimited
field is its tag, its length and its bytes, so the file is walked field by field (ModelProto,
its ``graph`` field, the graph's ``initializer`` fields, each tensor's fields), never
decoding a value, and the message without the big ``raw_data`` values is rebuilt from slices
of the file and parsed by protobuf as usual. Anything unexpected (a repeated ``graph`` field,
a tensor already external, a malformed varint) gives ``None`` and the caller loads the file
the ordinary way, so the errors users see for bad files are unchanged.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LAZY_MIN = 16 * 1024  # bytes of raw_data from which a weight is left in the file

# field numbers (onnx.proto3)
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9
_TENSOR_EXTERNAL = (13, 14)  # external_data, data_location
_LENGTH_DELIMITED = 2


class _Malformed(Exception):
    """The bytes are not the protobuf this module expects: load the ordinary way."""


@dataclass(frozen=True)
class Reference:
    """Where the values of the ``index``-th top-level initializer are in the file."""

    index: int
    offset: int
    length: int


@dataclass(frozen=True)
class Skeleton:
    """The model's encoding without the referenced values, and where those values are."""

    model_bytes: bytes
    references: list[Reference]


def read_skeleton(path: Path, min_bytes: int = LAZY_MIN) -> Skeleton | None:
    """The file's model with every inline initializer of ``min_bytes`` or more left out, or
    None when the file is not laid out as expected (or has nothing worth leaving out)."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _skeleton(buf, min_bytes)
    except (OSError, ValueError, _Malformed):  # ValueError: mmap of an empty file
        return None


def _skeleton(buf: mmap.mmap, min_bytes: int) -> Skeleton | None:
    parts: list[bytes] = []
    graph: tuple[bytes, list[Reference]] | None = None
    for number, wire, value_start, end, start in _fields(buf, 0, len(buf)):
        if number == _MODEL_GRAPH and wire == _LENGTH_DELIMITED:
            if graph is not None:
                raise _Malformed("two graph fields (protobuf would merge them)")
            graph = _graph(buf, value_start, end, min_bytes)
            parts.append(_tag(_MODEL_GRAPH) + varint_bytes(len(graph[0])) + graph[0])
        else:
            parts.append(buf[start:end])
    if graph is None or not graph[1]:
        return None
    return Skeleton(b"".join(parts), graph[1])


def _graph(buf: mmap.mmap, start: int, end: int, min_bytes: int) -> tuple[bytes, list[Reference]]:
    """The GraphProto's bytes with big initializer values left out; consecutive fields that
    stay as they are are copied as one slice."""
    out: list[bytes] = []
    refs: list[Reference] = []
    run = start  # the first byte not yet copied
    index = 0
    for number, wire, value_start, field_end, field_start in _fields(buf, start, end):
        if number != _GRAPH_INITIALIZER or wire != _LENGTH_DELIMITED:
            continue
        found = _tensor(buf, value_start, field_end, min_bytes)
        if found is not None:
            header, offset, length = found
            out.append(buf[run:field_start])
            out.append(_tag(_GRAPH_INITIALIZER) + varint_bytes(len(header)) + header)
            run = field_end
            refs.append(Reference(index, offset, length))
        index += 1
    out.append(buf[run:end])
    return b"".join(out), refs


def _tensor(buf: mmap.mmap, start: int, end: int, min_bytes: int) -> tuple[bytes, int, int] | None:
    """(the TensorProto's bytes without raw_data, raw_data's offset, its length), or None to
    keep the tensor as it is (small, no raw_data, or external already)."""
    raw: tuple[int, int] | None = None
    keep: list[tuple[int, int]] = []
    for number, wire, value_start, field_end, field_start in _fields(buf, start, end):
        if number in _TENSOR_EXTERNAL:
            return None
        if number == _TENSOR_RAW_DATA and wire == _LENGTH_DELIMITED:
            if raw is not None:
                return None  # two raw_data fields: the last would win; not worth handling
            raw = (value_start, field_end)
        else:
            keep.append((field_start, field_end))
    if raw is None or raw[1] - raw[0] < min_bytes:
        return None
    return b"".join(buf[a:b] for a, b in keep), raw[0], raw[1] - raw[0]


def _fields(buf: mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Each field in ``buf[start:end]``: (number, wire type, value start, field end, field start)."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        value_start = pos
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == _LENGTH_DELIMITED:
            length, value_start = _varint(buf, pos, end)
            pos = value_start + length
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed(f"wire type {wire}")  # groups (3, 4) are not used by onnx.proto
        if pos > end:
            raise _Malformed("a field runs past its message")
        yield number, wire, value_start, pos, field_start


def _varint(buf: mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _tag(number: int) -> bytes:
    return bytes([number << 3 | _LENGTH_DELIMITED])


def varint_bytes(n: int) -> bytes:
    """``n`` as a protobuf varint."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)
