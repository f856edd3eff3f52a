"""Cross-check against an independent calculator: NREL PySAM ``Utilityrate5`` (test-only).

One deterministic 8760-hour load for 2018 (SAM's year starts on a Monday, as 1 January 2018
did) is billed by PySAM and by :func:`billing.rating.rate` month by month for (1) monthly
blocks 180 / 350 kWh, (2) four-band TOU with seasons and weekends (our holiday rule with
weekends as the holidays), and (3) a demand charge on the monthly maximum hourly kW.

Our lines are rounded to the fen one by one while PySAM keeps floats, so the monthly totals
must agree to the fen (|difference| <= 0.01), and the unrounded sum of quantity × unit price
over our lines must equal PySAM's figure to 1e-6 (same kWh in every block and band).
PySAM works in floats; only this test converts anything to float.
"""

import calendar
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest

from billing.rating import PriceVersion, Tier, TouPeriod, Usage, rate, split_intervals
from tests.billing.rating.tariffs import tariff

ur5 = pytest.importorskip("PySAM.Utilityrate5")

D = Decimal
YEAR = 2018
HOURS = 8760
UNBOUNDED = 1e38
SUMMER = frozenset({7, 8})
WINTER = frozenset(range(1, 13)) - SUMMER


def hourly_load() -> list[tuple[datetime, Decimal]]:
    """kWh per hour, two decimals, with a daily shape, a summer bump and some spikes."""
    start = datetime(YEAR, 1, 1)
    load = []
    for h in range(HOURS):
        moment = start + timedelta(hours=h)
        hundredths = 20 + (h * 37) % 97 + (30 if 9 <= moment.hour < 21 else 0)
        if moment.month in SUMMER:
            hundredths += 25
        if h % 613 == 0:
            hundredths += 400
        load.append((moment, D(hundredths) / 100))
    return load


LOAD = hourly_load()


def pysam_monthly(ec_tou_mat, weekday, weekend, dc_flat_charge=None):
    model = ur5.new()
    model.Lifetime.analysis_period = 1
    model.Lifetime.system_use_lifetime_output = 0
    model.Lifetime.inflation_rate = 0
    model.SystemOutput.gen = [0.0] * HOURS
    model.SystemOutput.degradation = [0]
    model.Load.load = [float(kwh) for _, kwh in LOAD]
    rates = model.ElectricityRates
    rates.en_electricity_rates = 1
    rates.rate_escalation = [0]
    rates.ur_metering_option = 0
    rates.ur_monthly_fixed_charge = 0
    rates.ur_monthly_min_charge = 0
    rates.ur_annual_min_charge = 0
    rates.ur_ec_sched_weekday = weekday
    rates.ur_ec_sched_weekend = weekend
    rates.ur_ec_tou_mat = ec_tou_mat
    rates.ur_dc_enable = 1 if dc_flat_charge is not None else 0
    rates.ur_dc_flat_mat = [[m, 1, UNBOUNDED, dc_flat_charge or 0] for m in range(12)]
    rates.ur_dc_sched_weekday = [[1] * 24 for _ in range(12)]
    rates.ur_dc_sched_weekend = [[1] * 24 for _ in range(12)]
    rates.ur_dc_tou_mat = [[1, 1, UNBOUNDED, 0]]
    model.execute()
    return model.Outputs.utility_bill_wo_sys_ym[1]  # row 0 is year 0 (before operation)


def month_hours(month):
    return [(t, kwh) for t, kwh in LOAD if t.month == month]


def month_usage(month, kwh, **kwargs):
    last = calendar.monthrange(YEAR, month)[1]
    return Usage(date(YEAR, month, 1), date(YEAR, month, last), kwh, **kwargs)


def assert_month_agrees(quote, pysam_amount, month):
    exact = sum(line.quantity * line.unit_price for line in quote.lines if line.kind != "surcharge_included")
    assert abs(float(exact) - pysam_amount) < 1e-6, (month, exact, pysam_amount)
    assert abs(quote.total - D(str(round(pysam_amount, 2)))) <= D("0.01"), (month, quote.total, pysam_amount)


def test_monthly_blocks_agree_with_pysam():
    prices = (0.5283, 0.5783, 0.8283)
    mat = [[1, 1, 180, 0, prices[0], 0], [1, 2, 350, 0, prices[1], 0], [1, 3, UNBOUNDED, 0, prices[2], 0]]
    ones = [[1] * 24 for _ in range(12)]
    pysam = pysam_monthly(mat, ones, ones)

    blocks = (Tier(D("180"), D("0")), Tier(D("350"), D("0.05")), Tier(None, D("0.30")))
    version = PriceVersion(date(YEAR, 1, 1), None, {"flat": D("0.5283")}, tier_basis="monthly", tiers=blocks)
    t = tariff(version)
    for month in range(1, 13):
        kwh = sum(k for _, k in month_hours(month))
        assert kwh > 350  # every month reaches block 3
        quote = rate(t, month_usage(month, {"flat": kwh}))
        assert_month_agrees(quote, pysam[month - 1], month)


# hour-aligned TOU: valley 0-8 and 23-24, peak 8-11 and 18-23, flat 11-18; July-August 10-11 sharp
TOU_PRICES = {"sharp": D("1.2000"), "peak": D("0.9800"), "flat": D("0.6500"), "valley": D("0.3200")}
PYSAM_PERIOD = {"sharp": 1, "peak": 2, "flat": 3, "valley": 4}


def tou_periods():
    from datetime import time

    return (
        TouPeriod("valley", time(0), time(8), WINTER | SUMMER),
        TouPeriod("peak", time(8), time(11), WINTER),
        TouPeriod("peak", time(8), time(10), SUMMER),
        TouPeriod("sharp", time(10), time(11), SUMMER),
        TouPeriod("flat", time(11), time(18), WINTER | SUMMER),
        TouPeriod("peak", time(18), time(23), WINTER | SUMMER),
        TouPeriod("valley", time(23), time(0), WINTER | SUMMER),
    )


def is_weekend(day: date) -> bool:
    return day.weekday() >= 5


def test_tou_with_seasons_and_weekends_agrees_with_pysam():
    t = tariff(
        PriceVersion(date(YEAR, 1, 1), None, TOU_PRICES),
        periods=tou_periods(),
        holiday_band="valley",
        code="TOU",
    )
    # the PySAM schedule is read off our own band table at each whole hour
    weekday = [[PYSAM_PERIOD[t.half_hour_bands[m][2 * h]] for h in range(24)] for m in range(1, 13)]
    weekend = [[PYSAM_PERIOD["valley"]] * 24 for _ in range(12)]
    assert weekday[6][10] == 1 and weekday[0][10] == 2 and weekday[0][3] == 4  # sharp in July only
    mat = [[PYSAM_PERIOD[b], 1, UNBOUNDED, 0, float(p), 0] for b, p in TOU_PRICES.items()]
    pysam = pysam_monthly(mat, weekday, weekend)

    for month in range(1, 13):
        bands = split_intervals(t, month_hours(month), is_weekend)
        quote = rate(t, month_usage(month, bands))
        assert_month_agrees(quote, pysam[month - 1], month)


def test_demand_charge_agrees_with_pysam():
    mat = [[1, 1, UNBOUNDED, 0, 0.6, 0]]
    ones = [[1] * 24 for _ in range(12)]
    pysam = pysam_monthly(mat, ones, ones, dc_flat_charge=38.0)

    version = PriceVersion(
        date(YEAR, 1, 1), None, {"flat": D("0.6")}, basic_basis="demand", basic_price=D("38")
    )
    t = tariff(version)
    for month in range(1, 13):
        hours = month_hours(month)
        kwh = sum(k for _, k in hours)
        max_kw = max(k for _, k in hours)  # one-hour intervals: kWh in the hour = average kW
        quote = rate(t, month_usage(month, {"flat": kwh}, max_demand_kw=max_kw))
        assert_month_agrees(quote, pysam[month - 1], month)
