"""Statutory holidays (chinese_calendar and the fallback for years it lacks), window checks
and the end of the current no-trip window."""

import logging
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from billing.policy import NoTripWindows, PolicySettings, PolicyState, decide, next_trip_allowed_at
from billing.policy import calendar as policy_calendar
from billing.policy.calendar import active_windows, holiday_name, is_statutory_holiday

SHANGHAI = ZoneInfo("Asia/Shanghai")
NIGHT = NoTripWindows(night_start=time(22, 0), night_end=time(8, 0), holidays=True)


def at(year, month, day, hour, minute=0):
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI)


@pytest.fixture
def fresh_calendar():
    """Forget cached lookups and warned years, so a test sees the warning it causes."""
    holiday_name.cache_clear()
    policy_calendar._warned_years.clear()
    yield
    holiday_name.cache_clear()


@pytest.mark.parametrize(
    "day, name",
    [
        (date(2026, 10, 1), "National Day"),
        (date(2026, 10, 4), "National Day"),  # a Sunday inside the holiday block
        (date(2026, 10, 7), "National Day"),
        (date(2026, 10, 8), None),  # back to work
        (date(2026, 10, 10), None),  # Saturday worked in lieu (调休上班)
        (date(2026, 10, 11), None),  # an ordinary Sunday
        (date(2026, 11, 28), None),  # an ordinary Saturday
        (date(2026, 1, 1), "New Year's Day"),
        (date(2026, 5, 1), "Labour Day"),
        (date(2026, 2, 15), "Spring Festival"),
        (date(2026, 2, 14), None),  # Saturday worked in lieu before the Spring Festival
    ],
)
def test_statutory_holidays_from_chinese_calendar(day, name):
    assert holiday_name(day) == name
    assert is_statutory_holiday(day) is (name is not None)


def test_fallback_calendar_for_2027_warns_once(fresh_calendar, caplog):
    with caplog.at_level(logging.WARNING, logger="billing.policy.calendar"):
        assert holiday_name(date(2027, 1, 1)) == "New Year's Day"
        assert holiday_name(date(2027, 5, 3)) == "Labour Day"
        assert holiday_name(date(2027, 5, 4)) is None
        assert holiday_name(date(2027, 10, 7)) == "National Day"
        assert holiday_name(date(2027, 10, 8)) is None
        assert holiday_name(date(2027, 11, 27)) is None  # a Saturday: weekends never count
    warnings = [r for r in caplog.records if "no holiday schedule for 2027" in r.getMessage()]
    assert len(warnings) == 1


def test_decide_uses_the_fallback_in_2027(fresh_calendar):
    settings = PolicySettings(
        warning1_threshold=Decimal("50.00"),
        warning2_threshold=Decimal("20.00"),
        trip_threshold=Decimal("0.00"),
        close_threshold=Decimal("10.00"),
        required_warning=1,
        grace_period=timedelta(hours=24),
    )
    state = PolicyState("warning1", warning1_at=at(2027, 9, 20, 9))
    common = dict(balance=Decimal("-5.00"), credit_allowance=Decimal("0.00"), settings=settings, state=state)
    holiday = decide(now=at(2027, 10, 1, 10), windows=NIGHT, **common)
    assert (holiday.action, holiday.blocked_by) == ("trip_withheld", ("holiday",))
    # Friday 8 October 2027, 10:00: outside the fixed-date holidays.
    assert decide(now=at(2027, 10, 8, 10), windows=NIGHT, **common).action == "trip"


def test_active_windows_lists_every_window_in_order():
    windows = NoTripWindows(
        night_start=time(22, 0),
        night_end=time(8, 0),
        holidays=True,
        events=((at(2026, 10, 1, 0), at(2026, 10, 3, 0), "Grid maintenance"),),
    )
    assert active_windows(at(2026, 10, 1, 23), windows) == [
        ("event", "Grid maintenance"),
        ("holiday", "National Day"),
        ("night", "22:00-08:00"),
    ]
    assert active_windows(at(2026, 11, 25, 10), windows) == []


def test_daytime_window_and_no_night_window():
    siesta = NoTripWindows(night_start=time(12, 0), night_end=time(14, 0), holidays=False)
    assert active_windows(at(2026, 11, 25, 12), siesta) == [("night", "12:00-14:00")]
    assert active_windows(at(2026, 11, 25, 14), siesta) == []
    assert active_windows(at(2026, 11, 25, 23), siesta) == []
    none = NoTripWindows(night_start=None, night_end=None, holidays=False)
    assert active_windows(at(2026, 11, 25, 23), none) == []


def test_event_windows_are_validated():
    with pytest.raises(ValueError, match="timezone-aware"):
        NoTripWindows(events=((datetime(2026, 11, 25, 9), datetime(2026, 11, 25, 18), "naive"),))
    with pytest.raises(ValueError, match="start must be before the end"):
        NoTripWindows(events=((at(2026, 11, 25, 18), at(2026, 11, 25, 9), "backwards"),))


# --- next_trip_allowed_at ---------------------------------------------------------------------------


def test_next_trip_allowed_outside_any_window_is_now():
    assert next_trip_allowed_at(at(2026, 11, 25, 10, 17), NIGHT) == at(2026, 11, 25, 10, 17)


def test_next_trip_allowed_after_the_night():
    # Wednesday 23:00 → Thursday 08:00.
    assert next_trip_allowed_at(at(2026, 11, 25, 23), NIGHT) == at(2026, 11, 26, 8)
    # 03:00 → 08:00 the same morning.
    assert next_trip_allowed_at(at(2026, 11, 26, 3), NIGHT) == at(2026, 11, 26, 8)


def test_next_trip_allowed_chains_night_and_holiday_block():
    # Wed 30 Sep 23:00 → night to 1 Oct 08:00 → National Day 1-7 Oct → 8 Oct 00:00 is night
    # → 8 Oct 08:00 (a Thursday, working day).
    assert next_trip_allowed_at(at(2026, 9, 30, 23), NIGHT) == at(2026, 10, 8, 8)


def test_next_trip_allowed_after_an_event_that_ends_at_night():
    windows = NoTripWindows(
        night_start=time(22, 0),
        night_end=time(8, 0),
        holidays=True,
        events=((at(2026, 11, 25, 9), at(2026, 11, 25, 23, 30), "Heat wave"),),
    )
    # The event ends at 23:30, inside the night → 26 Nov 08:00.
    assert next_trip_allowed_at(at(2026, 11, 25, 12), windows) == at(2026, 11, 26, 8)


def test_next_trip_allowed_accepts_utc_and_answers_in_local_time():
    # 15:00 UTC = 23:00 Shanghai → 08:00 Shanghai next day = 00:00 UTC.
    result = next_trip_allowed_at(datetime(2026, 11, 25, 15, 0, tzinfo=ZoneInfo("UTC")), NIGHT)
    assert result == datetime(2026, 11, 26, 0, 0, tzinfo=ZoneInfo("UTC"))
    assert result.utcoffset() == timedelta(hours=8)
