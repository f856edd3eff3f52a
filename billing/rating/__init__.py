"""Pure Decimal rating engine: tariffs as dataclasses in, itemised charges out.

Imports nothing from Django models or apps, so bill runs, real-time rating, the quote API and
tests can all call it with plain data. See :mod:`billing.rating.engine` for the rules.
"""

from billing.rating.engine import (
    prorated_tier_limits,
    quote_to_dict,
    rate,
    rate_energy_day,
)
from billing.rating.model import (
    BANDS,
    ChargeLine,
    PriceVersion,
    Quote,
    Surcharge,
    TariffSpec,
    Tier,
    TouPeriod,
    Usage,
)
from billing.rating.power_factor import (
    DEFAULT_POWER_FACTOR_TABLE,
    POWER_FACTOR_BELOW_TABLE_STEPS,
    POWER_FACTOR_ROWS,
    PowerFactorTable,
    power_factor,
)
from billing.rating.tou import band_at, split_intervals
from billing.rating.validation import validate_version

__all__ = [
    "BANDS",
    "DEFAULT_POWER_FACTOR_TABLE",
    "POWER_FACTOR_BELOW_TABLE_STEPS",
    "POWER_FACTOR_ROWS",
    "ChargeLine",
    "PowerFactorTable",
    "PriceVersion",
    "Quote",
    "Surcharge",
    "TariffSpec",
    "Tier",
    "TouPeriod",
    "Usage",
    "band_at",
    "power_factor",
    "prorated_tier_limits",
    "quote_to_dict",
    "rate",
    "rate_energy_day",
    "split_intervals",
    "validate_version",
]
