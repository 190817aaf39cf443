"""Exact p-bit rounding of rationals, for precisions beyond float64's 53 bits.

A number rounded to p bits is m * 2^e with an integer significand |m| < 2^p (round to nearest,
ties to even), the same rule as IEEE floating point with a p-bit significand and an unbounded
exponent. The moment-curve construction needs p of 50 to 200 bits, so its logits are computed
here with Python integers, exactly, from the rounded queries and keys.
"""

from __future__ import annotations

from fractions import Fraction


def round_rational(value: Fraction | int, bits: int) -> Fraction:
    """`value` rounded to a `bits`-bit significand (nearest, ties to even); exact otherwise."""
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    value = Fraction(value)
    if value == 0:
        return Fraction(0)
    sign = -1 if value < 0 else 1
    num, den = abs(value.numerator), value.denominator
    exponent = num.bit_length() - den.bit_length()  # 2^exponent <= |value| < 2^(exponent+2)
    if (num << max(0, -exponent)) < (den << max(0, exponent)):
        exponent -= 1  # now 2^exponent <= |value| < 2^(exponent+1)
    shift = bits - 1 - exponent
    scaled_num, scaled_den = (num << shift, den) if shift >= 0 else (num, den << -shift)
    significand, remainder = divmod(scaled_num, scaled_den)
    twice = 2 * remainder
    if twice > scaled_den or (twice == scaled_den and significand % 2 == 1):
        significand += 1
    return sign * Fraction(significand) * (Fraction(2) ** -shift)


def to_float(value: Fraction) -> float:
    """A Fraction as the nearest float (correct rounding, no overflow for |value| < 1e308)."""
    return value.numerator / value.denominator
