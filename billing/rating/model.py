"""The rating engine's data: tariffs, usage and the itemised result, as frozen dataclasses.

Nothing here knows about the database. The billing app maps its Tariff / TariffVersion rows
onto these classes; real-time rating and bill runs pass them to :mod:`billing.rating.engine`.
"""

from dataclasses import dataclass
from datetime import date, time
from decimal import Decimal
from functools import cached_property

from core.money import quantize_unit_price

SHARP, PEAK, FLAT, VALLEY = "sharp", "peak", "flat", "valley"
BANDS = (SHARP, PEAK, FLAT, VALLEY)
# Usage given as one total register is billed in the flat band.
TOTAL = "total"

TIER_BASES = ("none", "monthly", "annual")
BASIC_BASES = ("none", "capacity", "demand")

LINE_ENERGY = "energy"
LINE_BASIC = "basic"
LINE_POWER_FACTOR = "power_factor"
LINE_SURCHARGE_INCLUDED = "surcharge_included"


@dataclass(frozen=True)
class Surcharge:
    """A government fund or surcharge already included in the energy price (itemised only)."""

    code: str
    name: str
    price_per_kwh: Decimal


@dataclass(frozen=True)
class Tier:
    """A block: ``upper_kwh`` is the cumulative upper bound within the tier month/year
    (e.g. 2160 then 4200), None for the unbounded last block; ``price_adder`` yuan/kWh is
    added to the band price (0 for tier 1)."""

    upper_kwh: Decimal | None
    price_adder: Decimal


@dataclass(frozen=True)
class TouPeriod:
    """[start, end) in local time for the given months; end 00:00 means midnight, and a period
    whose end is before its start runs over midnight (e.g. 23:00-07:00)."""

    band: str
    start: time
    end: time
    months: frozenset[int]


@dataclass(frozen=True)
class PriceVersion:
    effective_from: date
    effective_to: date | None  # exclusive
    energy_prices: dict[str, Decimal]  # band -> yuan/kWh, funds included
    tier_basis: str = "none"
    tiers: tuple[Tier, ...] = ()
    basic_basis: str = "none"
    basic_price: Decimal = Decimal("0")  # yuan per kVA-month or per kW-month
    pf_standard: Decimal | None = None
    surcharges: tuple[Surcharge, ...] = ()

    def covers(self, day: date) -> bool:
        return self.effective_from <= day and (self.effective_to is None or day < self.effective_to)

    @cached_property
    def tier_limits(self) -> tuple[Decimal | None, ...]:
        """Cumulative upper bounds of the blocks, unprorated; () for a tariff without tiers."""
        if self.tier_basis == "none":
            return ()
        return tuple(t.upper_kwh for t in self.tiers)

    @cached_property
    def tier_adders(self) -> tuple[Decimal, ...]:
        if self.tier_basis == "none" or not self.tiers:
            return (Decimal("0"),)
        return tuple(t.price_adder for t in self.tiers)

    @cached_property
    def unit_prices(self) -> dict[str, tuple[Decimal, ...]]:
        """band -> unit price of each tier (band price + tier adder, 6 places)."""
        return {
            band: tuple(quantize_unit_price(price + adder) for adder in self.tier_adders)
            for band, price in self.energy_prices.items()
        }

    @cached_property
    def surcharge_price_total(self) -> Decimal:
        return sum((s.price_per_kwh for s in self.surcharges), Decimal("0"))


@dataclass(frozen=True)
class TariffSpec:
    code: str
    name: str
    versions: tuple[PriceVersion, ...]
    tou_periods: tuple[TouPeriod, ...] = ()
    holiday_band: str | None = None

    def version_on(self, day: date) -> PriceVersion | None:
        for version in self.versions:
            if version.covers(day):
                return version
        return None

    @cached_property
    def half_hour_bands(self) -> dict[int, tuple[str | None, ...]]:
        """month -> band of each of the 48 half hours of a day (None where no period applies)."""
        from billing.rating.tou import half_hour_table

        return half_hour_table(self.tou_periods)


@dataclass(frozen=True)
class Usage:
    period_start: date
    period_end: date  # inclusive
    kwh: dict[str, Decimal]
    kvarh: Decimal | None = None
    max_demand_kw: Decimal | None = None
    capacity_kva: Decimal | None = None
    # kWh already used in the current tier month/year before period_start
    tier_kwh_used: Decimal = Decimal("0")
    # the account opened / closed (or changed tariff) on these days; annual blocks are prorated
    active_from: date | None = None
    active_to: date | None = None


@dataclass(frozen=True)
class ChargeLine:
    kind: str  # energy | basic | power_factor | surcharge_included
    description: str
    band: str | None
    tier: int | None
    quantity: Decimal
    unit: str  # kWh | kVA | kW | %
    unit_price: Decimal
    amount: Decimal
    period_start: date
    period_end: date


@dataclass(frozen=True)
class Quote:
    lines: list[ChargeLine]
    total: Decimal
    power_factor: Decimal | None
    pf_adjustment_percent: Decimal | None
    tier_kwh_after: Decimal
