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


def test_nan_where_the_candidate_has_a_number_fails_with_a_count() -> None:
    ref = np.array([1.0, np.nan, 3.0], np.float32)
    m = compare_output("y", "f", ref, np.array([1.0, 2.0, 3.0], np.float32))
    assert m.ref_nonfinite == 1 and m.nonfinite_mismatch == 1
    v = judge(Contract.EXACT, [m], Tolerances())
    assert not v.ok and "1 positions where NaN/Inf differ" in v.reasons[0]


def test_one_nan_in_192_does_not_hide_a_candidate_500x_larger() -> None:
    """The NaN used to switch the whole comparison off."""
    ref = rng.standard_normal(192).astype(np.float32)
    ref[7] = np.nan
    m = compare_output("y", "f", ref, ref * 500)  # NaN * 500 is NaN: same positions
    assert m.nonfinite_mismatch == 0 and m.compared == 191
    for contract in (Contract.EXACT, Contract.TARGET_ONLY):
        v = judge(contract, [m], Tolerances())
        assert not v.ok and "max abs error" in v.reasons[0]
    same = judge(Contract.EXACT, [compare_output("y", "f", ref, ref.copy())], Tolerances())
    assert same.ok and same.status == "ok" and "NaN/Inf" in same.warnings[0]


def test_inf_signs_must_match() -> None:
    ref = np.array([1.0, np.inf, -2.0, 5.0], np.float32)
    assert not judge(Contract.EXACT, [compare_output("y", "f", ref, np.array([1.0, -np.inf, -2.0, 5.0], np.float32))],
                     Tolerances()).ok
    assert judge(Contract.EXACT, [compare_output("y", "f", ref, ref.copy())], Tolerances()).ok


def test_all_nan_reference_compares_nothing_and_fails() -> None:
    ref = np.full((1, 3, 8), np.nan, np.float32)
    v = judge(Contract.EXACT, [compare_output("y", "f", ref, ref.copy())], Tolerances())
    assert not v.ok and "nothing compared" in v.reasons[0]


def test_no_metrics_at_all_fails() -> None:
    v = judge(Contract.EXACT, [], Tolerances())
    assert not v.ok and "nothing was compared" in v.reasons[0]


def test_dtype_change_fails() -> None:
    x = np.arange(6, dtype=np.float32)
    v = judge(Contract.APPROXIMATE, [compare_output("y", "f", x, x.astype(np.float16))], Tolerances())
    assert not v.ok and "element type float16" in v.reasons[0]


def test_no_signal_is_unverified_and_signal_is_ok() -> None:
    """Both sides of ``no_signal``: all within atol of zero, constant to the tolerance, and real spread."""
    tiny = (rng.random(4096) * 8e-6).astype(np.float32)  # PP-OCRv4 on noise: every value below 1e-5
    v = judge(Contract.EXACT, [compare_output("y", "f", tiny, tiny * 0.5)], Tolerances())
    assert v.ok and v.status == "unverified" and "within" in v.unverified[0]
    flat = np.full(64, 0.5, np.float32) + (rng.random(64) * 1e-5).astype(np.float32)  # a saturated sigmoid
    v = judge(Contract.EXACT, [compare_output("y", "f", flat, flat)], Tolerances())
    assert v.status == "unverified" and "constant" in v.unverified[0]
    # just above the bound: the midpoint candidate would fail, so there is signal
    edge = np.array([0.0, 2 * (1e-5 + 1e-4 * 3e-5) * 1.01 + 0.0, 3e-5], np.float64).astype(np.float32)
    assert judge(Contract.EXACT, [compare_output("y", "f", edge, edge)], Tolerances()).status == "ok"
    logits = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    assert judge(Contract.EXACT, [compare_output("y", "f", logits, logits)], Tolerances()).status == "ok"
    labels = np.zeros((1, 8, 8), np.int64)
    assert judge(Contract.EXACT, [compare_output("l", "f", labels, labels)], Tolerances()).status == "unverified"
    labels[0, 0, 0] = 1
    assert judge(Contract.EXACT, [compare_output("l", "f", labels, labels)], Tolerances()).status == "ok"


def test_one_input_with_signal_is_enough() -> None:
    quiet = np.zeros(16, np.float32)
    loud = rng.standard_normal(16).astype(np.float32)
    ms = [compare_output("y", "a", quiet, quiet), compare_output("y", "b", loud, loud)]
    assert judge(Contract.EXACT, ms, Tolerances()).status == "ok"


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


@pytest.mark.parametrize("bad", ["rtol=nan", "atol=inf", "rtol=-1e-3", "atol=-1", "cosine=1.5", "agreement=-0.1",
                                 "exact_agreement=nan", "cosine=nan"])
def test_tolerances_are_validated(bad: str) -> None:
    """``rtol=nan`` made every ``max_abs > allowed`` False, so anything passed."""
    with pytest.raises(SegcError, match="--tolerance"):
        Tolerances.parse([bad])
