"""The set-based lane of ``readings_ingest`` on PostgreSQL: the common case in SQL.

Nearly every daily reading is plain: strings in the usual form, a known meter on its one
installation, a register a little above the meter's latest stored actual reading (or, for
a meter's very first reading, above the registers recorded at installation). For those,
Python only checks the shape of the input and the timestamps (from per-chunk caches), and
hands the raw text to PostgreSQL with COPY. One statement then joins the chunk with
meters, installations, service points and each meter's latest stored reading, applies the
same register checks as the Python validator (a step within the service point's daily
limit, or a register rollover), and inserts the readings of every meter whose readings in
the chunk all pass.

Anything else goes back to the Python validator, meter by meter, so that one meter's
readings are always judged together and in date order by one of the two: input that is
not in the plain form, a quality hint or note, readings named by ``meter_id``, unknown or
uninstalled meters, meters with readings stored on or after the chunk's dates (repeats,
late readings, estimates to replace), meters silent for longer than the look-back, the
first reading after a meter exchange or a reuse, time-of-use registers that do not add up,
and every reading the checks would reject (the Python validator writes the reason a person
reads). The lane never rejects; it accepts or passes on.

The statement's plain INSERT fails with a unique violation if a concurrent delivery stored
one of the same (meter, day) meanwhile; the caller then runs the whole chunk through the
Python validator, which settles such races with ON CONFLICT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo

from django.conf import settings
from django.utils import timezone

ENERGY_KEYS = (
    "forward_total",
    "forward_sharp",
    "forward_peak",
    "forward_flat",
    "forward_valley",
    "reverse_total",
    "reactive_total",
)
_ENERGY = r"[0-9]{1,10}(?:[.][0-9]{1,2})?"
# What the lane takes, key by key: forms that Python's Decimal/datetime and PostgreSQL's
# numeric/timestamptz input read the same way, and that need no COPY escaping.
_PATTERNS = {
    "meter": r"[0-9]{12}",
    "read_date": r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
    "read_at": (
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.][0-9]{1,6})?)?"
        r"(?:[+-][0-9]{2}:[0-9]{2}|Z)"
    ),
    **dict.fromkeys(ENERGY_KEYS, _ENERGY),
    "max_demand_kw": r"[0-9]{1,6}(?:[.][0-9]{1,4})?",
    "remaining_balance": r"-?[0-9]{1,10}(?:[.][0-9]{1,2})?",
}
_REQUIRED = frozenset(("meter", "read_date", "read_at", "forward_total"))


@dataclass(slots=True)
class _Shape:
    """One order of keys seen in the input: its COPY column list and a pattern for the
    tab-joined values."""

    columns: str
    pattern: re.Pattern
    lines: list[str] = field(default_factory=list)


def _shape_of(keys: tuple) -> _Shape | None:
    if not _REQUIRED.issubset(keys) or not all(type(k) is str and k in _PATTERNS for k in keys):
        return None
    pattern = re.compile("\t".join(_PATTERNS[k] for k in keys), re.ASCII)
    return _Shape(", ".join(("pos", *keys)), pattern)


@dataclass
class LaneSplit:
    """A chunk divided between the lane and the Python validator."""

    shapes: list[_Shape]
    lane_size: int
    rest: list[tuple[int, object]]  # (position, raw) for the Python validator
    rest_meter_ids: set[int]
    first_day: date | None  # earliest freeze date in the lane


def split_chunk(
    chunk: list[tuple[int, object]], now: datetime, clock_skew: timedelta, tz: tzinfo | None = None
) -> LaneSplit:
    """Plain readings to the lane (as COPY lines), the rest to Python. A meter named by
    any reading of the rest is left wholly to Python. ``tz`` is the zone of freeze dates
    (the current one if not given; pass it when calling from another thread)."""
    tz = tz or timezone.get_current_timezone()
    latest_read_at = now + clock_skew
    today = timezone.localdate(now, tz)
    shapes: dict[tuple, _Shape | None] = {}
    days: dict[str, tuple[date, datetime] | None] = {}
    read_ats: dict[str, datetime | None] = {}
    lane: list[tuple[int, object, _Shape, str]] = []
    rest: list[tuple[int, object]] = []
    for position, raw in chunk:
        if type(raw) is dict:
            keys = tuple(raw)
            shape = shapes.get(keys, False)
            if shape is False:
                shape = shapes[keys] = _shape_of(keys)
            if shape is not None:
                try:
                    line = "\t".join(raw.values())
                except TypeError:  # a value that is not a string
                    line = None
                if line is not None and shape.pattern.fullmatch(line):
                    read_date, read_at = raw["read_date"], raw["read_at"]
                    day = days.get(read_date, False)
                    if day is False:
                        day = days[read_date] = _day(read_date, tz, clock_skew)
                    at = read_ats.get(read_at, False)
                    if at is False:
                        at = read_ats[read_at] = _instant(read_at)
                    if (
                        day is not None
                        and at is not None
                        and day[0] <= today
                        and day[1] <= at <= latest_read_at
                    ):
                        lane.append((position, raw, shape, line))
                        continue
        rest.append((position, raw))

    rest_addresses, rest_meter_ids = set(), set()
    for _given_at, raw in rest:
        if type(raw) is dict:
            address, meter_id = raw.get("meter"), raw.get("meter_id")
            if type(address) is str:
                rest_addresses.add(address)
            if type(meter_id) is str and meter_id.isascii() and meter_id.isdigit():
                meter_id = int(meter_id)
            if type(meter_id) is int:
                rest_meter_ids.add(meter_id)
    used: dict[int, _Shape] = {}
    lane_size = 0
    for position, raw, shape, line in lane:
        if rest_addresses and raw["meter"] in rest_addresses:
            rest.append((position, raw))
            continue
        shape.lines.append(f"{position}\t{line}\n")
        used[id(shape)] = shape
        lane_size += 1
    first_day = min((d[0] for d in days.values() if d is not None), default=None)
    if len(rest) > 1:
        rest.sort(key=_position)
    return LaneSplit(list(used.values()), lane_size, rest, rest_meter_ids, first_day)


def _position(item) -> int:
    return item[0]


def _day(value: str, tz: tzinfo, clock_skew: timedelta) -> tuple[date, datetime] | None:
    """The freeze date and the earliest moment it can have been read (00:00 local less the
    clock-skew tolerance, as the Python parser has it)."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return None
    return day, timezone.make_aware(datetime.combine(day, time.min), tz) - clock_skew


def _instant(value: str) -> datetime | None:
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        return None
    return instant if instant.utcoffset() is not None else None


_STAGE_DDL = """
CREATE TEMPORARY TABLE kw_lane_stage (
    pos integer NOT NULL, meter text NOT NULL, read_date date NOT NULL, read_at timestamptz NOT NULL,
    forward_total numeric(12, 2) NOT NULL, forward_sharp numeric(12, 2), forward_peak numeric(12, 2),
    forward_flat numeric(12, 2), forward_valley numeric(12, 2), reverse_total numeric(12, 2),
    reactive_total numeric(12, 2), max_demand_kw numeric(10, 4), remaining_balance numeric(12, 2)
) ON COMMIT DROP
"""

# One statement: context per meter, the register checks per reading, the verdict per
# meter, the insert of the meters that pass, and the positions of all the others.
#
# ctx: each meter's latest installation (the lane only takes readings it covers), the
# service point's daily limit (the same expression as the Python path's look-up), the
# latest stored reading of any source since the look-back date, and for meters with none
# whether it is their very first reading on a first installation.
_LANE_SQL = """
WITH meters AS MATERIALIZED (
    SELECT m.id, m.comm_address, m.role, m.transformer_area_id, min(s.read_date) AS first_day
    FROM kw_lane_stage s JOIN metering_meter m ON m.comm_address = s.meter
    GROUP BY m.id
), installations AS MATERIALIZED (
    -- each meter's latest installation, and whether it has others (a reused meter)
    SELECT DISTINCT ON (i.meter_id) i.*, count(*) OVER (PARTITION BY i.meter_id) AS installations
    FROM metering_meterinstallation i JOIN meters mm ON mm.id = i.meter_id
    ORDER BY i.meter_id, i.installed_at DESC
), ctx AS MATERIALIZED (
    SELECT mm.id AS meter_id, mm.comm_address, i.service_point_id,
           (i.installed_at AT TIME ZONE %(tz)s)::date AS installed_on,
           (i.installed_at AT TIME ZONE %(tz)s + interval '1 day' - interval '1 microsecond')::date
               AS first_date,
           (i.removed_at AT TIME ZONE %(tz)s)::date AS last_date,
           CASE WHEN i.initial_registers ->> 'forward_total' ~ '^ *[0-9]{1,10}([.][0-9]*)? *$'
                THEN round((i.initial_registers ->> 'forward_total')::numeric, 2) END AS baseline,
           CASE WHEN c.contracted_capacity_kva > 0
                THEN c.contracted_capacity_kva * %(hours)s * %(headroom)s / (sp.ct_ratio * sp.pt_ratio)
                WHEN mm.role = 'area' AND ta.transformer_capacity_kva > 0
                THEN ta.transformer_capacity_kva * %(hours)s * %(headroom)s
                ELSE %(ceiling)s END AS max_daily,
           latest.read_date AS latest_date, latest.forward_total AS latest_total,
           latest.source AS latest_source, mm.first_day,
           CASE WHEN latest.read_date IS NULL THEN
               i.installations = 1
               AND NOT EXISTS (SELECT 1 FROM metering_dailyreading d WHERE d.meter_id = mm.id)
               AND NOT EXISTS (
                   SELECT 1 FROM metering_meterinstallation e
                   WHERE e.service_point_id = i.service_point_id AND e.installed_at < i.installed_at)
           END AS fresh
    FROM meters mm
    JOIN installations i ON i.meter_id = mm.id
    LEFT JOIN customers_servicepoint sp ON sp.id = i.service_point_id
    LEFT JOIN customers_customer c ON c.id = sp.customer_id
    LEFT JOIN core_transformerarea ta ON ta.id = mm.transformer_area_id
    LEFT JOIN LATERAL (
        SELECT d.read_date, d.forward_total, d.source FROM metering_dailyreading d
        WHERE d.meter_id = mm.id AND d.read_date >= %(since)s AND d.read_date <= %(today)s
        ORDER BY d.read_date DESC LIMIT 1
    ) latest ON true
    WHERE NOT (mm.id = ANY(%(excluded)s::bigint[]))
), paired AS (
    SELECT s.*, x.meter_id, x.service_point_id, x.max_daily,
           x.first_date <= s.read_date AND (x.last_date IS NULL OR s.read_date <= x.last_date)
           AND CASE WHEN x.latest_date IS NOT NULL
                    THEN x.latest_source <> 'estimated' AND x.latest_date < x.first_day
                         AND x.latest_date >= x.first_date
                    ELSE x.fresh END AS usable,
           coalesce(lag(s.read_date) OVER w, x.latest_date, x.installed_on) AS base_date,
           CASE WHEN lag(s.read_date) OVER w IS NOT NULL THEN lag(s.forward_total) OVER w
                WHEN x.latest_date IS NOT NULL THEN x.latest_total
                ELSE x.baseline END AS base_total,
           lag(s.read_date) OVER w IS NOT DISTINCT FROM s.read_date AS repeated
    FROM kw_lane_stage s JOIN ctx x ON x.comm_address = s.meter
    WINDOW w AS (PARTITION BY x.meter_id ORDER BY s.read_date)
), judged AS (
    SELECT p.*,
           CASE WHEN NOT p.usable OR p.repeated THEN 'x'
                WHEN p.forward_sharp IS NOT NULL OR p.forward_peak IS NOT NULL
                     OR p.forward_flat IS NOT NULL OR p.forward_valley IS NOT NULL THEN
                    CASE WHEN abs(coalesce(p.forward_sharp, 0) + coalesce(p.forward_peak, 0)
                                  + coalesce(p.forward_flat, 0) + coalesce(p.forward_valley, 0)
                                  - p.forward_total) > p.forward_total * %(tou_ratio)s + %(tou_kwh)s
                         THEN 'x' END
           END AS blocked,
           greatest(1, p.read_date - p.base_date) * p.max_daily AS step_limit
    FROM paired p
), verdicts AS (
    SELECT j.*,
           CASE WHEN j.blocked IS NOT NULL THEN 'x'
                WHEN j.base_total IS NULL THEN 'valid'
                WHEN j.forward_total >= j.base_total THEN
                    CASE WHEN j.forward_total - j.base_total <= j.step_limit THEN 'valid' ELSE 'x' END
                WHEN j.base_total < %(rollover)s
                     AND j.forward_total + %(rollover)s - j.base_total <= j.step_limit THEN 'rollover'
                ELSE 'x'
           END AS verdict
    FROM judged j
), passed AS MATERIALIZED (
    SELECT v.* FROM (
        SELECT v.*, bool_and(v.verdict <> 'x') OVER (PARTITION BY v.meter_id) AS meter_passes
        FROM verdicts v
    ) v WHERE v.meter_passes
), stored AS (
    INSERT INTO metering_dailyreading (
        meter_id, read_date, read_at, service_point_id, forward_total, forward_sharp, forward_peak,
        forward_flat, forward_valley, reverse_total, reactive_total, max_demand_kw, remaining_balance,
        source, quality, quality_note, batch_id)
    SELECT meter_id, read_date, read_at, service_point_id, forward_total, forward_sharp, forward_peak,
           forward_flat, forward_valley, reverse_total, reactive_total, max_demand_kw, remaining_balance,
           %(source)s, verdict, CASE WHEN verdict = 'rollover' THEN %(rollover_note)s ELSE '' END,
           %(batch)s
    FROM passed ORDER BY meter_id, read_date
    RETURNING 1
)
SELECT (SELECT count(*) FROM stored),
       array(SELECT s.pos FROM kw_lane_stage s WHERE NOT EXISTS (SELECT 1 FROM passed p WHERE p.pos = s.pos))
"""


def store_lane(
    cursor, split: LaneSplit, *, batch_id: int, source: str, params: dict
) -> tuple[int, list[int]]:
    """COPY the lane's readings and store the plain ones. Returns how many were stored
    and the positions of the readings the Python validator has to judge. Raises IntegrityError (from the plain
    INSERT) if another delivery stored one of the same (meter, day) meanwhile."""
    cursor.execute("DROP TABLE IF EXISTS pg_temp.kw_lane_stage")
    cursor.execute(_STAGE_DDL)
    for shape in split.shapes:
        with cursor.cursor.copy(f"COPY kw_lane_stage ({shape.columns}) FROM STDIN") as copy:
            lines = shape.lines
            for start in range(0, len(lines), 10_000):
                copy.write("".join(lines[start : start + 10_000]))
    # The planner needs the chunk's size to choose hash joins over look-ups one by one.
    cursor.execute("ANALYZE kw_lane_stage")
    cursor.execute(
        _LANE_SQL,
        {
            **params,
            "tz": settings.TIME_ZONE,
            "excluded": sorted(split.rest_meter_ids),
            "batch": batch_id,
            "source": source,
        },
    )
    stored, passed_on = cursor.fetchone()
    cursor.execute("DROP TABLE kw_lane_stage")
    return stored, passed_on
