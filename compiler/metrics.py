"""Comparing two runs of a model, and judging the comparison by a pass's contract.

Metrics are per output: max absolute error, max error relative to the output's magnitude
(``max|ref - cand| / max|ref|``, so a logit map in the hundreds is judged like one near 1),
cosine similarity, and for class logits or label maps the argmax label agreement.

Non-finite values are compared where they are: NaN, +Inf and -Inf must sit at the same
positions in both runs (else the check fails with a count), and the metrics are taken over
the positions finite in both. A comparison that compared nothing (every reference value
non-finite, an empty output, no output at all) fails: "equivalent" must mean something was
found equal.

A check is *unverified* when the reference carries no signal (see ``no_signal``): with the
default tolerances an output whose values all lie within ``atol`` of one another passes
against a constant candidate, so passing it says nothing about the pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable

import numpy as np

from segc.errors import SegcError
from segc.passbase import Contract

MAX_CLASSES = 1024  # a float output with 1 < C <= this on axis 1 is treated as class scores


_UNIT_INTERVAL = frozenset({"exact_agreement", "cosine", "agreement"})  # similarity budgets


@dataclass
class Tolerances:
    """Judgement thresholds; every one can be overridden with ``--tolerance KEY=VALUE``."""

    rtol: float = 1e-4  # exact: max error allowed, relative to max|reference|
    atol: float = 1e-5  # exact: absolute floor, for outputs that are all near zero
    exact_agreement: float = 0.999  # exact: label maps may flip only at float-noise ties
    cosine: float = 0.99  # approximate: minimum cosine similarity
    agreement: float = 0.98  # approximate: minimum argmax label agreement
    user_set: set[str] = field(default_factory=set, compare=False, repr=False)  # keys from --tolerance

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse thresholds that make every comparison pass or none: NaN (``x > nan`` is always
        False, so ``rtol=nan`` would accept anything), infinities, negative error bounds, and
        similarity budgets outside [0, 1]."""
        for f in fields(self):
            if f.name == "user_set":
                continue
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SegcError(f"--tolerance {f.name}={value}: must be a finite number")
            if f.name in _UNIT_INTERVAL and not 0.0 <= value <= 1.0:
                raise SegcError(f"--tolerance {f.name}={value}: must be between 0 and 1")
            if f.name not in _UNIT_INTERVAL and value < 0:
                raise SegcError(f"--tolerance {f.name}={value}: must be >= 0")

    def relaxed(self, defaults: dict[str, float], keep: set[str]) -> "Tolerances":
        """These tolerances with a pass's own defaults applied, except the keys in ``keep``.

        A pass whose rewrite reorders float arithmetic through many layers (a deformable conv
        decomposed into GridSample + Conv) adds more rounding noise than a fold does; it may
        say so, and the user's explicit ``--tolerance`` still wins.
        """
        changes: dict[str, Any] = {k: v for k, v in defaults.items() if k not in keep and hasattr(self, k)}
        return replace(self, **changes) if changes else self

    @classmethod
    def parse(cls, items: list[str]) -> "Tolerances":
        """Build from ``["rtol=1e-3", "cosine=0.995"]``; unknown keys are a usage error."""
        values: dict[str, Any] = {}
        known = {f.name for f in fields(cls) if f.name != "user_set"}
        for item in items:
            for part in item.split(","):
                if not part.strip():
                    continue
                key, sep, value = part.partition("=")
                key = key.strip()
                if not sep or key not in known:
                    raise SegcError(
                        f"malformed --tolerance {part!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}"
                    )
                try:
                    values[key] = float(value)
                except ValueError:
                    raise SegcError(f"malformed --tolerance {part!r}: {value!r} is not a number") from None
        tol = cls(**values)
        tol.user_set = set(values)
        return tol

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "user_set"}


@dataclass
class OutputMetrics:
    """How one output of the candidate compares with the reference, for one input."""

    output: str
    feed: str
    shape: list[int]
    ref_shape: list[int]
    dtype: str  # the reference's element type
    cand_dtype: str = ""
    max_abs: float | None = None
    max_rel: float | None = None
    ref_scale: float | None = None  # max|reference| over the finite values, what exact tolerances scale with
    ref_spread: float | None = None  # max - min of the finite reference values
    cosine: float | None = None
    agreement: float | None = None
    compared: int = 0  # values (label maps: pixels) actually compared
    ref_nonfinite: int = 0
    cand_nonfinite: int = 0
    nonfinite_mismatch: int = 0  # positions where NaN/+Inf/-Inf differ between the runs
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _has_class_axis(ref: np.ndarray) -> bool:
    return ref.ndim >= 3 and np.issubdtype(ref.dtype, np.floating) and 1 < ref.shape[1] <= MAX_CLASSES


def _nonfinite_kind(x: np.ndarray) -> np.ndarray:
    """0 finite, 1 NaN, 2 +Inf, 3 -Inf, per element."""
    kind = np.zeros(x.shape, np.int8)
    kind[np.isnan(x)] = 1
    kind[np.isposinf(x)] = 2
    kind[np.isneginf(x)] = 3
    return kind


def compare_output(name: str, feed: str, ref: np.ndarray, cand: np.ndarray) -> OutputMetrics:
    """All metrics for one output (see module docstring for non-finite values)."""
    m = OutputMetrics(output=name, feed=feed, shape=list(cand.shape), ref_shape=list(ref.shape), dtype=str(ref.dtype),
                      cand_dtype=str(cand.dtype))
    if m.shape != m.ref_shape:
        m.notes.append(f"shape {m.shape} differs from the reference {m.ref_shape}")
        return m
    if ref.dtype.kind in "iub" and cand.dtype.kind in "iub":
        m.compared = int(ref.size)
        if ref.size:
            m.agreement = float(np.mean(ref == cand))
            m.max_abs = float(np.max(np.abs(ref.astype(np.int64) - cand.astype(np.int64))))
            m.ref_spread = float(ref.max()) - float(ref.min())
        return m
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    rk, ck = _nonfinite_kind(r), _nonfinite_kind(c)
    m.ref_nonfinite = int(np.count_nonzero(rk))
    m.cand_nonfinite = int(np.count_nonzero(ck))
    m.nonfinite_mismatch = int(np.count_nonzero(rk != ck))
    if m.nonfinite_mismatch:
        m.notes.append(f"{m.nonfinite_mismatch} positions where NaN/Inf differ (reference has {m.ref_nonfinite}, "
                       f"candidate {m.cand_nonfinite})")
    both = (rk == 0) & (ck == 0)
    m.compared = int(np.count_nonzero(both))
    if m.ref_nonfinite and not m.nonfinite_mismatch:
        m.notes.append(f"{m.ref_nonfinite} NaN/Inf values in both runs at the same positions; "
                       f"{m.compared} finite values compared")
    if not m.compared:
        return m
    rf, cf = r[both], c[both]
    diff = np.abs(rf - cf)
    m.max_abs = float(diff.max())
    scale = float(np.abs(rf).max())
    m.ref_scale = scale
    m.ref_spread = float(rf.max() - rf.min())
    m.max_rel = m.max_abs / scale if scale > 0 else (0.0 if m.max_abs == 0 else float("inf"))
    m.cosine = _cosine(rf, cf)
    if _has_class_axis(ref):
        pixels = np.all(both, axis=1)  # a pixel is compared when all its class scores are finite in both
        if np.any(pixels):
            same = np.argmax(np.where(both, r, 0.0), axis=1) == np.argmax(np.where(both, c, 0.0), axis=1)
            m.agreement = float(np.mean(same[pixels]))
    return m


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def no_signal(m: OutputMetrics, tol: Tolerances) -> str | None:
    """Why the reference of this output carries no signal, or None when it does.

    An output carries no signal when a constant candidate would pass the exact check: its
    finite reference values lie within ``atol + rtol * max|ref|`` of their midpoint
    (``(max - min) / 2 <= atol + rtol * max|ref|``), or every one is within that bound of
    zero (``max|ref| <= atol + rtol * max|ref|``, so an all-zero candidate passes). A label
    map with one label everywhere has no signal either. A comparison of such an output says
    nothing about the pass: the real PP-OCRv4 detector on noise images puts every
    probability below 1e-5 and "passes" any change under the 1e-5 absolute floor.
    Nothing compared (``compared == 0``) is not "no signal": it fails (see ``judge``).
    """
    if not m.compared or m.ref_spread is None:
        return None
    if m.dtype[0] in "iub" and (m.cand_dtype or m.dtype)[0] in "iub":
        return "every reference value is the same label" if m.ref_spread == 0 else None
    scale = m.ref_scale or 0.0
    allowed = tol.atol + tol.rtol * scale
    if scale <= allowed:
        return f"every reference value is within {allowed:.3g} of zero (max|ref| {scale:.3g})"
    if m.ref_spread / 2 <= allowed:
        return f"the reference is constant to within {allowed:.3g} (spread {m.ref_spread:.3g})"
    return None


VERIFY_INPUTS_FIX = (
    "give inputs that carry signal with --verify-inputs (a folder of real images, or a .npz by input name)"
)


@dataclass
class Verdict:
    """The judgement of one verification step.

    ``status`` is ``failed`` when there are reasons, else ``unverified`` when the reference
    carried no signal for some output (``unverified`` lists why), else ``ok``. ``ok`` is
    "nothing failed": an unverified pass does not stop the pipeline, the report says so.
    """

    ok: bool
    contract: str
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metrics: list[OutputMetrics] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.reasons or not self.ok:
            return "failed"
        return "unverified" if self.unverified else "ok"

    def summary(self) -> dict[str, float | None]:
        """Worst figures over all outputs and inputs (what the tables show)."""

        def worst(attr: str, fn: Callable[[list[float]], float]) -> float | None:
            vals = [getattr(m, attr) for m in self.metrics if getattr(m, attr) is not None]
            return fn(vals) if vals else None

        return {
            "max_abs": worst("max_abs", max),
            "max_rel": worst("max_rel", max),
            "cosine": worst("cosine", min),
            "agreement": worst("agreement", min),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "status": self.status,
            "contract": self.contract,
            "reasons": self.reasons,
            "unverified": self.unverified,
            "fix": VERIFY_INPUTS_FIX if self.unverified else None,
            "warnings": self.warnings,
            "summary": self.summary(),
            "metrics": [m.to_dict() for m in self.metrics],
        }


def judge(contract: Contract, metrics: list[OutputMetrics], tol: Tolerances) -> Verdict:
    """Apply the contract's rule to every output metric.

    exact / outputs / target-only: every float output within ``atol + rtol * max|ref|``
    (that is ``max_rel <= rtol`` with an absolute floor) and label maps agreeing to
    ``exact_agreement``. approximate: cosine and label agreement within the budget. Every
    contract: same shape and element type, NaN/Inf at the same positions, something compared.
    An output whose reference has no signal on every input makes the verdict unverified.
    """
    verdict = Verdict(ok=True, contract=contract.value, metrics=metrics)
    if not metrics:
        verdict.reasons.append("nothing was compared: no output ran on any input in both graphs")
    silent: dict[str, list[str | None]] = {}  # output -> per input: why it had no signal, or None
    for m in metrics:
        where = f"{m.output} ({m.feed})"
        if m.shape != m.ref_shape:
            verdict.reasons.append(f"{where}: shape {m.shape} != reference {m.ref_shape}")
            continue
        if m.cand_dtype and m.cand_dtype != m.dtype:
            verdict.reasons.append(f"{where}: element type {m.cand_dtype} != reference {m.dtype}")
            continue
        if m.nonfinite_mismatch:
            verdict.reasons.append(f"{where}: {m.nonfinite_mismatch} positions where NaN/Inf differ "
                                   f"(reference has {m.ref_nonfinite}, candidate {m.cand_nonfinite})")
            continue
        if not m.compared:
            what = f"all {m.ref_nonfinite} reference values are NaN/Inf" if m.ref_nonfinite else "the output is empty"
            verdict.reasons.append(f"{where}: nothing compared, {what}")
            continue
        if m.ref_nonfinite:
            verdict.warnings.append(f"{where}: {m.ref_nonfinite} NaN/Inf values at the same positions in both runs")
        silent.setdefault(m.output, []).append(no_signal(m, tol))
        if contract is Contract.APPROXIMATE:
            if m.cosine is not None and m.cosine < tol.cosine:
                verdict.reasons.append(f"{where}: cosine {m.cosine:.6f} < budget {tol.cosine}")
            if m.agreement is not None and m.agreement < tol.agreement:
                verdict.reasons.append(f"{where}: label agreement {m.agreement:.6f} < budget {tol.agreement}")
            continue
        if m.dtype[0] in "iub" or m.max_rel is None:
            if m.agreement is not None and m.agreement < tol.exact_agreement:
                verdict.reasons.append(f"{where}: label agreement {m.agreement:.6f} < {tol.exact_agreement}")
            continue
        scale = m.ref_scale or 0.0
        allowed = tol.atol + tol.rtol * scale
        if m.max_abs is not None and m.max_abs > allowed:
            verdict.reasons.append(
                f"{where}: max abs error {m.max_abs:.3g} > {allowed:.3g} (rtol {tol.rtol} of max|ref| {scale:.3g} + "
                f"atol {tol.atol})"
            )
    for output, why in silent.items():
        if why and all(why):  # no input gave this output any signal
            verdict.unverified.append(f"{output}: the reference carries no signal on any input: {why[0]}")
    verdict.ok = not verdict.reasons
    return verdict
