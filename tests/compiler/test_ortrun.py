"""segc.ortrun: onnxruntime sessions for verification, counted, with vendor ops lowered."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from segc.ortrun import (
    SESSION_STATS,
    SessionConfig,
    make_session,
    run_model,
    run_pair,
    run_session,
    runnable,
    session_options,
)


def affine() -> onnx.ModelProto:
    a = numpy_helper.from_array(np.array([2.0, -1.0, 0.5], np.float32), "a")
    b = numpy_helper.from_array(np.array([1.0, 0.0, -3.0], np.float32), "b")
    g = helper.make_graph([helper.make_node("Mul", ["x", "a"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"]),
                           helper.make_node("Relu", ["y"], ["r"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
                           helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 3])], [a, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_run_model_computes_the_graph() -> None:
    x = np.array([[1, 2, 3], [-1, -2, -3]], np.float32)
    out = run_model(affine(), {"x": x})
    np.testing.assert_allclose(out["y"], x * [2.0, -1.0, 0.5] + [1.0, 0.0, -3.0])
    np.testing.assert_allclose(out["r"], np.maximum(out["y"], 0))
    assert list(out) == ["y", "r"]


def test_sessions_and_runs_are_counted_and_outputs_can_be_chosen() -> None:
    SESSION_STATS.reset()
    sess = make_session(affine())
    x = np.ones((2, 3), np.float32)
    assert list(run_session(sess, {"x": x}, ["r"])) == ["r"]
    run_session(sess, {"x": x})
    assert (SESSION_STATS.sessions, SESSION_STATS.runs) == (1, 2)
    SESSION_STATS.reset()
    assert (SESSION_STATS.sessions, SESSION_STATS.runs) == (0, 0)


def test_session_options_follow_the_config() -> None:
    opts = session_options(SessionConfig(intra_op_threads=1, optimization="disable"))
    assert opts.intra_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert session_options(SessionConfig()).graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert SessionConfig().to_dict()["provider"] == "CPUExecutionProvider"


def test_a_model_holding_its_weights_runs_from_bytes() -> None:
    run = runnable(affine())
    assert run.data_folder is None and onnx.load_from_string(run.model_bytes).graph.node[0].op_type == "Mul"


def test_a_session_does_not_keep_the_serialised_model() -> None:
    """onnxruntime's Python session keeps the bytes it was built from (a second copy of every
    weight during every run); segc's sessions drop them and still run."""
    sess = make_session(affine())
    assert getattr(sess, "_model_bytes", None) is None
    out = run_session(sess, {"x": np.ones([2, 3], np.float32)})
    np.testing.assert_allclose(out["y"], np.tile([3.0, -1.0, -2.5], (2, 1)))


def test_owned_outputs_do_not_hold_the_session() -> None:
    """onnxruntime's arrays are views of its buffers (they keep the session's arena alive after
    the session: 1.5 GiB behind a 19 MB output of hrnet_w48_ocr); ``own=True`` copies them."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    session = make_session(affine())
    views = run_session(session, {"x": x})
    owned = run_session(session, {"x": x}, own=True)
    assert not views["y"].flags["OWNDATA"]  # what the copy is for; if onnxruntime changes, the copy is moot
    assert all(v.flags["OWNDATA"] for v in owned.values())
    np.testing.assert_array_equal(owned["r"], views["r"])


def test_sessions_do_not_spin_and_may_go_without_an_arena() -> None:
    opts = session_options(SessionConfig(arena=False))
    assert opts.enable_cpu_mem_arena is False
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(SessionConfig(spinning=True)).get_session_config_entry(
        "session.intra_op.allow_spinning") == "1"
    assert SessionConfig().to_dict()["spinning"] is False


def test_verification_sessions_go_without_an_arena() -> None:
    """The arena's chunks outlast the tensors they held (hrnet_w48_ocr's --verify each: 2.23 ->
    1.78 GiB without it); ``segc evaluate``, one session over many images, asks for one."""
    assert SessionConfig().arena is False and session_options(SessionConfig()).enable_cpu_mem_arena is False
    assert SessionConfig(arena=True).to_dict()["arena"] is True


def test_run_pair_runs_both_and_waits_for_the_first_when_the_second_fails() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    first, second = make_session(affine()), make_session(affine())
    a, b = run_pair((first, {"x": x}, ["y"]), (second, {"x": -x}, ["r"]))
    np.testing.assert_allclose(a["y"], x * [2.0, -1.0, 0.5] + [1.0, 0.0, -3.0])
    np.testing.assert_allclose(b["r"], np.maximum(-x * [2.0, -1.0, 0.5] + [1.0, 0.0, -3.0], 0))
    runs = SESSION_STATS.runs
    with pytest.raises(Exception, match="x"):  # a missing feed: onnxruntime refuses the second run
        run_pair((first, {"x": x}, ["y"]), (second, {}, ["y"]))
    assert SESSION_STATS.runs == runs + 1  # the first ran to its end before the error came back


def test_run_pair_runs_in_turn_on_one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    import segc.ortrun as ortrun

    monkeypatch.setattr(ortrun.os, "cpu_count", lambda: 1)
    monkeypatch.setattr(ortrun, "_helper", lambda: pytest.fail("no helper thread on one core"))
    x = np.ones((2, 3), np.float32)
    a, b = run_pair((make_session(affine()), {"x": x}, ["y"]), (make_session(affine()), {"x": x}, ["y"]))
    np.testing.assert_array_equal(a["y"], b["y"])


def test_run_pair_in_a_forked_child() -> None:
    """A child forked after the helper thread started gets a helper of its own (the parent's
    thread is not in the child: work queued for it would never run)."""
    import multiprocessing

    x = np.ones((2, 3), np.float32)
    run_pair((make_session(affine()), {"x": x}, ["y"]), (make_session(affine()), {"x": x}, ["y"]))  # helper started

    def child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
        a, b = run_pair((make_session(affine()), {"x": x}, ["y"]), (make_session(affine()), {"x": x}, ["y"]))
        queue.put(float(a["y"].sum() + b["y"].sum()))

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(queue,))
    proc.start()
    proc.join(timeout=60)
    alive = proc.is_alive()
    if alive:
        proc.kill()
    assert not alive and proc.exitcode == 0
    assert queue.get(timeout=5) == pytest.approx(2 * float((x * [2.0, -1.0, 0.5] + [1.0, 0.0, -3.0]).sum()))
