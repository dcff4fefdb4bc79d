"""Checks of the options a user gives (hyper-parameters, counts, sizes, names, switches).

An option's allowed values are written once, beside its default, as a
:class:`Range` (numbers), a :class:`Choice` (names) or ``FLAG`` (true or
false); :func:`check_options` turns a bad value into one
:class:`~hfmeta.errors.UserError` that names the owner, the option, what it
must be and what it was::

    ranges = {"lr": POSITIVE, "momentum": FRACTION, "cg_iters": COUNT}
    check_options("sgd", {"lr": -1}, ranges)
    # UserError: sgd: lr must be a number > 0, got -1

Values come from JSON on the command line (``--hp lr=0.1``), so a string where
a number belongs (``--hp lr=abc``) is caught here too, before it reaches an
array.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .errors import UserError


class Allowed:
    """What an option may be: subclasses give :meth:`admits` and :meth:`describe`."""

    def admits(self, value) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, owner: str | None, name: str, value) -> None:
        if not self.admits(value):
            prefix = f"{owner}: " if owner else ""
            raise UserError(f"{prefix}{name} must be {self.describe()}, got {value!r}")


@dataclass(frozen=True)
class Range(Allowed):
    """A real number in an interval.

    ``low``/``high``: the ends (None: unbounded), excluded where ``low_open`` /
    ``high_open``; ``whole``: an integer; ``or_none``: None is allowed too (the
    option's "not used" or "automatic" value); ``each``: a non-empty list of
    numbers, each in the range (layer sizes like ``hidden=(4, 4)``), of
    ``length`` numbers where given; ``also``: other literal values allowed
    (``"auto"``).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    whole: bool = False
    or_none: bool = False
    each: bool = False
    length: int | None = None
    also: tuple = ()

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        if self.each:
            kind = (f"a list of {self.length or ''} "
                    + ("whole numbers" if self.whole else "numbers")).replace("  ", " ")
        if self.low is not None and self.high is not None:
            text = (f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            text = f"{kind} {'<' if self.high_open else '<='} {self.high:g}"
        else:
            text = kind
        extras = [repr(v) for v in self.also] + (["None"] if self.or_none else [])
        return text + "".join(f" or {e}" for e in extras)

    def admits(self, value) -> bool:
        if value is None:
            return self.or_none
        if any(value == v and type(value) is type(v) for v in self.also):
            return True
        if self.each:
            return (isinstance(value, (list, tuple)) and len(value) > 0
                    and self.length in (None, len(value))
                    and all(self._number_ok(v) for v in value))
        return self._number_ok(value)

    def _number_ok(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.whole and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True


@dataclass(frozen=True)
class Choice(Allowed):
    """One of ``values`` (names such as ``"becker-lecun"``, or ``True``/``False`` for an
    on/off option: :data:`FLAG`); anything else, a list included, is refused."""

    values: tuple

    def describe(self) -> str:
        if set(self.values) == {True, False}:
            return "true or false"
        return "one of " + ", ".join(str(v) for v in self.values)

    def admits(self, value) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values)


FLAG = Choice((True, False))
POSITIVE = Range(0, low_open=True)                      # learning rates, eps, damping > 0
NONNEGATIVE = Range(0)                                  # damping >= 0, tolerances, l2
FRACTION = Range(0, 1, high_open=True)                  # momentum, decay rates, betas
OPEN_FRACTION = Range(0, 1, low_open=True, high_open=True)  # line-search factors
COUNT = Range(1, whole=True)                            # iterations, steps, batch sizes
NATURAL = Range(0, whole=True)                          # seeds, capacities that may be 0
SIZES = Range(1, whole=True, each=True)                 # layer sizes: (16, 32)


def optional(allowed: Range) -> Range:
    """``allowed``, or None (the option's "not used" or "automatic" value)."""
    return replace(allowed, or_none=True)


def check_options(owner: str | None, values: dict, ranges: dict) -> None:
    """Check each of ``values`` that ``ranges`` names (others are not checked here)."""
    for name, allowed in ranges.items():
        if name in values:
            allowed.check(owner, name, values[name])


def check_representable(owner: str | None, values: dict, ranges: dict, dtype) -> None:
    """Each real-valued option of ``values`` (a non-``whole`` :class:`Range` of
    ``ranges``) survives the cast to ``dtype``, the dtype of the arrays it meets.

    A value beyond ``finfo(dtype).max`` becomes ±inf and one below its smallest
    subnormal becomes 0 (``--hp ms_init=1e300`` or ``--hp eps=1e-50`` in
    float32): the run would train with a zero or NaN step after a NumPy
    warning, so it is refused here instead.
    """
    info = np.finfo(dtype)
    largest, smallest = float(info.max), float(info.smallest_subnormal)
    prefix = f"{owner}: " if owner else ""
    for name, allowed in ranges.items():
        if name not in values or not isinstance(allowed, Range) or allowed.whole:
            continue
        value = values[name]
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v == 0:
                continue
            if abs(v) > largest:
                raise UserError(f"{prefix}{name}={v:g} overflows {info.dtype} (largest "
                                f"{largest:.3g}); use a smaller value or --dtype float64")
            if np.float64(v).astype(info.dtype) == 0:                # rounds to 0
                raise UserError(f"{prefix}{name}={v:g} is 0 in {info.dtype} (smallest "
                                f"{smallest:.3g}); use a larger value or "
                                f"--dtype float64")
