"""Load profiles of the simulated meters: how much power a customer draws at a given local
time, by customer category, season, day type and hour, and which time-of-use period
(sharp / peak / flat / valley) that half hour falls in.

Shapes are floats (they are shape factors, not register values); the fleet converts each
half hour's power through ``Decimal(str(round(kw, 4)))`` before it touches a register.

Local time is Asia/Shanghai, which has been UTC+8 all year since 1991 (no daylight saving),
so a fixed offset is exact and much cheaper per frame than a zoneinfo lookup.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache

UTC_OFFSET = 8 * 3600  # Asia/Shanghai
SLOT_SECONDS = 1800  # half-hour slots: TOU periods often start on the half hour
SLOTS_PER_DAY = 48
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

RESIDENTIAL = "residential"
COMMERCIAL = "commercial"
LARGE_INDUSTRY = "large_industry"
AGRICULTURE = "agriculture"
CATEGORIES = (RESIDENTIAL, COMMERCIAL, LARGE_INDUSTRY, AGRICULTURE)
# Mix of a county utility's customers (as in the demo utility: 86/9/1/4 %).
DEFAULT_CATEGORY_WEIGHTS = {RESIDENTIAL: 0.86, COMMERCIAL: 0.09, LARGE_INDUSTRY: 0.01, AGRICULTURE: 0.04}

# TOU periods, numbered as the meter's rate registers: rate 1 = sharp (尖), 2 = peak (峰),
# 3 = flat (平), 4 = valley (谷).
SHARP, PEAK, FLAT, VALLEY = 1, 2, 3, 4

SUMMER, WINTER, SHOULDER = "summer", "winter", "shoulder"


def season_of(month: int) -> str:
    if month in (6, 7, 8, 9):
        return SUMMER
    if month in (12, 1, 2):
        return WINTER
    return SHOULDER


def _tou_pattern(sharp: bool) -> tuple[int, ...]:
    """48 half-hour periods. Valley 00:00-08:00, peak 08:00-11:30 and 17:00-21:00, flat
    otherwise; in the sharp months 10:30-11:30 and 19:00-21:00 are sharp."""
    slots = [FLAT] * SLOTS_PER_DAY

    def mark(start: str, end: str, period: int) -> None:
        h0, m0 = map(int, start.split(":"))
        h1, m1 = map(int, end.split(":"))
        for s in range((h0 * 60 + m0) // 30, (h1 * 60 + m1) // 30):
            slots[s] = period

    mark("00:00", "08:00", VALLEY)
    mark("08:00", "11:30", PEAK)
    mark("17:00", "21:00", PEAK)
    if sharp:
        mark("10:30", "11:30", SHARP)
        mark("19:00", "21:00", SHARP)
    return tuple(slots)


TOU_WITH_SHARP = _tou_pattern(sharp=True)
TOU_WITHOUT_SHARP = _tou_pattern(sharp=False)
SHARP_MONTHS = frozenset({7, 8, 12, 1})


def tou_period(month: int, slot_of_day: int) -> int:
    pattern = TOU_WITH_SHARP if month in SHARP_MONTHS else TOU_WITHOUT_SHARP
    return pattern[slot_of_day]


def _normalised(values: list[float]) -> tuple[float, ...]:
    mean = sum(values) / len(values)
    return tuple(v / mean for v in values)


# Hourly shapes (local hour 0..23), normalised to a mean of 1 so that a category's average
# power stays what the season factor says.
_SHAPES: dict[str, dict[str, tuple[float, ...]]] = {
    RESIDENTIAL: {
        # air conditioning in the afternoon and through the night
        SUMMER: _normalised(
            [0.9, 0.8, 0.75, 0.7, 0.65, 0.65, 0.7, 0.85, 0.8, 0.75, 0.8, 0.95]
            + [1.2, 1.3, 1.35, 1.3, 1.15, 1.2, 1.6, 1.95, 2.0, 1.9, 1.6, 1.2]
        ),
        # electric heating mornings and evenings
        WINTER: _normalised(
            [0.6, 0.5, 0.45, 0.45, 0.45, 0.55, 0.9, 1.4, 1.35, 0.9, 0.8, 0.9]
            + [1.0, 0.85, 0.75, 0.75, 0.85, 1.3, 1.9, 2.0, 1.9, 1.7, 1.3, 0.85]
        ),
        SHOULDER: _normalised(
            [0.4, 0.35, 0.3, 0.3, 0.3, 0.4, 0.75, 1.1, 0.95, 0.7, 0.7, 0.85]
            + [0.95, 0.75, 0.65, 0.65, 0.8, 1.2, 1.8, 1.95, 1.9, 1.6, 1.1, 0.6]
        ),
    },
    COMMERCIAL: {
        SUMMER: _normalised(
            [0.25, 0.22, 0.2, 0.2, 0.2, 0.22, 0.35, 0.7, 1.3, 1.7, 1.85, 1.9]
            + [1.9, 1.95, 1.95, 1.9, 1.8, 1.6, 1.4, 1.3, 1.1, 0.8, 0.45, 0.3]
        ),
        WINTER: _normalised(
            [0.25, 0.22, 0.2, 0.2, 0.2, 0.22, 0.35, 0.75, 1.4, 1.6, 1.6, 1.55]
            + [1.5, 1.5, 1.5, 1.5, 1.5, 1.45, 1.4, 1.3, 1.1, 0.8, 0.45, 0.3]
        ),
        SHOULDER: _normalised(
            [0.25, 0.22, 0.2, 0.2, 0.2, 0.22, 0.35, 0.7, 1.3, 1.5, 1.5, 1.5]
            + [1.45, 1.45, 1.45, 1.45, 1.45, 1.4, 1.3, 1.2, 1.0, 0.75, 0.45, 0.3]
        ),
    },
    # Three shifts: steady high load, a little lower at night and over the lunch break.
    LARGE_INDUSTRY: {
        season: _normalised(
            [0.9, 0.88, 0.88, 0.88, 0.88, 0.9, 0.95, 1.02, 1.08, 1.1, 1.1, 1.05]
            + [0.98, 1.05, 1.1, 1.1, 1.08, 1.05, 1.0, 1.0, 0.98, 0.96, 0.94, 0.92]
        )
        for season in (SUMMER, WINTER, SHOULDER)
    },
    # Irrigation pumps run in daylight (valley-price night pumping for the bigger schemes).
    AGRICULTURE: {
        season: _normalised(
            [0.5, 0.45, 0.45, 0.45, 0.45, 0.6, 1.0, 1.4, 1.6, 1.6, 1.6, 1.5]
            + [1.3, 1.4, 1.6, 1.6, 1.5, 1.3, 1.0, 0.8, 0.7, 0.6, 0.55, 0.5]
        )
        for season in (SUMMER, WINTER, SHOULDER)
    },
}

# Season factor on a category's average power.
_SEASON_FACTOR = {
    RESIDENTIAL: {SUMMER: 1.45, WINTER: 1.3, SHOULDER: 0.85},
    COMMERCIAL: {SUMMER: 1.3, WINTER: 1.1, SHOULDER: 0.9},
    LARGE_INDUSTRY: {SUMMER: 1.05, WINTER: 1.0, SHOULDER: 1.0},
}
# Agriculture follows the irrigation seasons month by month: spring irrigation (April-May),
# the summer peak (July-August), winter irrigation (November); little load otherwise.
_IRRIGATION_FACTOR = {1: 0.1, 2: 0.1, 3: 0.6, 4: 2.2, 5: 2.0, 6: 1.2, 7: 2.8, 8: 2.6, 9: 1.0, 10: 0.4}
_IRRIGATION_FACTOR.update({11: 1.4, 12: 0.2})

# Day-type factor by weekday (Monday = 0).
_DAY_FACTOR = {
    RESIDENTIAL: (0.97, 0.97, 0.97, 0.97, 0.98, 1.06, 1.08),
    COMMERCIAL: (1.1, 1.1, 1.1, 1.1, 1.1, 0.75, 0.6),
    LARGE_INDUSTRY: (1.02, 1.02, 1.02, 1.02, 1.02, 0.92, 0.85),
    AGRICULTURE: (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
}

# Typical average power per contracted kVA (load factor x utilisation), by category.
UTILISATION = {RESIDENTIAL: 0.05, COMMERCIAL: 0.08, LARGE_INDUSTRY: 0.3, AGRICULTURE: 0.08}
# Contracted capacity (kVA) of a generated customer, drawn uniformly in this range.
CAPACITY_KVA = {
    RESIDENTIAL: (4, 10),
    COMMERCIAL: (10, 150),
    LARGE_INDUSTRY: (315, 2500),
    AGRICULTURE: (10, 60),
}
# Unit price of a local cost-control meter's own tariff (yuan/kWh) by category.
LOCAL_UNIT_PRICE = {RESIDENTIAL: "0.5600", COMMERCIAL: "0.8500", LARGE_INDUSTRY: "0.6500"}
LOCAL_UNIT_PRICE[AGRICULTURE] = "0.5000"

# Solar shape for rooftop PV export (reverse energy), hour 0..23.
_SOLAR = (0.0,) * 6 + (0.05, 0.2, 0.45, 0.7, 0.9, 1.0, 1.0, 0.9, 0.7, 0.45, 0.2, 0.05) + (0.0,) * 6
_SOLAR_SEASON = {SUMMER: 1.15, WINTER: 0.65, SHOULDER: 0.9}


@lru_cache(maxsize=4096)
def day_info(day_number: int) -> tuple[int, int, int, str]:
    """(year, month, weekday, season) of a local day counted from 1970-01-01."""
    d = date.fromordinal(_EPOCH_ORDINAL + day_number)
    return d.year, d.month, d.weekday(), season_of(d.month)


def load_factor(category: str, day_number: int, slot_of_day: int) -> float:
    """Power relative to the category's average at this half hour (before the meter's own
    scale and day-to-day variation)."""
    _year, month, weekday, season = day_info(day_number)
    hour = slot_of_day // 2
    shape = _SHAPES[category][season][hour]
    if category == AGRICULTURE:
        seasonal = _IRRIGATION_FACTOR[month]
    else:
        seasonal = _SEASON_FACTOR[category][season]
    return shape * seasonal * _DAY_FACTOR[category][weekday]


def solar_factor(day_number: int, slot_of_day: int) -> float:
    season = day_info(day_number)[3]
    return _SOLAR[slot_of_day // 2] * _SOLAR_SEASON[season]


@lru_cache(maxsize=8)
def peak_shape(category: str) -> float:
    """The highest load factor of a category over the year (to size meters and demand)."""
    best = 0.0
    for season, shapes in _SHAPES[category].items():
        seasonal = (
            max(_IRRIGATION_FACTOR.values()) if category == AGRICULTURE else _SEASON_FACTOR[category][season]
        )
        best = max(best, max(shapes) * seasonal * max(_DAY_FACTOR[category]))
    return best
