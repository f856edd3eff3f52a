"""No-trip windows: night hours, statutory public holidays, declared events.

Public holidays
---------------
A day is a *statutory holiday* when ``chinese_calendar.get_holiday_detail`` says it is a
day off **and** names a festival: the official schedule's holiday blocks, including the
weekend days and days in lieu moved into them (e.g. 1-7 October). Ordinary weekends are
*not* holidays here (the article's concern is public holidays; a county utility trips on
Saturdays), and the adjusted working Saturdays and Sundays (调休上班) are working days.

``chinese_calendar`` ships the State Council's schedule only for the years it was published
(it raises NotImplementedError outside them, e.g. for 2027 in version 1.11). For such a
year the fixed-date national holidays stand in: 1 January, 1-3 May, 1-7 October. The lunar
festivals (Spring Festival, Qingming, Dragon Boat, Mid-Autumn) cannot be known without the
schedule and are **not** covered by the fallback; a warning is logged once per such year,
and upgrading ``chinesecalendar`` when the State Council publishes the next year's
schedule (each November or December) is the fix.

Time
----
Night hours and holiday days are judged in the utility's local zone (Asia/Shanghai by
default); ``now`` must be timezone-aware. A window is half-open: night 22:00-08:00 means
22:00 is inside and 08:00 is outside; an event ``(start, end, name)`` covers
``start <= now < end``; a holiday covers its local date from 00:00 to the next 00:00.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import chinese_calendar

logger = logging.getLogger(__name__)

DEFAULT_TZ = "Asia/Shanghai"

# Used only for years chinese_calendar has no schedule for (see the module docstring).
FALLBACK_HOLIDAYS: dict[tuple[int, int], str] = {
    (1, 1): "New Year's Day",
    **{(5, d): "Labour Day" for d in (1, 2, 3)},
    **{(10, d): "National Day" for d in range(1, 8)},
}

# Codes that say why a trip is withheld at this moment (used in Decision.blocked_by).
NIGHT = "night"
HOLIDAY = "holiday"
EVENT = "event"

_warned_years: set[int] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True)
class NoTripWindows:
    """When no trip may be carried out. ``night_start``/``night_end`` are local times (a
    window that crosses midnight when start > end; no night window when either is None or
    they are equal); ``holidays`` turns the statutory-holiday window on; ``events`` are
    declared periods ``(start, end, name)`` with aware datetimes (exams, festivals, heat
    waves, disasters)."""

    night_start: time | None = time(22, 0)
    night_end: time | None = time(8, 0)
    holidays: bool = True
    events: tuple[tuple[datetime, datetime, str], ...] = ()

    def __post_init__(self):
        events = tuple(tuple(e) for e in self.events)
        for event in events:
            if len(event) != 3:
                raise ValueError("each declared event is (start, end, name)")
            start, end, name = event
            if start.tzinfo is None or end.tzinfo is None:
                raise ValueError(f"declared event {name!r}: start and end must be timezone-aware")
            if not start < end:
                raise ValueError(f"declared event {name!r}: the start must be before the end")
        object.__setattr__(self, "events", events)

    @property
    def has_night(self) -> bool:
        return (
            self.night_start is not None and self.night_end is not None and self.night_start != self.night_end
        )


# --- holidays ---------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def holiday_name(day: date) -> str | None:
    """The statutory holiday ``day`` belongs to (e.g. "National Day"), or None."""
    try:
        on_holiday, name = chinese_calendar.get_holiday_detail(day)
    except NotImplementedError:
        _warn_no_schedule(day.year)
        return FALLBACK_HOLIDAYS.get((day.month, day.day))
    return name if on_holiday and name else None


def is_statutory_holiday(day: date) -> bool:
    return holiday_name(day) is not None


def _warn_no_schedule(year: int) -> None:
    with _warned_lock:
        if year in _warned_years:
            return
        _warned_years.add(year)
    logger.warning(
        "chinese_calendar has no holiday schedule for %s: only the fixed-date holidays "
        "(1 Jan, 1-3 May, 1-7 Oct) count as no-trip days; upgrade chinesecalendar",
        year,
    )


# --- windows ----------------------------------------------------------------------------


def _local(now: datetime, tz: str) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(ZoneInfo(tz))


def in_night(local_time: time, windows: NoTripWindows) -> bool:
    if not windows.has_night:
        return False
    start, end = windows.night_start, windows.night_end
    if start < end:
        return start <= local_time < end
    return local_time >= start or local_time < end  # crosses midnight


def active_windows(now: datetime, windows: NoTripWindows, tz: str = DEFAULT_TZ) -> list[tuple[str, str]]:
    """The no-trip windows ``now`` falls in, as ``(code, detail)`` pairs in the order
    event, holiday, night (most specific first)."""
    local = _local(now, tz)
    found: list[tuple[str, str]] = []
    for start, end, name in windows.events:
        if start <= now < end:
            found.append((EVENT, name))
    if windows.holidays:
        name = holiday_name(local.date())
        if name:
            found.append((HOLIDAY, name))
    if in_night(local.time(), windows):
        found.append((NIGHT, f"{windows.night_start:%H:%M}-{windows.night_end:%H:%M}"))
    return found


def next_trip_allowed_at(now: datetime, windows: NoTripWindows, tz: str = DEFAULT_TZ) -> datetime:
    """The first moment at or after ``now`` outside every no-trip window (``now`` itself
    if it is outside them all), in the zone ``tz``. Windows that follow one another are
    chained: a night that ends at 08:00 on the first day of a holiday block leads to the
    midnight after the block and then to 08:00 of the next morning.

    Protection and the warning grace period are not windows; the caller combines this
    with them (e.g. ``max(next_trip_allowed_at(...), warning_at + grace_period)``)."""
    zone = ZoneInfo(tz)
    moment = _local(now, tz)
    # Each step moves to the end of one window; a year of chained holidays and nights is
    # far below this bound, which only guards against a misconfiguration looping forever.
    for _ in range(2000):
        later = moment
        for start, end, _name in windows.events:
            if start <= later < end:
                later = end.astimezone(zone)
        if windows.holidays and holiday_name(later.date()):
            later = _next_midnight(later, zone)
        if in_night(later.time(), windows):
            later = _night_end_after(later, windows, zone)
        if later == moment:
            return moment
        moment = later
    raise ValueError("no moment outside the no-trip windows within the search horizon")


def _next_midnight(moment: datetime, zone: ZoneInfo) -> datetime:
    return datetime.combine(moment.date() + timedelta(days=1), time(0, 0), tzinfo=zone)


def _night_end_after(moment: datetime, windows: NoTripWindows, zone: ZoneInfo) -> datetime:
    """The end of the night window ``moment`` is in (today's or tomorrow's ``night_end``)."""
    end_today = datetime.combine(moment.date(), windows.night_end, tzinfo=zone)
    if end_today > moment:
        return end_today
    return datetime.combine(moment.date() + timedelta(days=1), windows.night_end, tzinfo=zone)
