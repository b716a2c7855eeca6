"""The ONNX project's own Resize and DeformConv node tests, through every EXACT pass.

Each case is a one-node model plus inputs and the outputs of ONNX's reference
implementation. Older onnx wheels ship them as ``onnx/backend/test/data/node/test_resize_*/``
(``model.onnx`` + ``test_data_set_0/*.pb``); newer wheels (onnx 1.23 here) ship only the
generators in ``onnx.backend.test.case.node`` that write those files. Both are read: the
files where present, else the generators (the same cases, computed on import).

Each case also runs "frozen": every input but the data made a constant, as in an exported
model (that is where the passes find something to rewrite). For every case the unmodified
model runs in onnxruntime first; a case onnxruntime cannot run,
or gets wrong against the reference, is skipped with the reason. Then every registered EXACT
pass (default options; SegcError = needs options, skipped) is applied and the result must
still match the reference outputs and onnxruntime's own pre-pass outputs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from segc.errors import SegcError
from segc.ortrun import run_model
from segc.passbase import Contract, PassContext, all_passes

PREFIXES = ("test_resize_", "test_deform_conv", "test_basic_deform_conv")
GENERATOR_MODULES = ("resize", "deformconv")


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    rtol: float = 1e-3
    atol: float = 1e-7


def _feed_names(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _from_files(root: Path) -> list[Case]:
    cases = []
    for case_dir in sorted(p for p in root.iterdir() if p.name.startswith(PREFIXES)):
        data = case_dir / "test_data_set_0"
        if not (case_dir / "model.onnx").exists() or not data.is_dir():
            continue
        model = onnx.load(str(case_dir / "model.onnx"))
        read = lambda f: numpy_helper.to_array(onnx.load_tensor(str(f)))  # noqa: E731
        ins = [read(f) for f in sorted(data.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))]
        outs = [read(f) for f in sorted(data.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))]
        cases.append(Case(case_dir.name, model, dict(zip(_feed_names(model), ins, strict=False)),
                          dict(zip([o.name for o in model.graph.output], outs, strict=False))))
    return cases


def _from_generators() -> list[Case]:
    import onnx.backend.test.case.node as node_cases

    node_cases._TargetOpType = None  # collect every op of the modules imported below
    for mod in GENERATOR_MODULES:
        importlib.import_module(f"onnx.backend.test.case.node.{mod}")
    seen: dict[str, Case] = {}
    for tc in node_cases._NodeTestCases:
        if tc.name.startswith(PREFIXES) and tc.name not in seen and tc.data_sets:
            ins, outs = tc.data_sets[0]
            seen[tc.name] = Case(tc.name, tc.model, dict(zip(_feed_names(tc.model), ins, strict=False)),
                                 dict(zip([o.name for o in tc.model.graph.output], outs, strict=False)),
                                 rtol=tc.rtol or 1e-3, atol=tc.atol or 1e-7)
    return list(seen.values())


def load_cases() -> list[Case]:
    root = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    cases = _from_files(root) if root.is_dir() else []
    return cases or _from_generators()


def frozen(case: Case) -> Case:
    """The case with every input but the first (scales, sizes, roi, weights, offsets) made an
    initializer: the form exported models have, and what the passes actually rewrite."""
    first = _feed_names(case.model)[0]
    model = onnx.ModelProto.FromString(case.model.SerializeToString())
    for name, value in case.inputs.items():
        if name != first:
            model.graph.initializer.append(numpy_helper.from_array(value, name))
    keep = [i for i in model.graph.input if i.name == first]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return Case(case.name + "_frozen", model, {first: case.inputs[first]}, case.outputs, case.rtol, case.atol)


CASES = load_cases()
CASES = CASES + [frozen(c) for c in CASES]


def exact_passes() -> dict[str, type]:
    return {name: cls for name, cls in all_passes().items() if cls.contract is Contract.EXACT}


def test_cases_were_found() -> None:
    names = [c.name for c in CASES]
    assert sum(n.startswith("test_resize_") for n in names) >= 20
    assert any("deform_conv" in n for n in names)


def _matches(expected: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> bool:
    return expected.shape == got.shape and bool(np.allclose(got, expected, rtol=rtol, atol=atol))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_exact_passes_on_onnx_node_case(case: Case) -> None:
    try:
        before = run_model(case.model, case.inputs)
    except Exception as err:  # noqa: BLE001 - any runtime refusal is a reason to skip, recorded
        pytest.skip(f"onnxruntime cannot run the unmodified case: {str(err).splitlines()[0][:160]}")
    for name, want in case.outputs.items():
        if not _matches(want, before[name], case.rtol, case.atol):
            pytest.skip(f"onnxruntime disagrees with ONNX's reference on {name} before any pass")
    ran = 0
    for pass_name, cls in exact_passes().items():
        try:
            out, result = cls().apply(case.model, PassContext())
        except SegcError:
            continue  # the pass needs options a generic test cannot guess
        ran += 1
        if not result.changed:
            continue
        after = run_model(out, case.inputs)
        for name, want in case.outputs.items():
            assert name in after, f"{pass_name} lost output {name}"
            assert _matches(want, after[name], case.rtol, case.atol), (
                f"{pass_name} broke {case.name}: {name} differs from the reference"
            )
            scale = max(float(np.abs(before[name]).max()), 1e-6) if before[name].size else 1.0
            assert np.all(np.abs(after[name] - before[name]) <= 1e-4 * scale), (
                f"{pass_name} changed {case.name}'s {name}"
            )
    assert ran >= 2  # at least fold_resize_scales and set_shape_range (no options: a no-op)
