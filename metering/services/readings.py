"""The one path by which daily readings enter the system: collection runs, the external
batch API, manual entry and estimation all call ``readings_ingest``.

How a delivery is processed
---------------------------
A delivery is a ``ReadingBatch`` identified by (source, external_id). Its row is created
first (committed on its own), then the readings are processed in chunks of
``CHUNK_SIZE``, each chunk in one transaction that also adds the chunk's counts to the
batch. ``completed_at`` is set when the last chunk is done. So:

- a batch delivered again after it completed stores nothing and returns the first result;
- a batch interrupted half-way (worker killed, connection lost) is resumed by the next
  delivery of the same batch id, from the first reading not yet counted (a re-delivery is
  expected to carry the same readings in the same order, as a retried request does);
- two deliveries of the same batch at the same time cannot both store it: each chunk
  transaction locks the batch row and checks that nobody else advanced it.

Per chunk: one query resolves the meters (with their installations, service points,
multipliers and contracted capacity), three queries fetch the stored readings around the
chunk's dates (the same dates, the latest before, the earliest after), validation runs in
Python on dicts, accepted rows go to PostgreSQL by COPY into a temporary table and
``INSERT ... SELECT ... ON CONFLICT (meter_id, read_date)``, so a reading stored by a
concurrent delivery in the meantime is still never stored twice. Other databases (the
SQLite demo mode) take a portable ``bulk_create`` path with the same validation.

Validation (each rejection keeps the input verbatim with a reason a person can read)
-------------------------------------------------------------------------------------
unknown meter; meter not installed on the freeze date (per ``MeterInstallation``);
malformed input; future timestamps (``read_at`` beyond now + 5 min of clock skew, a freeze
date after today in the utility's zone, or after the time it was read); a register below
the previous reading without rollover or exchange; consumption more than the service
point could draw; same meter and day stored with other values; a late reading that does
not fit between its stored neighbours. Accepted readings carry a quality: rollover (the
6-digit register wrapped at ``REGISTER_ROLLOVER``), exchange (first after a meter
exchange, measured from the installation's initial registers), out_of_order (fits between
its neighbours), suspect (time-of-use registers do not add up to the total), estimated.
An actual reading replaces an estimated one stored for the same meter and day.

Registers are secondary-side values; the capacity limit is therefore
contracted kVA × 24 h × 1.2 ÷ (CT ratio × PT ratio) per day.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import partial

import structlog
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, Max, Min, OuterRef, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from core.exceptions import Conflict, ValidationError
from core.money import ROUNDING, quantize_energy, quantize_yuan, to_decimal
from metering.hooks import notify_readings_stored
from metering.models import (
    REGISTER_ROLLOVER,
    DailyReading,
    Meter,
    MeterInstallation,
    MeterStatus,
    ReadingBatch,
    ReadingQuality,
    ReadingSource,
    RejectedReading,
    RejectionReason,
)

logger = structlog.get_logger(__name__)

CHUNK_SIZE = 20_000
CLOCK_SKEW = timedelta(minutes=5)
CAPACITY_HEADROOM = Decimal("1.2")
HOURS_PER_DAY = 24
TOU_TOLERANCE_RATIO = Decimal("0.001")
TOU_TOLERANCE_KWH = Decimal("0.02")
# Per-day register advance allowed when no service point (or capacity) is known: the most
# a direct-connected three-phase 100 A meter can register in a day (~1,580 kWh), rounded
# up. Override with settings.METERING_DAILY_CEILING_KWH.
DEFAULT_DAILY_CEILING_KWH = Decimal("2000")
# The previous reading of a meter is looked for in this many days first (a handful of
# monthly partitions); only meters with nothing in that window search further back.
PREVIOUS_LOOKBACK_DAYS = 40

# DecimalField(max_digits=12, decimal_places=2): at most 10 digits before the point.
ENERGY_LIMIT = Decimal("10000000000")
DEMAND = Decimal("0.0001")
DEMAND_LIMIT = Decimal("1000000")  # max_digits=10, decimal_places=4

ENERGY_FIELDS = (
    "forward_total",
    "forward_sharp",
    "forward_peak",
    "forward_flat",
    "forward_valley",
    "reverse_total",
    "reactive_total",
)
VALUE_FIELDS = (*ENERGY_FIELDS, "max_demand_kw", "remaining_balance")
TOTAL, SHARP, PEAK, FLAT, VALLEY = range(5)
QUALITY_HINTS = {None, ReadingQuality.VALID, ReadingQuality.ESTIMATED, ReadingQuality.SUSPECT}

_OK, _ROLLOVER, _DECREASE, _JUMP = range(4)


# --- the service -------------------------------------------------------------------------


def readings_ingest(
    *, source: str, external_id: str, readings: Iterable[dict], submitted_by: str = ""
) -> ReadingBatch:
    """Validate and store one delivery of daily readings; idempotent per (source, external_id).

    Each reading is a dict with ``meter`` (12-digit communication address) or ``meter_id``;
    ``read_date`` (date or ``YYYY-MM-DD``); ``read_at`` (aware datetime or ISO 8601 string
    with offset); ``forward_total`` and optionally ``forward_sharp``, ``forward_peak``,
    ``forward_flat``, ``forward_valley``, ``reverse_total``, ``reactive_total`` (kWh/kvarh),
    ``max_demand_kw``, ``remaining_balance`` (yuan) as Decimal, int or numeric string; and
    optional hints ``quality`` ("estimated" or "suspect") and ``quality_note``.

    Returns the batch with its counts (accepted, duplicates, rejected, flagged = accepted but
    suspect); ``batch.first_delivery`` tells whether this call created it. Rejected input is
    in ``batch.rejections``. Raises ``Conflict`` when the same batch is being stored by
    another delivery right now.
    """
    if source not in ReadingSource.values:
        raise ValidationError(
            _("Unknown reading source %(source)s.") % {"source": source},
            field_errors={"source": [_("Choose one of: %s.") % ", ".join(ReadingSource.values)]},
        )
    external_id = (external_id or "").strip()
    if not external_id or len(external_id) > 64:
        raise ValidationError(
            _("A batch needs an id of 1 to 64 characters."),
            field_errors={"batch_id": [_("Give an id of 1 to 64 characters.")]},
        )
    batch, created = ReadingBatch.objects.get_or_create(
        source=source, external_id=external_id, defaults={"submitted_by": submitted_by[:150]}
    )
    if batch.completed_at is None:
        _ingest_remaining(batch, readings)
        batch.refresh_from_db()
    batch.first_delivery = created
    return batch


def _ingest_remaining(batch: ReadingBatch, readings: Iterable[dict]) -> None:
    done = _processed(batch)
    fast = _pg_fast_path()
    chunk_size = CHUNK_SIZE if fast else 2_000
    numbered = itertools.islice(enumerate(readings), done, None)
    for chunk in _chunks(numbered, chunk_size):
        now = timezone.now()
        parsed, rejections = _parse_chunk(chunk, now)
        with transaction.atomic():
            _lock_batch(batch.pk, expected_processed=done)
            counts = _store_chunk(batch, parsed, rejections, fast=fast)
            ReadingBatch.objects.filter(pk=batch.pk).update(
                accepted=F("accepted") + counts.accepted,
                duplicates=F("duplicates") + counts.duplicates,
                rejected=F("rejected") + counts.rejected,
                flagged=F("flagged") + counts.flagged,
            )
        done += len(chunk)
    with transaction.atomic():
        locked = _lock_batch(batch.pk, expected_processed=done)
        if locked.completed_at is None:
            ReadingBatch.objects.filter(pk=batch.pk).update(completed_at=timezone.now())
            if locked.accepted:
                transaction.on_commit(partial(notify_readings_stored, batch.pk))
    logger.info(
        "readings_ingested",
        batch_id=batch.pk,
        source=batch.source,
        external_id=batch.external_id,
        accepted=locked.accepted,
        duplicates=locked.duplicates,
        rejected=locked.rejected,
        flagged=locked.flagged,
    )


def _processed(batch: ReadingBatch) -> int:
    # Every reading ends up exactly once in accepted, duplicates or rejected (flagged is a
    # part of accepted), so this is the number of input readings already dealt with.
    return batch.accepted + batch.duplicates + batch.rejected


def _lock_batch(batch_id: int, *, expected_processed: int) -> ReadingBatch:
    locked = ReadingBatch.objects.select_for_update().get(pk=batch_id)
    if _processed(locked) != expected_processed:
        raise Conflict(
            _(
                "Batch %(batch)s is being stored by another delivery right now. "
                "Ask for its result again in a moment."
            )
            % {"batch": locked.external_id},
            code="batch_in_progress",
        )
    return locked


def _chunks(iterator: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _pg_fast_path() -> bool:
    return connection.vendor == "postgresql"


def _daily_ceiling() -> Decimal:
    return to_decimal(getattr(settings, "METERING_DAILY_CEILING_KWH", DEFAULT_DAILY_CEILING_KWH))


# --- parsing -----------------------------------------------------------------------------


class _Rejected(Exception):  # noqa: N818 - control flow inside this module, never raised out
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class _Reading:
    """One parsed input reading on its way through validation."""

    __slots__ = (
        "position",
        "raw",
        "meter_id",
        "address",
        "read_date",
        "read_at",
        "values",
        "hint",
        "hint_note",
        "quality",
        "note",
        "service_point_id",
    )

    def __init__(self, position, raw, meter_id, address, read_date, read_at, values, hint, hint_note):
        self.position = position
        self.raw = raw
        self.meter_id = meter_id
        self.address = address
        self.read_date = read_date
        self.read_at = read_at
        self.values = values
        self.hint = hint
        self.hint_note = hint_note
        self.quality = ReadingQuality.VALID
        self.note = ""
        self.service_point_id = None


@dataclass
class _Rejection:
    position: int
    raw: object
    reason: str
    message: str
    meter_id: int | None = None
    address: str = ""
    read_date: date | None = None


def _parse_chunk(chunk: list[tuple[int, object]], now: datetime) -> tuple[list[_Reading], list[_Rejection]]:
    latest_read_at = now + CLOCK_SKEW
    today = timezone.localdate(now)
    freeze_cache: dict[date, datetime] = {}
    parsed, rejections = [], []
    for position, raw in chunk:
        try:
            parsed.append(_parse(position, raw, latest_read_at, today, freeze_cache))
        except _Rejected as exc:
            rejections.append(_rejection_from_raw(position, raw, exc))
    return parsed, rejections


def _rejection_from_raw(position: int, raw, exc: _Rejected) -> _Rejection:
    address, read_date, meter_id = "", None, None
    if isinstance(raw, dict):
        given = raw.get("meter")
        if given is None and raw.get("meter_id") is not None:
            given = raw.get("meter_id")
        address = "" if given is None else _clean_text(str(given))[:64]
        value = raw.get("read_date")
        if isinstance(value, date) and not isinstance(value, datetime):
            read_date = value
        elif isinstance(value, str):
            try:
                read_date = date.fromisoformat(value)
            except ValueError:
                read_date = None
    return _Rejection(position, raw, exc.reason, exc.message, meter_id, address, read_date)


def _parse(position, raw, latest_read_at, today, freeze_cache) -> _Reading:
    if not isinstance(raw, dict):
        raise _Rejected(RejectionReason.MALFORMED, _("A reading must be an object with named fields."))
    get = raw.get
    meter_id = get("meter_id")
    address = get("meter")
    if meter_id is not None:
        if type(meter_id) is str and meter_id.isascii() and meter_id.isdigit():
            meter_id = int(meter_id)
        elif type(meter_id) is not int:
            raise _Rejected(RejectionReason.MALFORMED, _("meter_id must be a whole number."))
    elif address is None:
        raise _Rejected(
            RejectionReason.MALFORMED,
            _("The reading names no meter: give meter (the 12-digit address) or meter_id."),
        )
    if address is not None and not (
        type(address) is str and len(address) == 12 and address.isascii() and address.isdigit()
    ):
        raise _Rejected(
            RejectionReason.MALFORMED,
            _("Meter address %(address)s is not 12 decimal digits.") % {"address": _clean_text(str(address))},
        )

    read_date = get("read_date")
    if type(read_date) is str:
        try:
            read_date = date.fromisoformat(read_date)
        except ValueError:
            raise _Rejected(
                RejectionReason.MALFORMED,
                _("read_date %(value)s is not a date (YYYY-MM-DD).") % {"value": _clean_text(read_date)},
            ) from None
    elif type(read_date) is not date:
        raise _Rejected(RejectionReason.MALFORMED, _("read_date is missing or not a date (YYYY-MM-DD)."))

    read_at = get("read_at")
    if type(read_at) is str:
        try:
            read_at = datetime.fromisoformat(read_at)
        except ValueError:
            raise _Rejected(
                RejectionReason.MALFORMED,
                _("read_at %(value)s is not an ISO 8601 date and time.") % {"value": _clean_text(read_at)},
            ) from None
    elif not isinstance(read_at, datetime):
        raise _Rejected(RejectionReason.MALFORMED, _("read_at is missing or not a date and time."))
    if read_at.tzinfo is None or read_at.utcoffset() is None:
        raise _Rejected(
            RejectionReason.MALFORMED, _("read_at has no time zone offset (e.g. 2026-03-01T00:15:00+08:00).")
        )

    if read_at > latest_read_at:
        raise _Rejected(
            RejectionReason.FUTURE_TIMESTAMP,
            _("Read at %(read_at)s, which is in the future (more than 5 minutes ahead of the server clock).")
            % {"read_at": read_at.isoformat()},
        )
    if read_date > today:
        raise _Rejected(
            RejectionReason.FUTURE_TIMESTAMP,
            _("Freeze date %(date)s is after today (%(today)s).") % {"date": read_date, "today": today},
        )
    freeze_at = freeze_cache.get(read_date)
    if freeze_at is None:
        freeze_at = freeze_cache[read_date] = timezone.make_aware(datetime.combine(read_date, time.min))
    if read_at + CLOCK_SKEW < freeze_at:
        raise _Rejected(
            RejectionReason.FUTURE_TIMESTAMP,
            _("Freeze date %(date)s is after the time the reading was taken (%(read_at)s).")
            % {"date": read_date, "read_at": read_at.isoformat()},
        )

    total = get("forward_total")
    if total is None:
        raise _Rejected(RejectionReason.MALFORMED, _("forward_total is missing."))
    values = [_energy(total, "forward_total")]
    for name in ENERGY_FIELDS[1:]:
        value = get(name)
        values.append(None if value is None else _energy(value, name))
    value = get("max_demand_kw")
    values.append(None if value is None else _demand(value))
    value = get("remaining_balance")
    values.append(None if value is None else _balance(value))

    hint = get("quality")
    if hint not in QUALITY_HINTS:
        raise _Rejected(
            RejectionReason.MALFORMED,
            _("quality may only be estimated or suspect, not %(value)s.") % {"value": _clean_text(str(hint))},
        )
    hint_note = get("quality_note") or ""
    if type(hint_note) is not str:
        hint_note = str(hint_note)
    return _Reading(position, raw, meter_id, address, read_date, read_at, tuple(values), hint, hint_note)


def _not_a_number(name, value) -> _Rejected:
    return _Rejected(
        RejectionReason.MALFORMED,
        _("%(field)s is not a number: %(value)s.") % {"field": name, "value": _clean_text(str(value))[:40]},
    )


def _energy(value, name: str) -> Decimal:
    try:
        energy = quantize_energy(value)
    except (TypeError, ValueError, ArithmeticError):
        raise _not_a_number(name, value) from None
    if energy < 0:
        raise _Rejected(
            RejectionReason.MALFORMED,
            _("%(field)s is negative: %(value)s.") % {"field": name, "value": energy},
        )
    if energy >= ENERGY_LIMIT:
        raise _Rejected(
            RejectionReason.MALFORMED,
            _("%(field)s is too large for a register: %(value)s.") % {"field": name, "value": energy},
        )
    return energy


def _demand(value) -> Decimal:
    try:
        demand = to_decimal(value).quantize(DEMAND, rounding=ROUNDING)
    except (TypeError, ValueError, ArithmeticError):
        raise _not_a_number("max_demand_kw", value) from None
    if not 0 <= demand < DEMAND_LIMIT:
        raise _Rejected(
            RejectionReason.MALFORMED,
            _("max_demand_kw is out of range: %(value)s.") % {"value": demand},
        )
    return demand


def _balance(value) -> Decimal:
    try:
        balance = quantize_yuan(value)
    except (TypeError, ValueError, ArithmeticError):
        raise _not_a_number("remaining_balance", value) from None
    if abs(balance) >= ENERGY_LIMIT:
        raise _Rejected(
            RejectionReason.MALFORMED, _("remaining_balance is out of range: %(value)s.") % {"value": balance}
        )
    return balance


def _clean_text(text: str) -> str:
    # PostgreSQL text and jsonb cannot hold NUL characters.
    return text.replace("\x00", "\\x00")


def _json_safe(value):
    """The input as received, in a form JSON (and PostgreSQL jsonb) can hold: numbers that
    are not int (Decimal, float) and dates become their text, exactly as given."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, dict):
        return {_clean_text(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return _clean_text(str(value))


# --- meters and installations ------------------------------------------------------------


@dataclass(slots=True)
class _Installation:
    service_point_id: int | None
    first_date: date  # first freeze (00:00 local) at or after installation
    last_date: date | None  # last freeze before removal; None while installed
    installed_on: date | None
    baseline: Decimal | None  # forward_total when installed
    replaced: bool  # another meter was on this service point before
    max_daily: Decimal

    def covers(self, day: date) -> bool:
        return self.first_date <= day and (self.last_date is None or day <= self.last_date)


@dataclass(slots=True)
class _Meter:
    id: int
    address: str
    status: str
    installations: list[_Installation] = field(default_factory=list)

    def installation_on(self, day: date) -> _Installation | None:
        for installation in self.installations:
            if installation.covers(day):
                return installation
        return None


def _max_daily(capacity_kva, ct_ratio, pt_ratio, ceiling: Decimal) -> Decimal:
    if capacity_kva is None or capacity_kva <= 0 or not ct_ratio or not pt_ratio:
        return ceiling
    return capacity_kva * HOURS_PER_DAY * CAPACITY_HEADROOM / (ct_ratio * pt_ratio)


def _first_freeze_date(installed_at: datetime) -> date:
    local = timezone.localtime(installed_at)
    return local.date() if local.time() == time.min else local.date() + timedelta(days=1)


def _register_from_json(value) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, float):  # a JSON number as decoded; its repr is what was written
        value = repr(value)
    try:
        return quantize_energy(value)
    except (TypeError, ValueError, ArithmeticError):
        return None


def _resolve_meters(addresses: set[str], ids: set[int]) -> tuple[dict[str, _Meter], dict[int, _Meter]]:
    """Every meter named in the chunk, with its installations, in two queries."""
    condition = Q()
    if addresses:
        condition |= Q(comm_address__in=addresses)
    if ids:
        condition |= Q(pk__in=ids)
    if not condition:
        return {}, {}
    ceiling = _daily_ceiling()
    by_id: dict[int, _Meter] = {}
    legacy: dict[int, tuple] = {}
    for meter_id, address, status, sp_id, ct, pt, capacity in Meter.objects.filter(condition).values_list(
        "id",
        "comm_address",
        "status",
        "service_point_id",
        "service_point__ct_ratio",
        "service_point__pt_ratio",
        "service_point__customer__contracted_capacity_kva",
    ):
        by_id[meter_id] = _Meter(meter_id, address, status)
        legacy[meter_id] = (sp_id, _max_daily(capacity, ct, pt, ceiling))
    if by_id:
        earlier = MeterInstallation.objects.filter(
            service_point_id=OuterRef("service_point_id"), installed_at__lt=OuterRef("installed_at")
        )
        rows = (
            MeterInstallation.objects.filter(meter_id__in=list(by_id))
            .annotate(replaced=Exists(earlier))
            .order_by("meter_id", "installed_at")
            .values_list(
                "meter_id",
                "service_point_id",
                "installed_at",
                "removed_at",
                "initial_registers",
                "service_point__ct_ratio",
                "service_point__pt_ratio",
                "service_point__customer__contracted_capacity_kva",
                "replaced",
            )
        )
        for meter_id, sp_id, installed_at, removed_at, initial, ct, pt, capacity, replaced in rows:
            by_id[meter_id].installations.append(
                _Installation(
                    service_point_id=sp_id,
                    first_date=_first_freeze_date(installed_at),
                    last_date=timezone.localtime(removed_at).date() if removed_at else None,
                    installed_on=timezone.localtime(installed_at).date(),
                    baseline=_register_from_json((initial or {}).get("forward_total"))
                    if isinstance(initial, dict)
                    else None,
                    replaced=replaced,
                    max_daily=_max_daily(capacity, ct, pt, ceiling),
                )
            )
    for meter in by_id.values():
        if not meter.installations and meter.status == MeterStatus.INSTALLED:
            # Installed before installation history was kept: trust the meter's own service
            # point, with no start date and no initial registers.
            sp_id, max_daily = legacy[meter.id]
            meter.installations.append(_Installation(sp_id, date.min, None, None, None, False, max_daily))
    return {m.address: m for m in by_id.values()}, by_id


# --- stored readings around the chunk ----------------------------------------------------


@dataclass
class _Context:
    # (meter_id, read_date) -> (source, values) for stored readings on the chunk's dates
    same_day: dict[tuple[int, date], tuple[str, tuple]]
    # meter_id -> [(read_date, forward_total)] of stored actual readings nearest the chunk
    neighbours: dict[int, list[tuple[date, Decimal]]]


_SAME_DAY_SQL = """
SELECT meter_id, read_date, source, {values}
FROM metering_dailyreading
WHERE meter_id = ANY(%s::bigint[]) AND read_date >= %s AND read_date <= %s
""".format(values=", ".join(VALUE_FIELDS))

# One index probe per meter and partition in range (LATERAL ... LIMIT 1); the date bounds
# are literals, so partitions outside them are pruned when the query is planned.
_PREVIOUS_SQL = """
SELECT m.id, r.read_date, r.forward_total
FROM unnest(%s::bigint[]) AS m(id)
CROSS JOIN LATERAL (
    SELECT d.read_date, d.forward_total FROM metering_dailyreading d
    WHERE d.meter_id = m.id AND d.read_date < %s AND d.read_date >= %s AND d.source <> 'estimated'
    ORDER BY d.read_date DESC LIMIT 1
) r
"""
_PREVIOUS_UNBOUNDED_SQL = """
SELECT m.id, r.read_date, r.forward_total
FROM unnest(%s::bigint[]) AS m(id)
CROSS JOIN LATERAL (
    SELECT d.read_date, d.forward_total FROM metering_dailyreading d
    WHERE d.meter_id = m.id AND d.read_date < %s AND d.source <> 'estimated'
    ORDER BY d.read_date DESC LIMIT 1
) r
"""
_NEXT_SQL = """
SELECT m.id, r.read_date, r.forward_total
FROM unnest(%s::bigint[]) AS m(id)
CROSS JOIN LATERAL (
    SELECT d.read_date, d.forward_total FROM metering_dailyreading d
    WHERE d.meter_id = m.id AND d.read_date > %s AND d.source <> 'estimated'
    ORDER BY d.read_date LIMIT 1
) r
"""


def _stored_context(meter_ids: list[int], first: date, last: date, *, fast: bool) -> _Context:
    same_day: dict[tuple[int, date], tuple[str, tuple]] = {}
    neighbours: dict[int, list[tuple[date, Decimal]]] = {}

    def add(meter_id, read_date, total):
        neighbours.setdefault(meter_id, []).append((read_date, total))

    if fast:
        with connection.cursor() as cursor:
            cursor.execute(_SAME_DAY_SQL, [meter_ids, first, last])
            for row in cursor.fetchall():
                same_day[(row[0], row[1])] = (row[2], tuple(row[3:]))
            lookback = first - timedelta(days=PREVIOUS_LOOKBACK_DAYS)
            cursor.execute(_PREVIOUS_SQL, [meter_ids, first, lookback])
            found = set()
            for meter_id, read_date, total in cursor.fetchall():
                found.add(meter_id)
                add(meter_id, read_date, total)
            missing = [m for m in meter_ids if m not in found]
            if missing:
                cursor.execute(_PREVIOUS_UNBOUNDED_SQL, [missing, lookback])
                for meter_id, read_date, total in cursor.fetchall():
                    add(meter_id, read_date, total)
            cursor.execute(_NEXT_SQL, [meter_ids, last])
            for meter_id, read_date, total in cursor.fetchall():
                add(meter_id, read_date, total)
    else:
        stored = DailyReading.objects.filter(meter_id__in=meter_ids)
        for row in stored.filter(read_date__gte=first, read_date__lte=last).values_list(
            "meter_id", "read_date", "source", *VALUE_FIELDS
        ):
            same_day[(row[0], row[1])] = (row[2], tuple(row[3:]))
        actual = stored.exclude(source=ReadingSource.ESTIMATED)
        for edge, bound in ((Max, Q(read_date__lt=first)), (Min, Q(read_date__gt=last))):
            dates = dict(
                actual.filter(bound)
                .values("meter_id")
                .annotate(d=edge("read_date"))
                .values_list("meter_id", "d")
            )
            if dates:
                for meter_id, read_date, total in actual.filter(
                    meter_id__in=list(dates), read_date__in=set(dates.values())
                ).values_list("meter_id", "read_date", "forward_total"):
                    if dates[meter_id] == read_date:
                        add(meter_id, read_date, total)
    for (meter_id, read_date), (source, values) in same_day.items():
        if source != ReadingSource.ESTIMATED:
            add(meter_id, read_date, values[TOTAL])
    for points in neighbours.values():
        points.sort()
    return _Context(same_day, neighbours)


# --- validation --------------------------------------------------------------------------


@dataclass
class _Counts:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    flagged: int = 0


def _step(old: Decimal, new: Decimal, days: int, max_daily: Decimal) -> tuple[int, Decimal]:
    """How the register went from ``old`` to ``new`` in ``days`` days, and the consumption."""
    limit = max_daily * days
    if new >= old:
        consumption = new - old
        return (_OK if consumption <= limit else _JUMP), consumption
    if old < REGISTER_ROLLOVER:
        wrapped = new + REGISTER_ROLLOVER - old
        if wrapped <= limit:
            return _ROLLOVER, wrapped
    return _DECREASE, new - old


def _kwh(value: Decimal) -> str:
    return f"{value:,.2f}"


def _store_chunk(batch: ReadingBatch, parsed: list[_Reading], rejections: list[_Rejection], *, fast: bool):
    source = batch.source
    counts = _Counts()
    by_address, by_id = _resolve_meters(
        {r.address for r in parsed if r.address is not None and r.meter_id is None},
        {r.meter_id for r in parsed if r.meter_id is not None},
    )

    def reject(reading: _Reading, reason: str, message: str, meter_id: int | None = None):
        given = reading.address if reading.address is not None else str(reading.meter_id)
        rejections.append(
            _Rejection(reading.position, reading.raw, reason, message, meter_id, given, reading.read_date)
        )

    groups: dict[int, list[_Reading]] = {}
    meters: dict[int, _Meter] = {}
    for reading in parsed:
        if reading.meter_id is not None:
            meter = by_id.get(reading.meter_id)
            if meter is not None and reading.address is not None and meter.address != reading.address:
                reject(
                    reading,
                    RejectionReason.MALFORMED,
                    _("meter_id %(id)s and meter %(address)s name different meters.")
                    % {"id": reading.meter_id, "address": reading.address},
                    meter.id,
                )
                continue
        else:
            meter = by_address.get(reading.address)
        if meter is None:
            given = reading.address if reading.address is not None else f"id {reading.meter_id}"
            reject(
                reading,
                RejectionReason.UNKNOWN_METER,
                _("No meter %(meter)s is registered.") % {"meter": given},
            )
            continue
        groups.setdefault(meter.id, []).append(reading)
        meters[meter.id] = meter

    accepted: list[_Reading] = []
    replaced: list[_Reading] = []
    if groups:
        dates = [r.read_date for group in groups.values() for r in group]
        context = _stored_context(sorted(groups), min(dates), max(dates), fast=fast)
        estimated_batch = source == ReadingSource.ESTIMATED
        for meter_id in sorted(groups):
            _validate_meter(
                meters[meter_id],
                groups[meter_id],
                context,
                estimated_batch,
                accepted,
                replaced,
                counts,
                reject,
            )

    if accepted:
        if fast:
            losers = _write_postgres(batch, accepted)
            if losers:
                _settle_lost_races(losers, accepted, counts, reject)
        else:
            _write_portable(batch, accepted, replaced)
    counts.accepted = len(accepted)
    counts.flagged = sum(1 for r in accepted if r.quality == ReadingQuality.SUSPECT)
    counts.rejected = len(rejections)
    if rejections:
        rejections.sort(key=lambda r: r.position)
        RejectedReading.objects.bulk_create(
            [
                RejectedReading(
                    batch_id=batch.pk,
                    meter_id=r.meter_id,
                    meter_address=r.address[:64],
                    position=r.position,
                    read_date=r.read_date,
                    payload=_json_safe(r.raw),
                    reason=r.reason,
                    message=r.message[:300],
                )
                for r in rejections
            ],
            batch_size=2_000,
        )
    return counts


def _validate_meter(meter, readings, context, estimated_batch, accepted, replaced, counts, reject):
    """Validate one meter's readings in date order, each against the stored readings and
    the ones accepted before it in this batch."""
    points = context.neighbours.get(meter.id) or []
    dates = [p[0] for p in points]
    totals = dict(points)
    same_day = context.same_day
    readings.sort(key=lambda r: r.read_date)  # stable: same-day repeats keep input order
    for reading in readings:
        day = reading.read_date
        installation = meter.installation_on(day)
        if installation is None:
            if meter.status == MeterStatus.INSTALLED:
                message = _("Meter %(meter)s was not installed on %(date)s.")
            else:
                message = _("Meter %(meter)s is not installed (it is %(status)s) and was not on %(date)s.")
            reject(
                reading,
                RejectionReason.METER_NOT_INSTALLED,
                message % {"meter": meter.address, "date": day, "status": MeterStatus(meter.status).label},
                meter.id,
            )
            continue
        values = reading.values
        total = values[TOTAL]
        key = (meter.id, day)
        stored = same_day.get(key)
        replacing = False
        if stored is not None:
            stored_source, stored_values = stored
            if stored_values == values:
                counts.duplicates += 1
                continue
            if stored_source == ReadingSource.ESTIMATED and not estimated_batch:
                replacing = True  # the actual reading takes the estimate's place
            else:
                reject(
                    reading,
                    RejectionReason.CONFLICTING_DUPLICATE,
                    _(
                        "A reading of meter %(meter)s for %(date)s is already stored with other values "
                        "(forward total %(stored)s kWh; this one %(new)s kWh)."
                    )
                    % {
                        "meter": meter.address,
                        "date": day,
                        "stored": _kwh(stored_values[TOTAL]),
                        "new": _kwh(total),
                    },
                    meter.id,
                )
                continue

        index = bisect.bisect_left(dates, day)
        previous = dates[index - 1] if index else None
        following = dates[index] if index < len(dates) else None
        max_daily = installation.max_daily
        exchange = False
        if previous is not None and previous >= installation.first_date:
            base_total, base_date = totals[previous], previous
        else:
            # First reading of this installation: measured from the registers recorded
            # when the meter went in; an exchange if the meter or the point had a past.
            base_total, base_date = installation.baseline, installation.installed_on
            exchange = previous is not None or installation.replaced
        out_of_order = following is not None and (
            installation.last_date is None or following <= installation.last_date
        )

        rollover = False
        if base_total is not None:
            days = max(1, (day - base_date).days) if base_date else 1
            kind, consumption = _step(base_total, total, days, max_daily)
            if kind != _OK and kind != _ROLLOVER:
                if out_of_order:
                    reject(
                        reading,
                        RejectionReason.OUT_OF_ORDER_INCONSISTENT,
                        _not_between(meter, reading, base_date, base_total, following, totals[following]),
                        meter.id,
                    )
                elif kind == _DECREASE:
                    reject(
                        reading,
                        RejectionReason.REGISTER_DECREASE,
                        _(
                            "Forward total %(new)s kWh on %(date)s is below %(old)s kWh %(since)s, and it "
                            "is neither a register rollover nor a meter exchange."
                        )
                        % {
                            "new": _kwh(total),
                            "date": day,
                            "old": _kwh(base_total),
                            "since": _since(base_date, exchange or previous is None),
                        },
                        meter.id,
                    )
                else:
                    reject(
                        reading,
                        RejectionReason.IMPOSSIBLE_JUMP,
                        _(
                            "%(consumption)s kWh in %(days)s day(s) %(since)s is more than the "
                            "%(limit)s kWh the service point can draw (contracted capacity × 24 h × 1.2 "
                            "÷ multiplier)."
                        )
                        % {
                            "consumption": _kwh(consumption),
                            "days": days,
                            "since": _since(base_date, exchange or previous is None),
                            "limit": _kwh(max_daily * days),
                        },
                        meter.id,
                    )
                continue
            rollover = kind == _ROLLOVER
        if out_of_order:
            next_kind, _consumption = _step(total, totals[following], (following - day).days, max_daily)
            if next_kind != _OK and next_kind != _ROLLOVER:
                reject(
                    reading,
                    RejectionReason.OUT_OF_ORDER_INCONSISTENT,
                    _not_between(
                        meter,
                        reading,
                        base_date if base_total is not None else None,
                        base_total,
                        following,
                        totals[following],
                    ),
                    meter.id,
                )
                continue
            rollover = rollover or next_kind == _ROLLOVER

        notes = []
        quality = ReadingQuality.VALID
        if out_of_order:
            quality = ReadingQuality.OUT_OF_ORDER
        if rollover:
            quality = ReadingQuality.ROLLOVER
            notes.append(_("register rolled over at %(limit)s") % {"limit": _kwh(REGISTER_ROLLOVER)})
            if out_of_order:
                notes.append(_("arrived out of order"))
        if exchange:
            quality = ReadingQuality.EXCHANGE
        if estimated_batch or reading.hint == ReadingQuality.ESTIMATED:
            quality = ReadingQuality.ESTIMATED
        if reading.hint == ReadingQuality.SUSPECT:
            quality = ReadingQuality.SUSPECT
        if (
            values[SHARP] is not None
            or values[PEAK] is not None
            or values[FLAT] is not None
            or (values[VALLEY] is not None)
        ):
            tou = sum(v for v in values[SHARP : VALLEY + 1] if v is not None)
            if abs(tou - total) > total * TOU_TOLERANCE_RATIO + TOU_TOLERANCE_KWH:
                quality = ReadingQuality.SUSPECT
                notes.append(
                    _("time-of-use registers add up to %(tou)s kWh, the total is %(total)s kWh")
                    % {"tou": _kwh(tou), "total": _kwh(total)}
                )
        if reading.hint_note:
            notes.append(reading.hint_note)
        reading.quality = quality
        reading.note = "; ".join(notes)[:200]
        reading.service_point_id = installation.service_point_id
        reading.meter_id = meter.id
        accepted.append(reading)
        if replacing:
            replaced.append(reading)
        same_day[key] = (ReadingSource.ESTIMATED if estimated_batch else "", values)
        if not estimated_batch:
            bisect.insort(dates, day)
            totals[day] = total


def _since(base_date: date | None, from_installation: bool) -> str:
    if base_date is None:
        return _("at installation")
    if from_installation:
        return _("at installation on %(date)s") % {"date": base_date}
    return _("on %(date)s") % {"date": base_date}


def _not_between(meter, reading, before_date, before_total, after_date, after_total) -> str:
    before = (
        _("%(total)s kWh on %(date)s") % {"total": _kwh(before_total), "date": before_date}
        if before_total is not None and before_date is not None
        else _("nothing")
    )
    return _(
        "Reading of %(date)s (forward total %(total)s kWh) arrived after later ones and does not fit "
        "between its neighbours: %(before)s and %(after_total)s kWh on %(after_date)s."
    ) % {
        "date": reading.read_date,
        "total": _kwh(reading.values[TOTAL]),
        "before": before,
        "after_total": _kwh(after_total),
        "after_date": after_date,
    }


# --- writing -----------------------------------------------------------------------------

STAGE_COLUMNS = (
    "meter_id",
    "read_date",
    "read_at",
    "service_point_id",
    *VALUE_FIELDS,
    "source",
    "quality",
    "quality_note",
    "batch_id",
)
_STAGE_DDL = """
CREATE TEMPORARY TABLE kw_daily_stage (
    meter_id bigint NOT NULL, read_date date NOT NULL, read_at timestamptz NOT NULL,
    service_point_id bigint,
    forward_total numeric(12, 2) NOT NULL, forward_sharp numeric(12, 2), forward_peak numeric(12, 2),
    forward_flat numeric(12, 2), forward_valley numeric(12, 2), reverse_total numeric(12, 2),
    reactive_total numeric(12, 2), max_demand_kw numeric(10, 4), remaining_balance numeric(12, 2),
    source varchar(16) NOT NULL, quality varchar(16) NOT NULL, quality_note varchar(200) NOT NULL,
    batch_id bigint NOT NULL
) ON COMMIT DROP
"""
_COLUMNS_SQL = ", ".join(STAGE_COLUMNS)
_UPDATE_SQL = ", ".join(f"{c} = EXCLUDED.{c}" for c in STAGE_COLUMNS if c not in ("meter_id", "read_date"))
# Rows are inserted in (meter_id, read_date) order, so concurrent deliveries take the
# unique-index locks in the same order and cannot deadlock. A conflicting row is left alone
# unless it is an estimate and this reading an actual one, which takes its place.
_INSERT_SQL = f"""
INSERT INTO metering_dailyreading ({_COLUMNS_SQL})
SELECT {_COLUMNS_SQL} FROM kw_daily_stage ORDER BY meter_id, read_date
ON CONFLICT (meter_id, read_date) DO UPDATE SET {_UPDATE_SQL}
WHERE metering_dailyreading.source = 'estimated' AND EXCLUDED.source <> 'estimated'
"""  # noqa: S608 - only the column-name constants above are interpolated
_LOST_SQL = """
SELECT s.meter_id, s.read_date, d.source, {values}
FROM kw_daily_stage s JOIN metering_dailyreading d ON d.meter_id = s.meter_id AND d.read_date = s.read_date
WHERE d.batch_id IS DISTINCT FROM s.batch_id
""".format(values=", ".join(f"d.{v}" for v in VALUE_FIELDS))

NULL = "\\N"  # COPY text format
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _write_postgres(batch: ReadingBatch, accepted: list[_Reading]) -> list[tuple]:
    """COPY the accepted readings into a temporary table and insert them from there.
    Returns the rows that a concurrent delivery stored first (meter_id, read_date, source,
    values...)."""
    tail = f"\t{batch.source}\t"
    batch_part = f"\t{batch.pk}\n"
    lines = []
    append = lines.append
    for r in accepted:
        sp = r.service_point_id
        note = r.note.translate(_COPY_ESCAPES) if r.note else ""
        append(
            f"{r.meter_id}\t{r.read_date.isoformat()}\t{r.read_at.isoformat()}\t"
            f"{NULL if sp is None else sp}\t"
            + "\t".join([NULL if v is None else str(v) for v in r.values])
            + tail
            + r.quality
            + "\t"
            + note
            + batch_part
        )
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS pg_temp.kw_daily_stage")
        cursor.execute(_STAGE_DDL)
        with cursor.cursor.copy(f"COPY kw_daily_stage ({_COLUMNS_SQL}) FROM STDIN") as copy:
            for start in range(0, len(lines), 5_000):
                copy.write("".join(lines[start : start + 5_000]))
        cursor.execute(_INSERT_SQL)
        stored = cursor.rowcount
        lost = []
        if stored != len(accepted):
            cursor.execute(_LOST_SQL)
            lost = cursor.fetchall()
        cursor.execute("DROP TABLE kw_daily_stage")
    return lost


def _settle_lost_races(lost: list[tuple], accepted: list[_Reading], counts: _Counts, reject) -> None:
    """Readings another delivery stored between our look-up and our insert: a duplicate
    when the values agree, a conflicting duplicate otherwise."""
    by_key = {(r.meter_id, r.read_date): r for r in accepted}
    gone = set()
    for row in lost:
        key = (row[0], row[1])
        reading = by_key[key]
        gone.add(id(reading))
        stored_values = tuple(row[3:])
        if stored_values == reading.values:
            counts.duplicates += 1
        else:
            reject(
                reading,
                RejectionReason.CONFLICTING_DUPLICATE,
                _(
                    "A reading of this meter for %(date)s was stored by another delivery at the same "
                    "time with other values (forward total %(stored)s kWh; this one %(new)s kWh)."
                )
                % {
                    "date": reading.read_date,
                    "stored": _kwh(stored_values[TOTAL]),
                    "new": _kwh(reading.values[TOTAL]),
                },
                reading.meter_id,
            )
    accepted[:] = [r for r in accepted if id(r) not in gone]


def _write_portable(batch: ReadingBatch, accepted: list[_Reading], replaced: list[_Reading]) -> None:
    replacing = {id(r) for r in replaced}
    for r in replaced:
        DailyReading.objects.filter(
            meter_id=r.meter_id, read_date=r.read_date, source=ReadingSource.ESTIMATED
        ).update(**_row_fields(batch, r))
    DailyReading.objects.bulk_create(
        [
            DailyReading(meter_id=r.meter_id, read_date=r.read_date, **_row_fields(batch, r))
            for r in accepted
            if id(r) not in replacing
        ],
        batch_size=1_000,
    )


def _row_fields(batch: ReadingBatch, r: _Reading) -> dict:
    return {
        "read_at": r.read_at,
        "service_point_id": r.service_point_id,
        **dict(zip(VALUE_FIELDS, r.values, strict=True)),
        "source": batch.source,
        "quality": r.quality,
        "quality_note": r.note,
        "batch_id": batch.pk,
    }
