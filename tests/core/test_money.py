"""core.money: one rounding rule (half-up) and splits whose parts add back up.

Every expected value below is worked out by hand, not by calling the code under test."""

from decimal import Decimal

import pytest

from core.money import (
    format_yuan,
    quantize_energy,
    quantize_unit_price,
    quantize_yuan,
    split_yuan,
    to_decimal,
)

D = Decimal


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # exactly half a fen rounds up (away from zero), never to even
        ("0.005", "0.01"),
        ("0.015", "0.02"),
        ("0.025", "0.03"),  # banker's rounding would give 0.02
        ("2.675", "2.68"),  # float(2.675) is 2.67499999... and would round down
        ("1.005", "1.01"),
        ("99.995", "100.00"),
        # just under half a fen rounds down
        ("0.0049", "0.00"),
        ("2.67499999", "2.67"),
        # just over rounds up
        ("2.6650001", "2.67"),
        # negative amounts (refunds, reversals) mirror positive ones
        ("-0.005", "-0.01"),
        ("-2.675", "-2.68"),
        ("-0.0049", "0.00"),
        # already at fen precision, and whole numbers
        ("12.34", "12.34"),
        ("7", "7.00"),
        ("  3.456 ", "3.46"),  # wire input is trimmed
    ],
)
def test_quantize_yuan_rounds_half_up(value, expected):
    result = quantize_yuan(value)
    assert result == D(expected)
    assert result.as_tuple().exponent == -2


def test_quantize_yuan_accepts_decimal_and_int():
    assert quantize_yuan(D("0.125")) == D("0.13")
    assert quantize_yuan(15) == D("15.00")


def test_energy_and_unit_price_use_the_same_half_up_rule():
    assert quantize_energy("123.455") == D("123.46")
    assert quantize_energy("123.4549") == D("123.45")
    assert quantize_unit_price("0.5283335") == D("0.528334")
    assert quantize_unit_price("0.5283334999") == D("0.528333")


@pytest.mark.parametrize("fn", [quantize_yuan, quantize_energy, quantize_unit_price, to_decimal])
def test_float_is_rejected(fn):
    with pytest.raises(TypeError, match="float is not accepted"):
        fn(2.675)


def test_bool_is_rejected():
    with pytest.raises(TypeError, match="bool"):
        quantize_yuan(True)


@pytest.mark.parametrize("value", ["abc", "", "1,000.00", "NaN", "Infinity", "-Infinity"])
def test_non_numbers_are_rejected(value):
    with pytest.raises(ValueError, match="not a"):
        quantize_yuan(value)


def test_format_yuan():
    assert format_yuan("1234567.895") == "¥1,234,567.90"
    assert format_yuan(0) == "¥0.00"


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        # 100.00 / 3 = 33.333...: floors 33.33 × 3 = 99.99, the one spare fen goes first
        ("100.00", [1, 1, 1], ["33.34", "33.33", "33.33"]),
        ("10.00", [1, 1, 1], ["3.34", "3.33", "3.33"]),
        # 100 × 1/3 = 33.333, 100 × 2/3 = 66.666: the larger remainder (.666) gets the fen
        ("100.00", [1, 2], ["33.33", "66.67"]),
        # 0.05 / 2 = 0.025 each: floors 0.02 + 0.02, one fen left for the first
        ("0.05", [1, 1], ["0.03", "0.02"]),
        # a single fen cannot be divided: it goes to one part
        ("0.01", [1, 1, 1], ["0.01", "0.00", "0.00"]),
        # exact splits stay exact
        ("1.00", ["0.5", "0.25", "0.25"], ["0.50", "0.25", "0.25"]),
        ("90.00", [2, 3, 4], ["20.00", "30.00", "40.00"]),
        # a zero weight gets nothing
        ("5.00", [0, 1], ["0.00", "5.00"]),
        # 7 × (1/6, 2/6, 3/6) = 1.1666, 2.3333, 3.5: floors 1.16 + 2.33 + 3.50 = 6.99;
        # the spare fen goes to the largest remainder, 1.1666 -> 1.17
        ("7.00", [1, 2, 3], ["1.17", "2.33", "3.50"]),
        # the total itself is rounded half-up first: 10.005 -> 10.01
        ("10.005", [1, 1], ["5.01", "5.00"]),
        # refunds: -100 / 3 = -33.333 floors to -33.34 (×3 = -100.02); two fen handed back
        ("-100.00", [1, 1, 1], ["-33.33", "-33.33", "-33.34"]),
    ],
)
def test_split_yuan_hand_checked(total, weights, expected):
    parts = split_yuan(total, weights)
    assert parts == [D(e) for e in expected]
    assert sum(parts) == quantize_yuan(total)
    assert all(p.as_tuple().exponent == -2 for p in parts)


@pytest.mark.parametrize(
    ("total", "n"),
    [("100.00", 3), ("100.00", 7), ("0.10", 3), ("1234.57", 11), ("0.99", 100), ("-55.55", 9)],
)
def test_split_yuan_parts_always_add_back_up(total, n):
    parts = split_yuan(total, [1] * n)
    assert len(parts) == n
    assert sum(parts) == D(total)
    # equal weights: no two parts differ by more than one fen
    assert max(parts) - min(parts) <= D("0.01")


def test_split_yuan_uneven_weights_add_up():
    weights = [D("123.45"), D("0.01"), D("9876.5"), D("3")]
    # exact shares of 3333.33 over 10002.96: 41.1378, 0.0033, 3291.1892, 0.9997;
    # floors 41.13 + 0.00 + 3291.18 + 0.99 = 3333.30, so three spare fen go to the three
    # largest remainders (.0097, .0092, .0078), not to the tiny share (.0033)
    parts = split_yuan("3333.33", weights)
    assert parts == [D("41.14"), D("0.00"), D("3291.19"), D("1.00")]
    assert sum(parts) == D("3333.33")


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        ([], ValueError, "at least one weight"),
        ([1, -1], ValueError, "must not be negative"),
        ([0, 0], ValueError, "must not all be zero"),
        ([1, 0.5], TypeError, "float is not accepted"),
        (["x"], ValueError, "not a number"),
    ],
)
def test_split_yuan_bad_weights(weights, error, message):
    with pytest.raises(error, match=message):
        split_yuan("10.00", weights)


def test_split_yuan_rejects_float_total():
    with pytest.raises(TypeError):
        split_yuan(10.0, [1, 1])
