"""onnxruntime sessions, configured on purpose and counted.

Verification must judge the *graph*, not onnxruntime's own rewrites of it, so sessions run
with graph optimisations at ORT_ENABLE_BASIC (constant folding and redundancy elimination
only, no fused CPU kernels that would change float rounding) unless asked otherwise, a fixed
thread count (so figures are repeatable), and the CPU provider. The options are recorded in
every report. ``SESSION_STATS`` counts sessions and runs so the benchmark can check that each
graph state gets one session and each input shape one reference run.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from segc.lowering import lower_for_reference
from segc.modelio import readable_ir


@dataclass(frozen=True)
class SessionConfig:
    """The onnxruntime settings used for verification (recorded in report.json)."""

    intra_op_threads: int = min(4, os.cpu_count() or 1)
    inter_op_threads: int = 1
    optimization: str = "basic"  # disable | basic | extended | all

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"provider": "CPUExecutionProvider", "onnxruntime": ort.__version__}


_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass
class SessionStats:
    sessions: int = 0
    runs: int = 0

    def reset(self) -> None:
        self.sessions = 0
        self.runs = 0


SESSION_STATS = SessionStats()


def session_options(config: SessionConfig) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.intra_op_threads
    opts.inter_op_num_threads = config.inter_op_threads
    opts.graph_optimization_level = _LEVELS[config.optimization]
    opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
    return opts


def runnable_bytes(model: onnx.ModelProto) -> bytes:
    """Serialise ``model`` for onnxruntime: vendor ops lowered, IR version readable."""
    model, _ = lower_for_reference(model)
    return readable_ir(model).SerializeToString()


def make_session(model: onnx.ModelProto, config: SessionConfig | None = None) -> ort.InferenceSession:
    """One CPU session for ``model`` (vendor ops lowered first, see segc.lowering)."""
    config = config or SessionConfig()
    sess = ort.InferenceSession(runnable_bytes(model), session_options(config), providers=["CPUExecutionProvider"])
    SESSION_STATS.sessions += 1
    return sess


def run_session(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run and return outputs by name."""
    names = outputs or [o.name for o in sess.get_outputs()]
    values = sess.run(names, feeds)
    SESSION_STATS.runs += 1
    return dict(zip(names, values))


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], config: SessionConfig | None = None) -> dict[str, np.ndarray]:
    """Convenience for tests and one-off checks: a fresh session, one run."""
    return run_session(make_session(model, config), feeds)
