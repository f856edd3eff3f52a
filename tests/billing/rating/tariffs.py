"""Tariffs shared by the rating tests (plain data; the numbers are typical, not any one province's)."""

from datetime import date, time
from decimal import Decimal

from billing.rating import PriceVersion, Surcharge, TariffSpec, Tier, TouPeriod

D = Decimal
ALL_MONTHS = frozenset(range(1, 13))
SUMMER = frozenset({7, 8})
NOT_SUMMER = ALL_MONTHS - SUMMER

FUNDS = (
    Surcharge("water", "国家重大水利工程建设基金", D("0.004")),
    Surcharge("renewable", "可再生能源电价附加", D("0.019")),
    Surcharge("rural_grid", "农网还贷资金", D("0.02")),
    Surcharge("reservoir", "大中型水库移民后期扶持资金", D("0.0062")),
)

ANNUAL_BLOCKS = (Tier(D("2160"), D("0")), Tier(D("4200"), D("0.05")), Tier(None, D("0.30")))
MONTHLY_BLOCKS = (Tier(D("180"), D("0")), Tier(D("350"), D("0.05")), Tier(None, D("0.30")))

# commercial TOU with half-hour boundaries; in July and August 10:30-11:30 is sharp
COMMERCIAL_PERIODS = (
    TouPeriod("valley", time(0, 0), time(8, 0), ALL_MONTHS),
    TouPeriod("flat", time(8, 0), time(8, 30), ALL_MONTHS),
    TouPeriod("peak", time(8, 30), time(11, 30), NOT_SUMMER),
    TouPeriod("peak", time(8, 30), time(10, 30), SUMMER),
    TouPeriod("sharp", time(10, 30), time(11, 30), SUMMER),
    TouPeriod("flat", time(11, 30), time(18, 0), ALL_MONTHS),
    TouPeriod("peak", time(18, 0), time(23, 0), ALL_MONTHS),
    TouPeriod("valley", time(23, 0), time(0, 0), ALL_MONTHS),
)
COMMERCIAL_PRICES = {"sharp": D("1.2000"), "peak": D("0.9800"), "flat": D("0.6500"), "valley": D("0.3200")}


def version(prices=None, **kwargs) -> PriceVersion:
    kwargs.setdefault("effective_from", date(2026, 1, 1))
    kwargs.setdefault("effective_to", None)
    return PriceVersion(energy_prices=prices or {"flat": D("0.5283")}, **kwargs)


def tariff(*versions, periods=(), holiday_band=None, code="T") -> TariffSpec:
    return TariffSpec(
        code=code, name=code, versions=tuple(versions), tou_periods=periods, holiday_band=holiday_band
    )
