"""onnx-simplifier's C++ core, loaded without the ``onnxsim`` Python package.

Why not ``import onnxsim``: onnxsim 0.8's package ``__init__`` imports some two hundred
modules of a quantisation/export toolkit, and ``onnxsim/ppq_integration.py`` imports torch
when it is installed (measured 5.5 s of a 25 s compile on hrnet_w48_ocr; another
profile 6.1 s), for a feature segc never uses. The simplifier itself is the extension
module ``onnxsim_cpp2py_export``: ``simplify(executor, model_bytes, ...)``, where ``executor`` is a
``ModelExecutor`` whose ``Run`` evaluates the small constant-folding sub-models the core
builds. segc loads that extension straight from onnxsim's install folder (an
``ExtensionFileLoader``: no parent package is imported, nothing is stubbed) and supplies its
own executor: numpy for the folds it computes exactly as onnxruntime does, onnxruntime for
the rest.

Argument order and meaning follow the extension's own signature (``simplify.__doc__``)
and the call in ``onnxsim/onnx_simplifier.py``'s fast path (pypi onnxsim 0.8).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from segc.errors import SegcError

EXTENSION = "onnxsim.onnxsim_cpp2py_export"

# onnx-simplifier 0.8 fuses ViT self-attention blocks into ``com.microsoft::Attention``, an
# onnxruntime contrib op that no vendor parser takes (found on DPT/Dinov2 with static shapes,
# a held-out trial). segc's output must stay standard ONNX, so that fusion is off.
#
# ``eliminate_nop_with_unit`` and ``eliminate_duplicate_initializer`` are quadratic in graph size
# (2.9 s and 0.6 s of onnxsim at 50k nodes, ONNXSIM_PROFILE=1 on bench/run_bench.py's synthetic
# graphs): segc does the same rewrites in linear time after onnx-simplifier
# (``segc.passes._unit_nops``, called by the simplify pass).
SKIPPED_OPTIMIZERS = ("fuse_attention", "eliminate_nop_with_unit", "eliminate_duplicate_initializer")


@dataclass(frozen=True)
class FoldSettings:
    """What one onnx-simplifier attempt does (the knobs segc's ``simplify`` pass varies)."""

    constant_folding: bool = True
    tensor_size_threshold: int = 1 << 30  # bytes; onnxsim's default "1GB"

    def describe(self) -> str:
        if not self.constant_folding:
            return "skip_constant_folding"
        return (
            "defaults"
            if self.tensor_size_threshold == 1 << 30
            else f"tensor_size_threshold={self.tensor_size_threshold}B"
        )


_core: ModuleType | None = None
_executor = None


def core() -> ModuleType:
    """The extension module, loaded once by file; SegcError if onnxsim is not installed."""
    global _core
    if _core is not None:
        return _core
    loaded = sys.modules.get(EXTENSION)
    if loaded is None:
        spec = importlib.util.find_spec("onnxsim")  # locates the package; does not run __init__
        if spec is None or not spec.submodule_search_locations:
            raise SegcError("the simplify pass needs onnx-simplifier (pip install onnxsim)")
        folder = Path(next(iter(spec.submodule_search_locations)))
        candidates = [p for p in folder.iterdir() if p.name.startswith("onnxsim_cpp2py_export.") and
                      any(p.name.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES)]
        if not candidates:
            raise SegcError(f"onnx-simplifier at {folder} has no C++ core (onnxsim_cpp2py_export)")
        loader = importlib.machinery.ExtensionFileLoader(EXTENSION, str(candidates[0]))
        ext_spec = importlib.util.spec_from_file_location(EXTENSION, candidates[0], loader=loader)
        assert ext_spec is not None
        loaded = importlib.util.module_from_spec(ext_spec)
        loader.exec_module(loaded)
    _core = loaded
    return loaded


def executor() -> Any:
    """A process-wide ``ModelExecutor`` for the core's constant folds (see :func:`_make_executor`)."""
    global _executor
    if _executor is None:
        _executor = _make_executor(core())
    return _executor


@dataclass
class FoldCounts:
    """How the folds of this process were evaluated (tests read it: a fold that numpy cannot
    compute exactly must reach onnxruntime)."""

    numpy: int = 0
    onnxruntime: int = 0


FOLDS = FoldCounts()


def _make_executor(c: ModuleType) -> Any:
    """The executor: numpy where it computes exactly what onnxruntime would, onnxruntime otherwise.

    Why two: a fold is almost always a little shape arithmetic (``segc.passes._fold_numpy``),
    and onnxruntime's import alone cost more than the whole fold; the rest goes to an
    onnxruntime session configured as onnxsim's own ``backend.run_model(...,
    single_threaded=True)`` is (no graph optimisation, one thread: each fold is tiny).
    """
    import numpy as np
    import onnx
    import onnx.numpy_helper

    from segc.passes._fold_numpy import evaluate

    base: Any = c.ModelExecutor  # onnxsim's C++ extension: no stubs, so the base is Any

    class Folder(base):  # type: ignore[misc]  # subclassing Any (disallow_subclassing_any)
        """Evaluates one constant-folding sub-model: inputs and outputs are serialised TensorProtos."""

        def Run(self, model_bytes: bytes, inputs: list[bytes]) -> list[bytes]:  # noqa: N802 - the C++ interface's name
            model = onnx.ModelProto()
            model.ParseFromString(model_bytes)
            names = [i.name for i in model.graph.input]
            feed: dict[str, Any] = {}
            for name, raw in zip(names, inputs, strict=False):
                tensor = onnx.TensorProto()
                tensor.ParseFromString(raw)
                feed[name] = onnx.numpy_helper.to_array(tensor)
            values = evaluate(model, feed)
            if values is not None:
                FOLDS.numpy += 1
            else:
                values = _run_on_onnxruntime(model_bytes, feed)
                FOLDS.onnxruntime += 1
            return [onnx.numpy_helper.from_array(np.asarray(v)).SerializeToString() for v in values]

    return Folder()


def _run_on_onnxruntime(model_bytes: bytes, feed: dict[str, Any]) -> list[Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.enable_mem_pattern = False
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    values: list[Any] = session.run(None, feed)
    return values


def simplify_bytes(model_bytes: bytes, settings: FoldSettings) -> bytes:
    """Simplify a serialised model in memory; returns the serialised result."""
    out: bytes = core().simplify(executor(), model_bytes, list(SKIPPED_OPTIMIZERS), settings.constant_folding, True,
                           settings.tensor_size_threshold, None, None, True, False, False, None, None, None)
    return out
