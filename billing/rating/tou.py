"""Time-of-use: which band a moment falls in, and splitting 15-minute interval data by band.

Periods start and end on whole or half hours, so a day is 48 half-hour slots; a tariff's
periods are compiled once into a month -> 48-slot table (cached on the TariffSpec) and every
lookup is an index into it. A 15-minute interval is billed in the band of its start.
"""

from collections.abc import Callable, Iterable
from datetime import date, datetime, time
from decimal import Decimal

from billing.rating.model import FLAT, TariffSpec, TouPeriod

SLOTS_PER_DAY = 48


def slot_of(moment: time) -> int:
    return moment.hour * 2 + moment.minute // 30


def period_slots(period: TouPeriod) -> list[int]:
    """Half-hour slots covered by a period; end 00:00 is midnight; end before start wraps."""
    start = slot_of(period.start)
    end = slot_of(period.end) if period.end != time(0, 0) else SLOTS_PER_DAY
    if end > start:
        return list(range(start, end))
    return list(range(start, SLOTS_PER_DAY)) + list(range(0, end))


def half_hour_table(periods: Iterable[TouPeriod]) -> dict[int, tuple[str | None, ...]]:
    table: dict[int, list[str | None]] = {}
    for period in periods:
        for month in period.months:
            slots = table.setdefault(month, [None] * SLOTS_PER_DAY)
            for slot in period_slots(period):
                slots[slot] = period.band
    return {month: tuple(slots) for month, slots in table.items()}


def band_at(tariff: TariffSpec, moment: datetime, is_holiday: Callable[[date], bool] | None = None) -> str:
    """The band the local ``moment`` is billed in: the holiday band on a public holiday (if the
    tariff has one), else the TOU period of that month and time; "flat" without TOU periods."""
    if tariff.holiday_band and is_holiday is not None and is_holiday(moment.date()):
        return tariff.holiday_band
    if not tariff.tou_periods:
        return FLAT
    slots = tariff.half_hour_bands.get(moment.month)
    band = slots[slot_of(moment.time())] if slots else None
    if band is None:
        raise ValueError(f"tariff {tariff.code} has no time-of-use period for {moment:%Y-%m-%d %H:%M}")
    return band


def split_intervals(
    tariff: TariffSpec,
    intervals: Iterable[tuple[datetime, Decimal]],
    is_holiday: Callable[[date], bool] | None = None,
) -> dict[str, Decimal]:
    """Sum interval kWh (keyed by each interval's local start) into bands."""
    totals: dict[str, Decimal] = {}
    if not tariff.tou_periods and not tariff.holiday_band:
        total = sum((kwh for _, kwh in intervals), Decimal("0"))
        return {FLAT: total}
    table = tariff.half_hour_bands
    holiday_band = tariff.holiday_band if is_holiday is not None else None
    holiday_cache: dict[date, bool] = {}
    for start, kwh in intervals:
        if holiday_band:
            day = start.date()
            holiday = holiday_cache.get(day)
            if holiday is None:
                holiday = holiday_cache[day] = bool(is_holiday(day))
            if holiday:
                totals[holiday_band] = totals.get(holiday_band, Decimal("0")) + kwh
                continue
        if not tariff.tou_periods:
            band = FLAT
        else:
            slots = table.get(start.month)
            band = slots[start.hour * 2 + start.minute // 30] if slots else None
            if band is None:
                raise ValueError(f"tariff {tariff.code} has no time-of-use period for {start:%Y-%m-%d %H:%M}")
        totals[band] = totals.get(band, Decimal("0")) + kwh
    return totals
