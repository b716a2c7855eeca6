"""onnxruntime sessions, configured on purpose and counted.

Verification must judge the *graph*, not onnxruntime's own rewrites of it, so sessions run
with graph optimisations at ORT_ENABLE_BASIC (constant folding and redundancy elimination
only, no fused CPU kernels that would change float rounding) unless asked otherwise, a fixed
thread count (so figures are repeatable), and the CPU provider. The options are recorded in
every report. ``SESSION_STATS`` counts sessions and runs so the benchmark can check that each
graph state gets one session and each input shape one reference run.

onnxruntime itself is imported by the functions that make a session, not with this module:
a compile with ``--verify none`` for a vendor target needs the settings and counters here
but never a session, and the import is about 0.12 s of such a compile.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from functools import lru_cache
from importlib import metadata as importlib_metadata
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

if TYPE_CHECKING:
    import onnxruntime as ort

from segc.lowering import lower_for_reference
from segc.errors import SegcError
from segc.memory import map_big_blocks
from segc.modelio import disk_tensor, disk_tensors, has_disk_tensors, readable_ir


@dataclass(frozen=True)
class SessionConfig:
    """The onnxruntime settings used for verification (recorded in report.json)."""

    intra_op_threads: int = min(4, os.cpu_count() or 1)
    inter_op_threads: int = 1
    optimization: str = "basic"  # disable | basic | extended | all
    # onnxruntime's CPU memory arena, off for verification, which runs each session a few
    # times: an arena keeps each run's output buffers (the arrays returned share them) until
    # the session's next run, so checks over several sessions stacked every output of every
    # session (DBNet at 1280x1280: +500 MB), and it grows in chunks that outlast the tensors
    # they held (hrnet_w48_ocr at 1x3x1024x2048, one bare session and run: peak 1961 MiB with
    # it, 1520 without, 15.9 against 16.9 s; its --verify each peak 2.23 -> 1.78 GiB, 1.46 with
    # segc.memory.map_big_blocks). The price is speed where a whole model runs several times
    # (dbnet_r50_dcn's whole-model checks for onnxruntime: 9.2 to 9.5 s with it, 14.5 to 17.0
    # without, at 885 against 615 MiB). A session run over many inputs (``segc evaluate``)
    # keeps it: DBNet at 736x1280 ran 8% faster with it, at a lower peak (652 against 746 MiB).
    arena: bool = False
    # Idle intra-op threads spin-wait for work by default. On a 2-core machine shared with
    # another process that burnt the core the work needed: DBNet's boundary checks took 1.8
    # CPU-s and 2.0-2.8 s with spinning, 1.2 and 1.2 s without (load 4.7, both two threads);
    # the whole-model reference cone 10.4 against 9.4 CPU-s.
    spinning: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"provider": "CPUExecutionProvider", "onnxruntime": onnxruntime_version()}


def onnxruntime_version() -> str:
    """onnxruntime's version, read from its package metadata unless it is already imported
    (every report records it; a compile that runs no session never imports onnxruntime)."""
    if "onnxruntime" not in sys.modules:
        try:
            return importlib_metadata.version("onnxruntime")
        except importlib_metadata.PackageNotFoundError:  # a build under another name (onnxruntime-gpu)
            pass
    import onnxruntime as ort

    return str(ort.__version__)


# SessionConfig.optimization -> the name of onnxruntime's GraphOptimizationLevel member
_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


@dataclass
class SessionStats:
    sessions: int = 0
    runs: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def reset(self) -> None:
        self.sessions = 0
        self.runs = 0

    def count_run(self) -> None:
        with self._lock:  # (run_pair runs two at once)
            self.runs += 1


SESSION_STATS = SessionStats()


def session_options(config: SessionConfig) -> ort.SessionOptions:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.intra_op_threads
    opts.inter_op_num_threads = config.inter_op_threads
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[config.optimization])
    opts.enable_cpu_mem_arena = config.arena
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spinning else "0")
    opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
    return opts


@dataclass(frozen=True)
class Runnable:
    """A model as onnxruntime takes it: the serialised graph, and the folder its weights kept
    on disk are read from (None when it holds all its weights; see segc.modelio.ON_DISK_MIN)."""

    model_bytes: bytes
    data_folder: Path | None


def runnable(model: onnx.ModelProto) -> Runnable:
    """``model`` for onnxruntime: vendor ops lowered, IR version readable, and weights kept on
    disk named relative to their folder.

    onnxruntime refuses absolute external-data paths and links out of the model's folder, so
    rather than copy gigabytes next to a temporary model, the graph goes in as bytes and
    onnxruntime is told the folder ("session.model_external_initializers_file_folder_path")
    it reads, memory-mapping page-aligned data, from.
    """
    model, _ = lower_for_reference(model)
    model = readable_ir(model)
    if not has_disk_tensors(model):
        return Runnable(model.SerializeToString(), None)
    out = onnx.ModelProto()
    out.CopyFrom(model)  # kilobytes: the weights stay on disk
    located = disk_tensors(out)
    folders = {d.file.parent for _, d in located}
    if len(folders) != 1:
        raise SegcError(f"the model's weights are in {len(folders)} folders; onnxruntime reads them from one")
    for tensor, disk in located:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = disk.file.name
    return Runnable(out.SerializeToString(), folders.pop())


def inference_session(
    model: onnx.ModelProto, opts: ort.SessionOptions, *, share_weights: bool = False
) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``model`` with ``opts`` (see :func:`runnable`).

    With ``share_weights``, top-level weights kept on disk are handed to onnxruntime as one
    read-only memory map per tensor (``SessionOptions.add_initializer``), the same map for
    every session of this process: the reference and a candidate then hold the weights once,
    not once each (measured on a 1 GiB Conv weight: two sessions 1.1 GB RSS shared, 2.1 GB
    mapped separately). Not for a session that writes an optimised model, which must
    contain its weights.
    """
    import onnxruntime as ort

    run = runnable(model)
    if run.data_folder is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(run.data_folder))
        if share_weights:
            for tensor in model.graph.initializer:
                value = _shared_weight(tensor)
                if value is not None:
                    opts.add_initializer(tensor.name, value)
    sess = ort.InferenceSession(run.model_bytes, opts, providers=["CPUExecutionProvider"])
    _drop_model_bytes(sess)
    return sess


def _drop_model_bytes(sess: ort.InferenceSession) -> None:
    """Let go of the serialised model the Python session object keeps.

    onnxruntime's Python ``InferenceSession`` keeps the bytes it was built from for as long
    as it lives ("TODO: This is bad as we're holding the memory indefinitely",
    onnxruntime/python/onnxruntime_inference_collection.py, ``InferenceSession.__init__``),
    only to rebuild itself when an execution provider fails and falls back. The C++ session
    holds its own weights, so the bytes are a second copy of every weight during every run
    (281 MB on hrnet_w48_ocr, 100 MB on dbnet_r50). Fallback is turned off first: on the CPU
    provider there is nothing to fall back to, and a failing run then raises its own error."""
    if getattr(sess, "_model_bytes", None) is not None:
        sess.disable_fallback()
        sess._model_bytes = None


# (file identity, offset, length, type, dims) -> OrtValue over a read-only np.memmap. Kept for
# the life of the process: onnxruntime reads the buffer for as long as any session lives.
_SHARED: dict[tuple[Any, ...], ort.OrtValue] = {}


def _shared_weight(tensor: onnx.TensorProto) -> ort.OrtValue | None:
    disk = disk_tensor(tensor)
    if disk is None:
        return None
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError):
        return None
    if dtype.kind not in "biuf" or dtype.itemsize * int(np.prod(tensor.dims)) != disk.length:
        return None  # a type numpy cannot map (bfloat16, float8): onnxruntime reads it from the folder
    st = disk.file.stat()
    key = (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        disk.offset,
        disk.length,
        tensor.data_type,
        tuple(tensor.dims),
    )
    if key not in _SHARED:
        import onnxruntime as ort

        array = np.memmap(
            disk.file, dtype=dtype.newbyteorder("<"), mode="r", offset=disk.offset, shape=tuple(tensor.dims)
        )
        _SHARED[key] = ort.OrtValue.ortvalue_from_numpy(array)
    return _SHARED[key]


def make_session(model: onnx.ModelProto, config: SessionConfig | None = None) -> ort.InferenceSession:
    """One CPU session for ``model`` (vendor ops lowered first, see segc.lowering)."""
    config = config or SessionConfig()
    if not config.arena:
        map_big_blocks()  # its buffers are plain mallocs: each big one goes back when freed
    sess = inference_session(model, session_options(config), share_weights=True)
    SESSION_STATS.sessions += 1
    return sess


def run_session(
    sess: ort.InferenceSession, feeds: dict[str, np.ndarray], outputs: list[str] | None = None, *,
    own: bool = False,
) -> dict[str, np.ndarray]:
    """Run and return outputs by name.

    ``own``: return arrays that own their memory. The arrays onnxruntime returns are views of
    its output buffers, and each keeps the session's *whole arena* alive, every chunk of it,
    until the array dies, even after the session is gone: a 19 MB output of hrnet_w48_ocr
    kept 1.5 GiB. Copy when the outputs outlive the session (a whole-model reference, cached
    boundary values); a session without an arena frees each buffer with its array."""
    names = outputs or [o.name for o in sess.get_outputs()]
    values = sess.run(names, feeds)
    SESSION_STATS.count_run()
    if own:
        for k, value in enumerate(values):
            if isinstance(value, np.ndarray) and not value.flags["OWNDATA"]:
                values[k] = np.array(value, copy=True)
                del value
    return dict(zip(names, values, strict=False))


def run_pair(
    first: tuple[ort.InferenceSession, dict[str, np.ndarray], list[str]],
    second: tuple[ort.InferenceSession, dict[str, np.ndarray], list[str]],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Two independent runs at once: ``first`` on a helper thread, ``second`` on this one.

    Why: a boundary check runs the graph before and the graph after on the same inputs, and
    onnxruntime keeps one core busy on most small region models (a ConvTranspose, a Resize
    write their output on one thread), so on 2 cores the second core idled through half the
    check. onnxruntime lets go of the GIL while it runs, so a thread is enough. On one core
    they run one after the other."""
    if (os.cpu_count() or 1) < 2:
        return run_session(*first), run_session(*second)
    pending = _helper().submit(run_session, *first)
    try:
        other = run_session(*second)
    finally:
        wait([pending])  # also when the second raised: the caller's inputs must outlive the first
    return pending.result(), other


@lru_cache(maxsize=1)
def _helper() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="segc-ort")


# A forked child (a `segc batch` worker) has none of its parent's threads, but an executor
# copied from the parent would count its idle worker and queue work that never runs.
os.register_at_fork(after_in_child=_helper.cache_clear)


def run_model(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], config: SessionConfig | None = None
) -> dict[str, np.ndarray]:
    """Convenience for tests and one-off checks: a fresh session, one run."""
    return run_session(make_session(model, config), feeds)
