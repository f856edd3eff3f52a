"""The cost-control rules, one worked case per rule (times in Asia/Shanghai).

Settings used throughout unless a test says otherwise: warning 1 at 50.00 yuan, warning 2 at
20.00, trip below 0.00, close above 10.00, warning level 1 required, grace period 24 hours,
night 22:00-08:00, statutory holidays on.
"""

from datetime import datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from billing.policy import NoTripWindows, PolicySettings, PolicyState, decide

SHANGHAI = ZoneInfo("Asia/Shanghai")
D = Decimal


def at(year, month, day, hour, minute=0):
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI)


SETTINGS = PolicySettings(
    warning1_threshold=D("50.00"),
    warning2_threshold=D("20.00"),
    trip_threshold=D("0.00"),
    close_threshold=D("10.00"),
    required_warning=1,
    grace_period=timedelta(hours=24),
)
WINDOWS = NoTripWindows(night_start=time(22, 0), night_end=time(8, 0), holidays=True)
# Wednesday 25 November 2026, an ordinary working day.
WORKDAY_10 = at(2026, 11, 25, 10)
# Warned at 09:00 the day before: 25 h before WORKDAY_10, so the 24 h grace is over.
WARNED = PolicyState(state="warning1", warning1_at=at(2026, 11, 24, 9))


def run(balance, *, credit="0.00", state=WARNED, now=WORKDAY_10, settings=SETTINGS, windows=WINDOWS):
    return decide(
        balance=D(balance),
        credit_allowance=D(credit),
        settings=settings,
        state=state,
        now=now,
        windows=windows,
    )


# --- trip, and what withholds it ----------------------------------------------------------------


def test_trip_on_a_working_day_after_warning_and_grace():
    decision = run("-5.00")
    # available = -5.00 + 0.00 = -5.00 < 0.00; warned 25 h ago > 24 h; Wednesday 10:00.
    assert (decision.action, decision.reason, decision.blocked_by) == ("trip", "below_trip_threshold", ())
    assert decision.numbers == {
        "balance": "-5.00",
        "credit_allowance": "0.00",
        "available_balance": "-5.00",
        "warning1_threshold": "50.00",
        "warning2_threshold": "20.00",
        "trip_threshold": "0.00",
        "close_threshold": "10.00",
        "grace_ends_at": "2026-11-25T09:00:00+08:00",  # 24 Nov 09:00 + 24 h
    }
    assert "-5.00" in decision.message and "0.00" in decision.message


def test_no_trip_at_23_00_local():
    decision = run("-5.00", now=at(2026, 11, 25, 23))
    assert (decision.action, decision.reason, decision.blocked_by) == (
        "trip_withheld",
        "no_trip_window",
        ("night",),
    )
    assert "22:00-08:00" in decision.message


def test_night_window_is_judged_in_local_time():
    # 15:00 UTC = 23:00 in Shanghai.
    utc = datetime(2026, 11, 25, 15, 0, tzinfo=ZoneInfo("UTC"))
    assert run("-5.00", now=utc).blocked_by == ("night",)
    # 02:00 UTC = 10:00 in Shanghai.
    assert run("-5.00", now=datetime(2026, 11, 25, 2, 0, tzinfo=ZoneInfo("UTC"))).action == "trip"


@pytest.mark.parametrize(
    "hour, minute, action",
    [
        (21, 59, "trip"),
        (22, 0, "trip_withheld"),  # the window starts at 22:00 (inclusive)
        (0, 0, "trip_withheld"),
        (7, 59, "trip_withheld"),
        (8, 0, "trip"),  # and ends at 08:00 (exclusive)
    ],
)
def test_night_window_edges(hour, minute, action):
    assert run("-5.00", now=at(2026, 11, 26, hour, minute)).action == action


def test_no_trip_on_1_october_2026_at_10_00():
    decision = run(
        "-5.00", now=at(2026, 10, 1, 10), state=PolicyState("warning1", warning1_at=at(2026, 9, 29, 9))
    )
    assert (decision.action, decision.blocked_by) == ("trip_withheld", ("holiday",))
    assert "National Day" in decision.message


def test_ordinary_weekend_is_not_a_holiday():
    # Saturday 28 November 2026: a weekend, no festival.
    assert run("-5.00", now=at(2026, 11, 28, 10)).action == "trip"


def test_adjusted_working_saturday_is_not_a_holiday():
    # Saturday 10 October 2026 is a working day in lieu of the National Day holiday.
    state = PolicyState("warning1", warning1_at=at(2026, 10, 9, 9))
    assert run("-5.00", now=at(2026, 10, 10, 10), state=state).action == "trip"


def test_holidays_can_be_switched_off():
    windows = NoTripWindows(night_start=time(22, 0), night_end=time(8, 0), holidays=False)
    state = PolicyState("warning1", warning1_at=at(2026, 9, 29, 9))
    assert run("-5.00", now=at(2026, 10, 1, 10), state=state, windows=windows).action == "trip"


def test_protected_customer_is_never_tripped():
    protected = PolicyState(
        "warning2", warning1_at=at(2026, 11, 1, 9), warning2_at=at(2026, 11, 2, 9), protected=True
    )
    decision = run("-500.00", state=protected)
    assert (decision.action, decision.reason, decision.blocked_by) == (
        "trip_withheld",
        "protected",
        ("protected",),
    )
    # At night too, with every reason recorded.
    night = run("-500.00", state=protected, now=at(2026, 11, 25, 23, 30))
    assert (night.reason, night.blocked_by) == ("protected", ("protected", "night"))


def test_no_trip_inside_a_declared_event():
    windows = NoTripWindows(events=((at(2026, 11, 25, 9), at(2026, 11, 25, 18), "County heat-wave alert"),))
    decision = run("-5.00", windows=windows)
    assert (decision.action, decision.reason, decision.blocked_by) == (
        "trip_withheld",
        "no_trip_window",
        ("event",),
    )
    assert "County heat-wave alert" in decision.message
    # The event ends at 18:00 (exclusive): a trip is allowed then.
    assert run("-5.00", windows=windows, now=at(2026, 11, 25, 18)).action == "trip"


def test_warning_required_first_then_trip_only_after_grace():
    # 1. Below the trip threshold, never warned: the warning goes out instead of a trip.
    first = run("-5.00", state=PolicyState("normal"))
    assert (first.action, first.reason, first.blocked_by) == (
        "warn1",
        "warning_required",
        ("warning_required",),
    )
    # 2. Warned at 10:00; at 10:00 + 23 h 59 min the grace period still runs.
    warned = PolicyState("warning1", warning1_at=WORKDAY_10)
    early = run("-5.00", state=warned, now=WORKDAY_10 + timedelta(hours=23, minutes=59))
    assert (early.action, early.reason, early.blocked_by) == (
        "trip_withheld",
        "grace_period",
        ("grace_period",),
    )
    assert early.numbers["grace_ends_at"] == "2026-11-26T10:00:00+08:00"
    # 3. Exactly 24 h after the warning (26 Nov 10:00, a Thursday): trip.
    assert run("-5.00", state=warned, now=WORKDAY_10 + timedelta(hours=24)).action == "trip"


def test_warning_required_is_sent_inside_a_window_and_for_protected_customers():
    decision = run("-5.00", state=PolicyState("normal", protected=True), now=at(2026, 11, 25, 23))
    assert (decision.action, decision.blocked_by) == ("warn1", ("warning_required", "protected", "night"))


def test_required_level_2_warning():
    level2 = PolicySettings(
        warning1_threshold=D("50.00"),
        warning2_threshold=D("20.00"),
        trip_threshold=D("0.00"),
        close_threshold=D("10.00"),
        required_warning=2,
        grace_period=timedelta(hours=2),
    )
    # Only warning 1 sent: warning 2 is owed before a trip.
    assert run("-5.00", settings=level2).action == "warn2"
    # Warning 2 at 09:00: grace until 11:00.
    state = PolicyState("warning2", warning1_at=at(2026, 11, 24, 9), warning2_at=at(2026, 11, 25, 9))
    assert run("-5.00", settings=level2, state=state, now=at(2026, 11, 25, 10, 59)).action == "trip_withheld"
    assert run("-5.00", settings=level2, state=state, now=at(2026, 11, 25, 11)).action == "trip"


def test_level_2_warning_satisfies_a_level_1_requirement():
    # normal → warning2 directly (a big reading): no level-1 warning was sent; the grace
    # period runs from the level-2 warning at 09:30 → until 26 Nov 09:30.
    state = PolicyState("warning2", warning2_at=at(2026, 11, 25, 9, 30))
    decision = run("-5.00", state=state)
    assert (decision.action, decision.numbers["grace_ends_at"]) == (
        "trip_withheld",
        "2026-11-26T09:30:00+08:00",
    )


def test_no_warning_required():
    none_needed = PolicySettings(
        warning1_threshold=D("50.00"),
        warning2_threshold=D("20.00"),
        trip_threshold=D("0.00"),
        close_threshold=D("10.00"),
        required_warning=0,
        grace_period=timedelta(hours=24),
    )
    assert run("-5.00", settings=none_needed, state=PolicyState("normal")).action == "trip"


def test_stale_warning_timestamps_do_not_count_in_state_normal():
    # A warning from an earlier episode (before the account recovered) does not count.
    state = PolicyState("normal", warning1_at=at(2026, 10, 20, 9))
    assert run("-5.00", state=state).action == "warn1"


# --- close -----------------------------------------------------------------------------------------


def test_close_at_03_00_on_a_holiday_after_a_payment():
    # Tripped at -5.00; a payment of 20.00 → balance 15.00 > close 10.00. 2 October 2026 is
    # a National Day holiday and 03:00 is night: neither stops a close.
    tripped = PolicyState(
        "tripped", warning1_at=at(2026, 9, 28, 9), tripped_at=at(2026, 9, 30, 10), protected=False
    )
    decision = run("15.00", state=tripped, now=at(2026, 10, 2, 3))
    assert (decision.action, decision.reason, decision.blocked_by) == ("close", "above_close_threshold", ())
    assert decision.numbers["available_balance"] == "15.00"


def test_close_ignores_events_and_protection():
    windows = NoTripWindows(events=((at(2026, 11, 25, 0), at(2026, 11, 26, 0), "Storm"),))
    tripped = PolicyState("tripped", tripped_at=at(2026, 11, 20, 10), protected=True)
    assert run("10.01", state=tripped, windows=windows).action == "close"


def test_tripped_stays_tripped_until_above_close_threshold():
    tripped = PolicyState("tripped", tripped_at=at(2026, 11, 20, 10))
    # Exactly at the close threshold is not enough (strict >).
    assert run("10.00", state=tripped).action == "none"
    assert run("10.00", state=tripped).reason == "tripped_below_close_threshold"
    assert run("10.01", state=tripped).action == "close"
    # Still far below: nothing (no second trip).
    assert run("-80.00", state=tripped).action == "none"


# --- credit allowance --------------------------------------------------------------------------------


def test_credit_allowance_counts_towards_available_balance():
    # -30.00 + 35.00 = 5.00: not below trip (0.00) but at or below warning 2 (20.00).
    kept = run("-30.00", credit="35.00", state=PolicyState("warning1", warning1_at=at(2026, 11, 24, 9)))
    assert (kept.action, kept.numbers["available_balance"]) == ("warn2", "5.00")
    # -30.00 + 25.00 = -5.00 < 0.00: trip.
    assert run("-30.00", credit="25.00").action == "trip"
    # Tripped: 0.00 + 15.00 = 15.00 > 10.00: close.
    assert run("0.00", credit="15.00", state=PolicyState("tripped")).action == "close"


# --- the warning ladder and boundaries ----------------------------------------------------------------


@pytest.mark.parametrize(
    "state, available, action",
    [
        ("normal", "60.00", "none"),
        ("normal", "50.01", "none"),
        ("normal", "50.00", "warn1"),  # at the level-1 threshold: warned (<=)
        ("normal", "40.00", "warn1"),
        ("normal", "15.00", "warn2"),  # straight past level 1 to level 2
        ("warning1", "40.00", "none"),
        ("warning1", "20.00", "warn2"),  # at the level-2 threshold: warned (<=)
        ("warning1", "20.01", "none"),
        ("warning2", "15.00", "none"),
        ("warning2", "0.00", "none"),  # exactly at the trip threshold: no trip (strict <)
        ("warning2", "-0.01", "trip"),
        ("warning2", "30.00", "none"),  # between the warnings: stays warned
        ("warning2", "50.00", "none"),  # at level 1: not yet recovered
        ("warning2", "50.01", "recover"),
        ("warning1", "50.01", "recover"),
    ],
)
def test_ladder_and_boundaries(state, available, action):
    policy_state = PolicyState(state, warning1_at=at(2026, 11, 1, 9), warning2_at=at(2026, 11, 2, 9))
    assert run(available, state=policy_state).action == action


# --- validation -----------------------------------------------------------------------------------


def _settings(**overrides):
    values = dict(
        warning1_threshold=D("50"), warning2_threshold=D("20"), trip_threshold=D("0"), close_threshold=D("10")
    )
    values.update(overrides)
    return PolicySettings(**values)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(close_threshold=D("0")), "must be below the close threshold"),
        (dict(close_threshold=D("-1")), "must be below the close threshold"),
        (dict(warning2_threshold=D("60")), "must not be above the level-1 threshold"),
        (
            dict(trip_threshold=D("25"), close_threshold=D("30")),
            "must not be above the level-2 warning threshold",
        ),
        (dict(required_warning=3), "required_warning must be 0, 1 or 2"),
        (dict(grace_period=timedelta(hours=-1)), "grace_period"),
    ],
)
def test_invalid_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        _settings(**overrides)


def test_equal_warning_and_trip_thresholds_are_allowed():
    settings = _settings(
        warning1_threshold=D("20"),
        warning2_threshold=D("20"),
        trip_threshold=D("20"),
        close_threshold=D("30"),
    )
    assert settings.trip_threshold == D("20")


def test_floats_naive_times_and_unknown_states_are_refused():
    with pytest.raises(TypeError):
        _settings(trip_threshold=0.0)
    with pytest.raises(TypeError):
        decide(
            balance=1.5,
            credit_allowance=D("0"),
            settings=SETTINGS,
            state=WARNED,
            now=WORKDAY_10,
            windows=WINDOWS,
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        run("-5.00", now=datetime(2026, 11, 25, 10))
    with pytest.raises(ValueError, match="state must be one of"):
        PolicyState("warned")
    with pytest.raises(ValueError, match="must not be negative"):
        run("-5.00", credit="-1.00")
