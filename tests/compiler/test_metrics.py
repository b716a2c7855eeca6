"""Metrics and each contract's judgement."""

from __future__ import annotations

import numpy as np
import pytest

from segc.errors import SegcError
from segc.metrics import Tolerances, compare_output, judge
from segc.passbase import Contract

rng = np.random.default_rng(0)


def test_identical_outputs() -> None:
    x = rng.standard_normal((1, 19, 8, 8)).astype(np.float32)
    m = compare_output("y", "f", x, x.copy())
    assert m.max_abs == 0 and m.max_rel == 0 and m.cosine == pytest.approx(1.0) and m.agreement == 1.0


def test_max_abs_rel_and_cosine_values() -> None:
    ref = np.array([1.0, -2.0, 4.0], np.float32)
    cand = np.array([1.0, -2.0, 3.0], np.float32)
    m = compare_output("y", "f", ref, cand)
    assert m.max_abs == pytest.approx(1.0)
    assert m.max_rel == pytest.approx(0.25)  # relative to max|ref| = 4
    expected_cos = float(ref @ cand / (np.linalg.norm(ref) * np.linalg.norm(cand)))
    assert m.cosine == pytest.approx(expected_cos)
    assert m.agreement is None  # 1-D: no class axis


def test_label_agreement_for_logits_and_label_maps() -> None:
    logits = rng.standard_normal((1, 5, 4, 4)).astype(np.float32)
    other = logits.copy()
    other[0, :, 0, 0] = -logits[0, :, 0, 0]  # flip the argmax of one pixel of 16
    m = compare_output("y", "f", logits, other)
    assert m.agreement == pytest.approx(15 / 16)
    labels = np.argmax(logits, axis=1).astype(np.int64)
    changed = labels.copy()
    changed[0, 0, :2] = 99
    m2 = compare_output("lab", "f", labels, changed)
    assert m2.agreement == pytest.approx(14 / 16)


def test_nan_in_reference_is_reported_not_compared() -> None:
    ref = np.array([1.0, np.nan, 3.0], np.float32)
    m = compare_output("y", "f", ref, np.array([1.0, 2.0, 3.0], np.float32))
    assert m.ref_nonfinite == 1 and m.max_abs is None
    v = judge(Contract.EXACT, [m], Tolerances())
    assert v.ok and any("NaN/Inf" in w for w in v.warnings)


def test_nan_in_candidate_fails() -> None:
    m = compare_output("y", "f", np.ones(3, np.float32), np.array([1, np.inf, 1], np.float32))
    v = judge(Contract.EXACT, [m], Tolerances())
    assert not v.ok and "NaN/Inf" in v.reasons[0]


def test_shape_mismatch_fails_every_contract() -> None:
    m = compare_output("y", "f", np.ones((2, 3), np.float32), np.ones((3, 2), np.float32))
    for contract in Contract:
        assert not judge(contract, [m], Tolerances()).ok


def test_exact_tolerance_scales_with_magnitude() -> None:
    big = np.full(10, 1000.0, np.float32)
    assert judge(Contract.EXACT, [compare_output("y", "f", big, big + 0.05)], Tolerances()).ok  # 5e-5 relative
    assert not judge(Contract.EXACT, [compare_output("y", "f", big, big + 0.5)], Tolerances()).ok  # 5e-4 relative
    small = np.full(10, 1e-3, np.float32)
    assert judge(Contract.EXACT, [compare_output("y", "f", small, small + 5e-6)], Tolerances()).ok  # under atol


def test_exact_label_maps_need_near_total_agreement() -> None:
    ref = np.zeros((1, 1, 100, 100), np.int64)
    cand = ref.copy()
    cand[0, 0, 0, :5] = 1  # 5 of 10000 differ: 0.9995
    assert judge(Contract.EXACT, [compare_output("y", "f", ref, cand)], Tolerances()).ok
    cand[0, 0, 1, :] = 1
    assert not judge(Contract.EXACT, [compare_output("y", "f", ref, cand)], Tolerances()).ok


def test_approximate_budget() -> None:
    logits = rng.standard_normal((1, 19, 16, 16)).astype(np.float32)
    noisy = logits + 0.005 * rng.standard_normal(logits.shape).astype(np.float32)
    m = compare_output("y", "f", logits, noisy)
    assert not judge(Contract.EXACT, [m], Tolerances()).ok
    assert judge(Contract.APPROXIMATE, [m], Tolerances()).ok
    strict = Tolerances.parse(["cosine=0.99999"])
    v = judge(Contract.APPROXIMATE, [m], strict)
    assert not v.ok and "cosine" in v.reasons[0]


def test_tolerance_parsing() -> None:
    t = Tolerances.parse(["rtol=1e-3,agreement=0.9", "cosine=0.5"])
    assert (t.rtol, t.agreement, t.cosine) == (1e-3, 0.9, 0.5)
    for bad in ["nonsense=1", "rtol", "rtol=abc"]:
        with pytest.raises(SegcError, match="malformed --tolerance"):
            Tolerances.parse([bad])
