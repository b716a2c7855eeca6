"""Exact arithmetic over tensor sizes: the algebra under ``segc.passes._shape_expr``.

``Poly``
    a polynomial with rational (``Fraction``) coefficients over *atoms*. An atom is either a
    dimension symbol (``input_height``) or ``floor(p)`` of a polynomial ``p`` that is not
    integer-valued (Conv output sizes, ``floor(H * 1.5)``). ``floor`` normalises: integer parts
    of coefficients are pulled out, so ``floor(3/2*H) == H + floor(1/2*H)`` compare equal.
    Nothing is ever rounded: two sizes are "equal" only when their polynomials are.
``SymValue``
    the value of a scalar or 1-D tensor of at most ``MAX_VALUE_ELEMS`` elements (shape
    arithmetic), one ``Poly`` per element, or ``None`` where an element is unknown. Float
    elements are kept only while the float32/float64 arithmetic that produced them is provably
    exact (the true result is representable), so "constant in exact arithmetic" really means
    "the same float at runtime". Integer-valued results are assumed representable, which holds
    for sizes below 2**24; dyadic linear ones (``3/2*H``) for sizes below ``SIZE_BOUND``.
``arith`` / ``cast_value``
    one element of ONNX Add/Sub/Mul/Div/Max/Min/Equal and Cast under those rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping

import numpy as np

MAX_VALUE_ELEMS = 64
"""Tensors with more elements are never shape arithmetic; only their shape is tracked."""

Env = Mapping[str, int]


# --------------------------------------------------------------------------------------------
# Exact polynomials over size symbols
# --------------------------------------------------------------------------------------------


class Atom:
    """A dimension symbol, or ``floor(arg)`` of a polynomial that is not integer-valued."""

    __slots__ = ("key", "arg")

    def __init__(self, key: str, arg: "Poly | None" = None) -> None:
        self.key = key
        self.arg = arg

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Atom) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return self.key

    def evaluate(self, env: Env) -> Fraction | None:
        if self.arg is None:
            v = env.get(self.key)
            return None if v is None else Fraction(v)
        inner = self.arg.evaluate(env)
        return None if inner is None else Fraction(math.floor(inner))

    def is_nonneg(self) -> bool:
        # symbols stand for sizes, which are never negative
        return True if self.arg is None else self.arg.is_nonneg()

    def symbols(self) -> set[str]:
        return {self.key} if self.arg is None else self.arg.symbols()


Monomial = tuple[tuple[Atom, int], ...]  # sorted by atom key; () is the constant term


def _mono_mul(a: Monomial, b: Monomial) -> Monomial:
    powers: dict[Atom, int] = {}
    for atom, p in a + b:
        powers[atom] = powers.get(atom, 0) + p
    return tuple(sorted(powers.items(), key=lambda kv: kv[0].key))


def _mono_div(a: Monomial, b: Monomial) -> Monomial | None:
    powers = dict(a)
    for atom, p in b:
        have = powers.get(atom, 0)
        if have < p:
            return None
        if have == p:
            del powers[atom]
        else:
            powers[atom] = have - p
    return tuple(sorted(powers.items(), key=lambda kv: kv[0].key))


def _mono_str(m: Monomial) -> str:
    return "*".join(atom.key if p == 1 else f"{atom.key}^{p}" for atom, p in m)


class Poly:
    """An exact polynomial with rational coefficients over ``Atom``s (immutable)."""

    __slots__ = ("terms", "_hash")

    def __init__(self, terms: Mapping[Monomial, Fraction] | None = None) -> None:
        # a coefficient that is already a Fraction is kept, not copied: Fraction() is ~1 us of
        # pure Python and a shape analysis builds thousands of polynomials (issue 11)
        self.terms: dict[Monomial, Fraction] = {m: c if type(c) is Fraction else Fraction(c)
                                                for m, c in (terms or {}).items() if c != 0}
        self._hash: int | None = None

    # construction ----------------------------------------------------------------------------
    @staticmethod
    def const(value: int | float | Fraction) -> "Poly":
        return Poly({(): value if type(value) is Fraction else Fraction(value)})

    @staticmethod
    def symbol(name: str) -> "Poly":
        return Poly({((Atom(name), 1),): Fraction(1)})

    @staticmethod
    def of(value: "Poly | int | Fraction") -> "Poly":
        return value if isinstance(value, Poly) else Poly.const(value)

    # queries ---------------------------------------------------------------------------------
    def is_const(self) -> bool:
        return all(m == () for m in self.terms)

    @property
    def constant(self) -> Fraction:
        """The value of a constant polynomial (0 for the empty one)."""
        if not self.is_const():
            raise ValueError(f"{self} is not a constant")
        return self.terms.get((), Fraction(0))

    def is_integer_valued(self) -> bool:
        """True when integer coefficients over integer atoms guarantee an integer value."""
        return all(c.denominator == 1 for c in self.terms.values())

    def is_nonneg(self) -> bool:
        """Sufficient test: every coefficient and every atom is non-negative."""
        return all(c >= 0 for c in self.terms.values()) and all(
            atom.is_nonneg() for m in self.terms for atom, _ in m
        )

    def symbols(self) -> set[str]:
        out: set[str] = set()
        for m in self.terms:
            for atom, _ in m:
                out |= atom.symbols()
        return out

    def evaluate(self, env: Env) -> Fraction | None:
        """The exact value under ``env`` (symbol -> size), or None if a symbol is missing."""
        total = Fraction(0)
        for m, c in self.terms.items():
            term = c
            for atom, p in m:
                v = atom.evaluate(env)
                if v is None:
                    return None
                term *= v**p
            total += term
        return total

    # arithmetic ------------------------------------------------------------------------------
    def __add__(self, other: "Poly | int | Fraction") -> "Poly":
        other = Poly.of(other)
        terms = dict(self.terms)
        for m, c in other.terms.items():
            terms[m] = terms.get(m, Fraction(0)) + c
        return Poly(terms)

    __radd__ = __add__

    def __neg__(self) -> "Poly":
        return Poly({m: -c for m, c in self.terms.items()})

    def __sub__(self, other: "Poly | int | Fraction") -> "Poly":
        return self + (-Poly.of(other))

    def __rsub__(self, other: "Poly | int | Fraction") -> "Poly":
        return Poly.of(other) - self

    def __mul__(self, other: "Poly | int | Fraction") -> "Poly":
        other = Poly.of(other)
        terms: dict[Monomial, Fraction] = {}
        for ma, ca in self.terms.items():
            for mb, cb in other.terms.items():
                m = _mono_mul(ma, mb)
                terms[m] = terms.get(m, Fraction(0)) + ca * cb
        return Poly(terms)

    __rmul__ = __mul__

    def exact_div(self, other: "Poly | int | Fraction") -> "Poly | None":
        """``self / other`` when it is again a polynomial (constant divisor, monomial divisor,
        or proportional polynomials); None otherwise."""
        other = Poly.of(other)
        if not other.terms:
            return None
        if other.is_const():
            return self * (1 / other.constant)
        if len(other.terms) == 1:
            (mb, cb), = other.terms.items()
            terms: dict[Monomial, Fraction] = {}
            for ma, ca in self.terms.items():
                m = _mono_div(ma, mb)
                if m is None:
                    return None
                terms[m] = ca / cb
            return Poly(terms)
        if set(self.terms) == set(other.terms):
            m0 = next(iter(other.terms))
            ratio = self.terms[m0] / other.terms[m0]
            if all(self.terms[m] == ratio * other.terms[m] for m in other.terms):
                return Poly.const(ratio)
        return None

    def floor(self) -> "Poly":
        """``floor(self)``, normalised so equal values built differently compare equal."""
        whole: dict[Monomial, Fraction] = {}
        frac: dict[Monomial, Fraction] = {}
        for m, c in self.terms.items():
            ci = Fraction(math.floor(c))
            if ci:
                whole[m] = ci
            if c != ci:
                frac[m] = c - ci
        # every atom is integer-valued, so integer-coefficient terms pass through the floor
        if not frac:
            return Poly(whole)
        rest = Poly(frac)
        if rest.is_const():
            return Poly(whole)  # 0 <= fractional constant < 1 floors to 0
        atom = Atom(f"floor({rest})", rest)
        return Poly(whole) + Poly({((atom, 1),): Fraction(1)})

    def ceil(self) -> "Poly":
        return -((-self).floor())

    # identity --------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if isinstance(other, (int, Fraction)):
            other = Poly.const(other)
        return isinstance(other, Poly) and self.terms == other.terms

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self.terms.items()))
        return self._hash

    def __str__(self) -> str:
        if not self.terms:
            return "0"
        parts = []
        for m, c in sorted(self.terms.items(), key=lambda kv: (len(kv[0]) == 0, _mono_str(kv[0]))):
            if m == ():
                parts.append(str(c))
            elif c == 1:
                parts.append(_mono_str(m))
            else:
                parts.append(f"{c}*{_mono_str(m)}")
        return " + ".join(parts).replace("+ -", "- ")

    __repr__ = __str__


def as_int(p: Poly | None) -> int | None:
    """The integer a constant polynomial stands for, else None."""
    if p is None or not p.is_const() or p.constant.denominator != 1:
        return None
    return int(p.constant)


def float32_exact(c: Fraction) -> bool:
    return Fraction(float(np.float32(float(c)))) == c if abs(c) < 3e38 else False


def float64_exact(c: Fraction) -> bool:
    try:
        return Fraction(float(c)) == c
    except OverflowError:
        return False


# --------------------------------------------------------------------------------------------
# Values of small tensors
# --------------------------------------------------------------------------------------------

OP_SIGN = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/"}


@dataclass(frozen=True)
class SymValue:
    """Value of a scalar (``scalar``) or 1-D tensor: one Poly per element, None where unknown.

    ``kind`` is "int" (any integer type), "f32", "f64" or "bool" (elements 0/1).
    """

    kind: str
    elems: tuple[Poly | None, ...]
    scalar: bool = False

    @property
    def known(self) -> bool:
        return all(e is not None for e in self.elems)

    def constants(self) -> list[Fraction] | None:
        """All elements as numbers when every element is a known constant."""
        if not all(e is not None and e.is_const() for e in self.elems):
            return None
        return [e.constant for e in self.elems if e is not None]

    def ints(self) -> list[int] | None:
        vals = self.constants()
        if vals is None or any(v.denominator != 1 for v in vals):
            return None
        return [int(v) for v in vals]

    def __str__(self) -> str:
        body = ", ".join("?" if e is None else str(e) for e in self.elems)
        return body if self.scalar else f"[{body}]"


def kind_of_dtype(dtype: Any) -> str | None:
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return "bool"
    if np.issubdtype(dt, np.integer):
        return "int"
    if dt == np.float32:
        return "f32"
    if dt == np.float64:
        return "f64"
    return None  # float16/bfloat16 arithmetic is not exact enough to reason about


ONNX_TO_KIND = {
    1: "f32",
    11: "f64",
    9: "bool",
    2: "int",
    3: "int",
    4: "int",
    5: "int",
    6: "int",
    7: "int",
    12: "int",
    13: "int",
}


SIZE_BOUND = 2**16
"""Sizes are assumed below this when judging float exactness of non-integer expressions."""


def _representable(p: Poly, kind: str) -> bool:
    """Is every value of ``p`` exactly representable in ``kind`` (so the runtime float is exact)?"""
    if kind in ("int", "bool"):
        return p.is_integer_valued()
    if p.is_integer_valued():
        return True  # sizes (and their small products) stay below 2**24: exact in float32
    if p.is_const():
        return float32_exact(p.constant) if kind == "f32" else float64_exact(p.constant)
    # a linear expression with dyadic coefficients (3/2*H) is exact while it stays small
    mantissa = 24 if kind == "f32" else 53
    den = max(c.denominator for c in p.terms.values())
    if den & (den - 1) or any(sum(pw for _, pw in m) > 1 for m in p.terms):
        return False
    bound = sum(abs(c) for c in p.terms.values()) * SIZE_BOUND * den
    return bool(bound < 2**mantissa)


def constant_value(arr: np.ndarray) -> SymValue | None:
    """SymValue of a small constant array (None for big, 2-D+ or half-precision ones)."""
    kind = kind_of_dtype(arr.dtype)
    if kind is None or arr.ndim > 1 or arr.size > MAX_VALUE_ELEMS:
        return None
    elems = tuple(Poly.const(Fraction(bool(x)) if kind == "bool" else Fraction(x.item())) for x in arr.reshape(-1))
    return SymValue(kind, elems, scalar=arr.ndim == 0)


# --------------------------------------------------------------------------------------------
# Element arithmetic in ONNX semantics
# --------------------------------------------------------------------------------------------


def arith(op: str, kind: str, x: Poly, y: Poly) -> Poly | None:
    """One element of Add/Sub/Mul/Div/Max/Min in ONNX semantics, None when not exact/known."""
    if op == "Add":
        r: Poly | None = x + y
    elif op == "Sub":
        r = x - y
    elif op == "Mul":
        r = x * y
    elif op == "Equal":
        d = x - y
        if not d.terms:
            return Poly.const(1)
        if d.is_const():
            return Poly.const(0)
        if (x.is_nonneg() and y.is_const() and y.constant < 0) or (y.is_nonneg() and x.is_const() and x.constant < 0):
            return Poly.const(0)  # a size is never negative (the exporter's Equal(shape, -1))
        return None
    elif op in ("Max", "Min"):
        if not (x.is_const() and y.is_const()):
            return x if x == y else None
        r = Poly.const(max(x.constant, y.constant) if op == "Max" else min(x.constant, y.constant))
    elif op == "Div":
        if kind in ("int", "bool"):
            q = x.exact_div(y)
            if q is not None and q.is_integer_valued():
                return q
            if x.is_const() and y.is_const() and y.constant != 0:
                return Poly.const(int(x.constant / y.constant))  # C++ truncation
            if y.is_const() and y.constant > 0 and x.is_nonneg():
                return (x * (1 / y.constant)).floor()
            return None
        r = x.exact_div(y)
    else:
        return None
    if r is None:
        return None
    return r if _representable(r, kind) else None


def cast_value(e: Poly | None, src: str, dst: str) -> Poly | None:
    if e is None:
        return None
    if dst in ("int", "bool"):
        if e.is_integer_valued():
            return e if dst == "int" else (Poly.const(int(e.constant != 0)) if e.is_const() else None)
        if e.is_const():
            return Poly.const(int(e.constant))  # truncation toward zero
        return e.floor() if e.is_nonneg() else None
    return e if _representable(e, dst) else None
