"""Money and energy as Decimal, rounded by one rule in one place.

Amounts are yuan to 2 places (fen), unit prices up to 6 places, energy to 2 places.
The rounding rule is half-up (四舍五入), as Chinese utility billing practice and
DESIGN.md §5 require. Nothing else in the code base calls ``quantize`` on money.
"""

from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

ROUNDING = ROUND_HALF_UP
YUAN = Decimal("0.01")
UNIT_PRICE = Decimal("0.000001")
ENERGY = Decimal("0.01")
ZERO = Decimal("0.00")


def to_decimal(value) -> Decimal:
    """Convert user or wire input to Decimal without ever passing through float."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        raise TypeError("float is not accepted for money or energy; pass str or Decimal")
    if isinstance(value, bool):
        raise TypeError("bool is not a number")
    try:
        result = Decimal(str(value).strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {value!r}") from exc
    if not result.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return result


def quantize_yuan(value) -> Decimal:
    return to_decimal(value).quantize(YUAN, rounding=ROUNDING)


def quantize_unit_price(value) -> Decimal:
    return to_decimal(value).quantize(UNIT_PRICE, rounding=ROUNDING)


def quantize_energy(value) -> Decimal:
    return to_decimal(value).quantize(ENERGY, rounding=ROUNDING)


def split_yuan(total, weights: Sequence) -> list[Decimal]:
    """Split ``total`` yuan in proportion to ``weights`` so that the parts add back up.

    Each part is rounded half-up; the rounding remainder (a few fen at most) goes to
    the parts with the largest fractional remainders (largest-remainder method), so the
    sum of the parts always equals ``quantize_yuan(total)`` exactly.
    """
    total = quantize_yuan(total)
    weights = [to_decimal(w) for w in weights]
    if not weights:
        raise ValueError("at least one weight is needed")
    if any(w < 0 for w in weights):
        raise ValueError("weights must not be negative")
    weight_sum = sum(weights)
    if weight_sum == 0:
        raise ValueError("weights must not all be zero")
    exact = [total * w / weight_sum for w in weights]
    floors = [e.quantize(YUAN, rounding="ROUND_FLOOR") for e in exact]
    remainder_fen = int((total - sum(floors)) / YUAN)
    order = sorted(range(len(exact)), key=lambda i: exact[i] - floors[i], reverse=True)
    parts = list(floors)
    for i in order[:remainder_fen]:
        parts[i] += YUAN
    return parts


def format_yuan(value) -> str:
    return f"¥{quantize_yuan(value):,.2f}"
