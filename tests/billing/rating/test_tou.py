"""Time-of-use bands at half-hour boundaries, holidays, interval splitting, and the checks the
tariff admin runs before saving a price version."""

from datetime import date, datetime, time, timedelta
from decimal import Decimal

import pytest

from billing.rating import Tier, TouPeriod, band_at, split_intervals, validate_version
from tests.billing.rating.tariffs import (
    ALL_MONTHS,
    ANNUAL_BLOCKS,
    COMMERCIAL_PERIODS,
    COMMERCIAL_PRICES,
    tariff,
    version,
)

D = Decimal
NATIONAL_DAY = {date(2026, 10, 1), date(2026, 10, 2)}


def is_holiday(day: date) -> bool:
    return day in NATIONAL_DAY


COMMERCIAL = tariff(version(COMMERCIAL_PRICES), periods=COMMERCIAL_PERIODS, holiday_band="valley")


@pytest.mark.parametrize(
    ("moment", "band"),
    [
        (datetime(2026, 3, 10, 0, 0), "valley"),
        (datetime(2026, 3, 10, 7, 59), "valley"),
        (datetime(2026, 3, 10, 8, 0), "flat"),
        (datetime(2026, 3, 10, 8, 29), "flat"),
        (datetime(2026, 3, 10, 8, 30), "peak"),  # half-hour boundary
        (datetime(2026, 3, 10, 10, 45), "peak"),  # not summer: no sharp
        (datetime(2026, 3, 10, 11, 29), "peak"),
        (datetime(2026, 3, 10, 11, 30), "flat"),
        (datetime(2026, 3, 10, 17, 59), "flat"),
        (datetime(2026, 3, 10, 18, 0), "peak"),
        (datetime(2026, 3, 10, 22, 59), "peak"),
        (datetime(2026, 3, 10, 23, 0), "valley"),  # 23:00-00:00 period
        (datetime(2026, 3, 10, 23, 59), "valley"),
        (datetime(2026, 7, 15, 10, 29), "peak"),
        (datetime(2026, 7, 15, 10, 30), "sharp"),  # summer season
        (datetime(2026, 7, 15, 11, 29), "sharp"),
        (datetime(2026, 7, 15, 11, 30), "flat"),
        (datetime(2026, 10, 1, 10, 30), "valley"),  # National Day: whole day in the holiday band
        (datetime(2026, 10, 1, 19, 0), "valley"),
        (datetime(2026, 10, 3, 19, 0), "peak"),
    ],
)
def test_band_at(moment, band):
    assert band_at(COMMERCIAL, moment, is_holiday) == band


def test_band_at_without_tou_is_flat():
    assert band_at(tariff(version()), datetime(2026, 10, 1, 19, 0), is_holiday) == "flat"


def test_split_fifteen_minute_intervals():
    start = datetime(2026, 3, 10, 8, 0)
    intervals = [
        (start + timedelta(minutes=15 * i), kwh) for i, kwh in enumerate(["1.00", "1.25", "2.00", "2.50"])
    ]
    intervals.append((datetime(2026, 3, 10, 23, 45), "0.40"))
    intervals.append((datetime(2026, 10, 1, 9, 0), "3.00"))  # holiday
    totals = split_intervals(COMMERCIAL, [(t, D(k)) for t, k in intervals], is_holiday)
    # 08:00 and 08:15 flat (1.00 + 1.25); 08:30 and 08:45 peak (2.00 + 2.50); 23:45 valley 0.40;
    # National Day 09:00 valley 3.00
    assert totals == {"flat": D("2.25"), "peak": D("4.50"), "valley": D("3.40")}


def test_a_valid_version_has_no_messages():
    assert validate_version(version(COMMERCIAL_PRICES), COMMERCIAL_PERIODS, "valley") == []
    assert validate_version(version(tier_basis="annual", tiers=ANNUAL_BLOCKS)) == []


@pytest.mark.usefixtures("english")
def test_validation_messages_a_clerk_can_act_on():
    periods = (
        TouPeriod("valley", time(0, 0), time(8, 0), ALL_MONTHS),
        TouPeriod("peak", time(7, 30), time(12, 0), ALL_MONTHS),  # overlaps 07:30-08:00
        TouPeriod("flat", time(12, 0), time(23, 0), ALL_MONTHS),  # 23:00-24:00 uncovered
        TouPeriod("flat", time(12, 15), time(13, 0), frozenset({1})),
    )
    bad = version(
        {"peak": D("0.98"), "flat": D("0.65")},
        effective_from=date(2026, 7, 1),
        effective_to=date(2026, 6, 1),
        tier_basis="annual",
        tiers=(Tier(D("4200"), D("0")), Tier(D("2160"), D("0.05"))),
        pf_standard=D("0.95"),
    )
    messages = validate_version(bad, periods)
    text = "\n".join(messages)
    assert "The end date must be after the start date." in messages
    assert "The valley band is used by the time-of-use periods but has no price." in messages
    assert "The last block must have no upper bound." in messages
    assert "Block upper bounds must be positive and strictly ascending." in messages
    assert "The power-factor standard must be 0.90, 0.85 or 0.80." in messages
    assert "Period 12:15-13:00 must start and end on a whole or half hour." in messages
    assert "Month 3: periods overlap at 07:30." in messages
    assert "Month 3: no period covers 23:00, 23:30." in messages
    assert "Month 1: periods overlap at 07:30, 12:00" in text
