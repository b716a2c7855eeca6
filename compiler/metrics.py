"""Comparing two runs of a model, and judging the comparison by a pass's contract.

Metrics are per output: max absolute error, max error relative to the output's magnitude
(``max|ref - cand| / max|ref|``, so a logit map in the hundreds is judged like one near 1),
cosine similarity, and for class logits or label maps the argmax label agreement. A
reference holding NaN or Inf is reported and not compared: random inputs can push a model
into overflow, and a comparison against garbage would pass or fail by accident.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from segc.errors import SegcError
from segc.passbase import Contract

MAX_CLASSES = 1024  # a float output with 1 < C <= this on axis 1 is treated as class scores


@dataclass
class Tolerances:
    """Judgement thresholds; every one can be overridden with ``--tolerance KEY=VALUE``."""

    rtol: float = 1e-4  # exact: max error allowed, relative to max|reference|
    atol: float = 1e-5  # exact: absolute floor, for outputs that are all near zero
    exact_agreement: float = 0.999  # exact: label maps may flip only at float-noise ties
    cosine: float = 0.99  # approximate: minimum cosine similarity
    agreement: float = 0.98  # approximate: minimum argmax label agreement
    user_set: set[str] = field(default_factory=set, compare=False, repr=False)  # keys from --tolerance

    def relaxed(self, defaults: dict[str, float], keep: set[str]) -> "Tolerances":
        """These tolerances with a pass's own defaults applied, except the keys in ``keep``.

        A pass whose rewrite reorders float arithmetic through many layers (a deformable conv
        decomposed into GridSample + Conv) adds more rounding noise than a fold does; it may
        say so, and the user's explicit ``--tolerance`` still wins.
        """
        changes = {k: v for k, v in defaults.items() if k not in keep and hasattr(self, k)}
        return replace(self, **changes) if changes else self

    @classmethod
    def parse(cls, items: list[str]) -> "Tolerances":
        """Build from ``["rtol=1e-3", "cosine=0.995"]``; unknown keys are a usage error."""
        values: dict[str, float] = {}
        known = {f.name for f in fields(cls)}
        for item in items:
            for part in item.split(","):
                if not part.strip():
                    continue
                key, sep, value = part.partition("=")
                key = key.strip()
                if not sep or key not in known:
                    raise SegcError(f"malformed --tolerance {part!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
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
    dtype: str
    max_abs: float | None = None
    max_rel: float | None = None
    ref_scale: float | None = None  # max|reference|, what exact tolerances scale with
    cosine: float | None = None
    agreement: float | None = None
    ref_nonfinite: int = 0
    cand_nonfinite: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def comparable(self) -> bool:
        return self.shape == self.ref_shape and self.ref_nonfinite == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _has_class_axis(ref: np.ndarray) -> bool:
    return ref.ndim >= 3 and np.issubdtype(ref.dtype, np.floating) and 1 < ref.shape[1] <= MAX_CLASSES


def compare_output(name: str, feed: str, ref: np.ndarray, cand: np.ndarray) -> OutputMetrics:
    """All metrics for one output; shape mismatch and non-finite references are noted, not compared."""
    m = OutputMetrics(output=name, feed=feed, shape=list(cand.shape), ref_shape=list(ref.shape), dtype=str(ref.dtype))
    if ref.dtype.kind in "fc":
        m.ref_nonfinite = int(np.size(ref) - np.count_nonzero(np.isfinite(ref)))
    if cand.dtype.kind in "fc":
        m.cand_nonfinite = int(np.size(cand) - np.count_nonzero(np.isfinite(cand)))
    if m.shape != m.ref_shape:
        m.notes.append(f"shape {m.shape} differs from the reference {m.ref_shape}")
        return m
    if m.ref_nonfinite:
        m.notes.append(f"reference has {m.ref_nonfinite} NaN/Inf values: not compared")
        return m
    if ref.dtype.kind in "iub":
        m.agreement = float(np.mean(ref == cand)) if ref.size else 1.0
        m.max_abs = float(np.max(np.abs(ref.astype(np.int64) - cand.astype(np.int64)))) if ref.size else 0.0
        return m
    r = ref.astype(np.float64).ravel()
    c = cand.astype(np.float64).ravel()
    if m.cand_nonfinite:
        m.notes.append(f"candidate has {m.cand_nonfinite} NaN/Inf values where the reference has none")
        m.max_abs = float("inf")
        m.max_rel = float("inf")
        m.cosine = 0.0
        return m
    diff = np.abs(r - c)
    m.max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(r).max()) if r.size else 0.0
    m.ref_scale = scale
    m.max_rel = m.max_abs / scale if scale > 0 else (0.0 if m.max_abs == 0 else float("inf"))
    m.cosine = _cosine(r, c)
    if _has_class_axis(ref):
        m.agreement = float(np.mean(np.argmax(ref, axis=1) == np.argmax(cand, axis=1)))
    return m


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


@dataclass
class Verdict:
    """The judgement of one verification step."""

    ok: bool
    contract: str
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metrics: list[OutputMetrics] = field(default_factory=list)

    def summary(self) -> dict[str, float | None]:
        """Worst figures over all outputs and inputs (what the tables show)."""

        def worst(attr: str, fn) -> float | None:
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
            "contract": self.contract,
            "reasons": self.reasons,
            "warnings": self.warnings,
            "summary": self.summary(),
            "metrics": [m.to_dict() for m in self.metrics],
        }


def judge(contract: Contract, metrics: list[OutputMetrics], tol: Tolerances) -> Verdict:
    """Apply the contract's rule to every output metric.

    exact / outputs / target-only: every float output within ``atol + rtol * max|ref|``
    (that is ``max_rel <= rtol`` with an absolute floor) and label maps agreeing to
    ``exact_agreement``. approximate: cosine and label agreement within the budget.
    """
    verdict = Verdict(ok=True, contract=contract.value, metrics=metrics)
    if not metrics:
        verdict.warnings.append("no output could be compared")
    for m in metrics:
        where = f"{m.output} ({m.feed})"
        if m.shape != m.ref_shape:
            verdict.reasons.append(f"{where}: shape {m.shape} != reference {m.ref_shape}")
            continue
        if m.ref_nonfinite:
            verdict.warnings.append(f"{where}: reference has {m.ref_nonfinite} NaN/Inf values, not compared")
            continue
        if m.cand_nonfinite:
            verdict.reasons.append(f"{where}: {m.cand_nonfinite} NaN/Inf values where the reference has none")
            continue
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
                f"{where}: max abs error {m.max_abs:.3g} > {allowed:.3g} (rtol {tol.rtol} of max|ref| {scale:.3g} + atol {tol.atol})"
            )
    verdict.ok = not verdict.reasons
    return verdict
