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

On PostgreSQL, plain readings take a set-based lane (``reading_lane``): Python checks
only their form and timestamps and COPYs their text to a temporary table, and one statement
joins them with meters, installations and latest readings, applies the register checks
and inserts the meters whose readings all pass. Everything else, and every meter the lane
cannot judge or would reject, goes through the Python validator below, which writes the
reasons. The next chunk is read and split in a helper thread while the current one is
stored.

For the Python validator on PostgreSQL, one query resolves the meters named in the chunk
together with their installations, service point multiplier, contracted capacity and latest
actual reading; only meters whose readings are not simply newer than what is stored (a late
reading, a repeat, a long silence) need a second look-up. Validation is plain Python on
dicts. Accepted rows are written with COPY into a temporary table and
``INSERT ... SELECT ... ON CONFLICT (meter_id, read_date)``, so a reading stored by a
concurrent delivery in the meantime is never stored twice. Other databases (the SQLite
demo mode) take a portable ORM path with the same validation.

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
An actual reading takes the place of an estimate stored for the same meter and day;
estimates are never used as the baseline of another reading.

Registers are secondary-side values, so the capacity limit per day is
contracted kVA × 24 h × 1.2 ÷ (CT ratio × PT ratio).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import partial

import structlog
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, Max, Min, OuterRef, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from core.exceptions import Conflict, ValidationError
from core.money import ENERGY, ROUNDING, YUAN, to_decimal
from metering.hooks import notify_readings_stored
from metering.models import (
    REGISTER_ROLLOVER,
    DailyReading,
    Meter,
    MeterInstallation,
    MeterRole,
    MeterStatus,
    ReadingBatch,
    ReadingQuality,
    ReadingSource,
    RejectedReading,
    RejectionReason,
)
from metering.services import reading_lane

logger = structlog.get_logger(__name__)

CHUNK_SIZE = 25_000
PORTABLE_CHUNK_SIZE = 2_000
CLOCK_SKEW = timedelta(minutes=5)
CAPACITY_HEADROOM = Decimal("1.2")
HOURS_PER_DAY = 24
TOU_TOLERANCE_RATIO = Decimal("0.001")
TOU_TOLERANCE_KWH = Decimal("0.02")
# Per-day register advance allowed when no service point (or capacity) is known: the most
# a direct-connected three-phase 100 A meter can register in a day (~1,580 kWh), rounded
# up. Override with settings.METERING_DAILY_CEILING_KWH.
DEFAULT_DAILY_CEILING_KWH = Decimal("2000")
# A meter's latest reading is looked for this many days before the chunk's first date (one
# or two monthly partitions); only meters silent for longer are searched further back.
LATEST_LOOKBACK_DAYS = 7

# DecimalField(max_digits=12, decimal_places=2): less than 10^10 fits.
ENERGY_LIMIT = Decimal("10000000000")
DEMAND = Decimal("0.0001")
DEMAND_LIMIT = Decimal("1000000")  # max_digits=10, decimal_places=4
ZERO = Decimal(0)

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
ESTIMATED = ReadingSource.ESTIMATED.value

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
    ``max_demand_kw``, ``remaining_balance`` (yuan) as Decimal, int or numeric string (never
    float); and optional hints ``quality`` ("estimated" or "suspect") and ``quality_note``.

    Returns the batch with its counts (accepted, duplicates, rejected, flagged = accepted but
    suspect); ``batch.first_delivery`` tells whether this call created it. Rejected input is
    in ``batch.rejections``. Raises ``Conflict`` while the same batch is being stored by
    another delivery.
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
    try:
        _ingest_chunks(batch, readings)
    except _CompletedMeanwhile:
        pass  # another delivery of this batch finished it: its result stands


class _CompletedMeanwhile(Exception):  # noqa: N818 - control flow, never leaves this module
    pass


def _ingest_chunks(batch: ReadingBatch, readings: Iterable[dict]) -> None:
    done = _processed(batch)
    fast = _pg_fast_path()
    # Estimates follow their own rules (stored as estimates, never a baseline): Python only.
    lane = fast and _lane_fast_path() and batch.source != ESTIMATED
    numbered = itertools.islice(enumerate(readings), done, None)
    if lane:
        prepared_chunks = _lane_chunks(numbered)
    else:
        prepared_chunks = _parsed_chunks(numbered, CHUNK_SIZE if fast else PORTABLE_CHUNK_SIZE)
    # Parsing (and for the lane, sorting out the plain readings) needs no lock.
    try:
        for chunk, now, prepared in prepared_chunks:
            with transaction.atomic():
                _lock_batch(batch.pk, expected_processed=done)
                counts = _store_chunk(batch, chunk, prepared, fast=fast, now=now)
                ReadingBatch.objects.filter(pk=batch.pk).update(
                    accepted=F("accepted") + counts.accepted,
                    duplicates=F("duplicates") + counts.duplicates,
                    rejected=F("rejected") + counts.rejected,
                    flagged=F("flagged") + counts.flagged,
                )
            done += len(chunk)
    finally:
        prepared_chunks.close()  # stops the helper thread's read-ahead
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


def _parsed_chunks(numbered: Iterator, size: int) -> Iterator[tuple[list, datetime, tuple]]:
    for chunk in _chunks(numbered, size):
        now = timezone.now()
        yield chunk, now, _parse_chunk(chunk, now)


def _lane_chunks(numbered: Iterator) -> Iterator[tuple[list, datetime, reading_lane.LaneSplit]]:
    """Chunks with the lane's split of them. The next chunk is read and split in a helper
    thread while the database stores the current one: the split touches neither the
    database nor translations, and the input is read by that one thread only."""
    chunks = _chunks(numbered, CHUNK_SIZE)
    tz = timezone.get_current_timezone()

    def prepare():
        chunk = next(chunks, None)
        if chunk is None:
            return None
        now = timezone.now()
        return chunk, now, reading_lane.split_chunk(chunk, now, CLOCK_SKEW, tz)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="readings-lane") as pool:
        pending = pool.submit(prepare)
        while (prepared := pending.result()) is not None:
            pending = pool.submit(prepare)
            yield prepared


def _store_chunk(batch: ReadingBatch, chunk: list, prepared, *, fast: bool, now: datetime) -> _Counts:
    """Store one chunk, inside its transaction; ``prepared`` is the lane's split of it or
    the Python parser's (parsed, rejections)."""
    if isinstance(prepared, reading_lane.LaneSplit):
        return _store_chunk_with_lane(batch, chunk, prepared, now)
    parsed, rejections = prepared
    return _store_parsed(batch, parsed, rejections, fast=fast)


def _store_chunk_with_lane(batch: ReadingBatch, chunk: list, split: reading_lane.LaneSplit, now: datetime):
    """The plain readings through the set-based lane (see reading_lane), everything it
    passes on and the rest of the chunk through the Python validator."""
    stored, python_part = 0, split.rest
    if split.lane_size:
        params = {
            "hours": HOURS_PER_DAY,
            "headroom": CAPACITY_HEADROOM,
            "ceiling": _daily_ceiling(),
            "since": split.first_day - timedelta(days=LATEST_LOOKBACK_DAYS),
            # No reading is stored for a day after today: with both bounds literal, only
            # the monthly partitions in between are searched.
            "today": timezone.localdate(now),
            "tou_ratio": TOU_TOLERANCE_RATIO,
            "tou_kwh": TOU_TOLERANCE_KWH,
            "rollover": REGISTER_ROLLOVER,
            "rollover_note": _("register rolled over at %(limit)s kWh") % {"limit": _kwh(REGISTER_ROLLOVER)},
        }
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL jit = off")
                # The statement sorts the chunk twice (by meter and date): in memory.
                cursor.execute("SET LOCAL work_mem = '64MB'")
                stored, passed_on = reading_lane.store_lane(
                    cursor, split, batch_id=batch.pk, source=batch.source, params=params
                )
        except IntegrityError:
            # Another delivery stored one of these (meter, day) meanwhile: let the Python
            # validator, which settles such races, take the whole chunk.
            stored, python_part = 0, chunk
        else:
            if passed_on:
                start = chunk[0][0]
                python_part = sorted([*split.rest, *(chunk[p - start] for p in passed_on)], key=_first)
    counts = _Counts()
    if python_part:
        parsed, rejections = _parse_chunk(python_part, now)
        counts = _store_parsed(batch, parsed, rejections, fast=True)
    counts.accepted += stored
    return counts


def _first(item):
    return item[0]


def _lane_fast_path() -> bool:
    """Whether plain readings take the set-based lane on PostgreSQL (tests switch it off
    to run the Python validator alone)."""
    return True


def _processed(batch: ReadingBatch) -> int:
    # Every reading ends up exactly once in accepted, duplicates or rejected (flagged is a
    # part of accepted), so this is the number of input readings already dealt with.
    return batch.accepted + batch.duplicates + batch.rejected


def _lock_batch(batch_id: int, *, expected_processed: int) -> ReadingBatch:
    locked = ReadingBatch.objects.select_for_update().get(pk=batch_id)
    if locked.completed_at is not None and _processed(locked) != expected_processed:
        raise _CompletedMeanwhile()
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


@dataclass(slots=True)
class _Rejection:
    position: int
    raw: object
    reason: str
    message: str
    meter_id: int | None = None
    address: str = ""
    read_date: date | None = None


class _Parser:
    """Turns raw input into ``_Reading``s; per-chunk caches keep repeated dates cheap."""

    def __init__(self, now: datetime):
        self.latest_read_at = now + CLOCK_SKEW
        self.today = timezone.localdate(now)
        self.dates: dict[str | date, tuple[date, datetime]] = {}

    def parse(self, position: int, raw) -> _Reading:
        if not isinstance(raw, dict):
            raise _Rejected(RejectionReason.MALFORMED, _("A reading must be an object with named fields."))
        get = raw.get
        meter_id, address = get("meter_id"), get("meter")
        if not (meter_id is None and type(address) is str and len(address) == 12 and address.isdigit()):
            meter_id, address = _meter_key(meter_id, address)
        read_date, earliest_read_at = self.read_date(get("read_date"))
        read_at = get("read_at")
        if type(read_at) is not datetime or read_at.tzinfo is None:
            read_at = _read_at(read_at)
        if read_at > self.latest_read_at or read_date > self.today or read_at < earliest_read_at:
            self.reject_times(read_date, read_at)

        if get("forward_total") is None:
            raise _Rejected(RejectionReason.MALFORMED, _("forward_total is missing."))
        values = []
        for name in ENERGY_FIELDS:
            value = get(name)
            if value is None:
                values.append(None)
                continue
            # Fast path for the usual "12345.67": two decimals already, no rounding to do.
            if type(value) is str and value[-3:-2] == ".":
                try:
                    value = Decimal(value)
                except ArithmeticError:
                    raise _not_a_number(name, value) from None
            else:
                value = _number(value, name, ENERGY)
            if value < ZERO or value >= ENERGY_LIMIT:
                raise _energy_out_of_range(name, value)
            values.append(value)
        value = get("max_demand_kw")
        values.append(None if value is None else _demand(value))
        value = get("remaining_balance")
        values.append(None if value is None else _balance(value))

        hint = get("quality")
        if hint not in QUALITY_HINTS:
            raise _Rejected(
                RejectionReason.MALFORMED,
                _("quality may only be estimated or suspect, not %(value)s.") % {"value": _text(hint)},
            )
        hint_note = get("quality_note") or ""
        if type(hint_note) is not str:
            hint_note = str(hint_note)
        return _Reading(position, raw, meter_id, address, read_date, read_at, tuple(values), hint, hint_note)

    def read_date(self, value) -> tuple[date, datetime]:
        """The freeze date, and the earliest time it can have been read (its 00:00, less
        the clock-skew tolerance)."""
        known = self.dates.get(value) if type(value) is str or type(value) is date else None
        if known is not None:
            return known
        if type(value) is str:
            try:
                day = date.fromisoformat(value)
            except ValueError:
                raise _Rejected(
                    RejectionReason.MALFORMED,
                    _("read_date %(value)s is not a date (YYYY-MM-DD).") % {"value": _text(value)},
                ) from None
        elif type(value) is date:
            day = value
        else:
            raise _Rejected(RejectionReason.MALFORMED, _("read_date is missing or not a date (YYYY-MM-DD)."))
        known = self.dates[value] = (day, timezone.make_aware(datetime.combine(day, time.min)) - CLOCK_SKEW)
        return known

    def reject_times(self, read_date: date, read_at: datetime):
        if read_at > self.latest_read_at:
            raise _Rejected(
                RejectionReason.FUTURE_TIMESTAMP,
                _(
                    "Read at %(read_at)s, which is in the future (more than 5 minutes ahead of the "
                    "server clock)."
                )
                % {"read_at": read_at.isoformat()},
            )
        if read_date > self.today:
            raise _Rejected(
                RejectionReason.FUTURE_TIMESTAMP,
                _("Freeze date %(date)s is after today (%(today)s).")
                % {"date": read_date, "today": self.today},
            )
        raise _Rejected(
            RejectionReason.FUTURE_TIMESTAMP,
            _("Freeze date %(date)s is after the time the reading was taken (%(read_at)s).")
            % {"date": read_date, "read_at": read_at.isoformat()},
        )


def _meter_key(meter_id, address) -> tuple[int | None, str | None]:
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
            _("Meter address %(address)s is not 12 decimal digits.") % {"address": _text(address)},
        )
    return meter_id, address


def _read_at(value) -> datetime:
    if type(value) is str:
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise _Rejected(
                RejectionReason.MALFORMED,
                _("read_at %(value)s is not an ISO 8601 date and time.") % {"value": _text(value)},
            ) from None
    elif not isinstance(value, datetime):
        raise _Rejected(RejectionReason.MALFORMED, _("read_at is missing or not a date and time."))
    if value.tzinfo is None or value.utcoffset() is None:
        raise _Rejected(
            RejectionReason.MALFORMED, _("read_at has no time zone offset (e.g. 2026-03-01T00:15:00+08:00).")
        )
    return value


def _number(value, name: str, quantum: Decimal) -> Decimal:
    """``core.money``'s rounding rule (half-up) to ``quantum``, inlined for the hot path:
    str, int or Decimal in, never float or bool."""
    kind = type(value)
    try:
        if kind is not str and kind is not Decimal and kind is not int:
            raise TypeError
        number = Decimal(value)
        if not number.is_finite():
            raise ValueError
        return number.quantize(quantum, rounding=ROUNDING)
    except (TypeError, ValueError, ArithmeticError):
        raise _not_a_number(name, value) from None


def _not_a_number(name: str, value) -> _Rejected:
    return _Rejected(
        RejectionReason.MALFORMED,
        _("%(field)s is not a number: %(value)s.") % {"field": name, "value": _text(value)[:40]},
    )


def _energy_out_of_range(name: str, value: Decimal) -> _Rejected:
    if value < ZERO:
        message = _("%(field)s is negative: %(value)s.")
    else:
        message = _("%(field)s is too large for a register: %(value)s.")
    return _Rejected(RejectionReason.MALFORMED, message % {"field": name, "value": value})


def _energy(value, name: str) -> Decimal:
    energy = _number(value, name, ENERGY)
    if energy < ZERO or energy >= ENERGY_LIMIT:
        raise _energy_out_of_range(name, energy)
    return energy


def _demand(value) -> Decimal:
    demand = _number(value, "max_demand_kw", DEMAND)
    if not 0 <= demand < DEMAND_LIMIT:
        raise _Rejected(
            RejectionReason.MALFORMED, _("max_demand_kw is out of range: %(value)s.") % {"value": demand}
        )
    return demand


def _balance(value) -> Decimal:
    balance = _number(value, "remaining_balance", YUAN)
    if abs(balance) >= ENERGY_LIMIT:
        raise _Rejected(
            RejectionReason.MALFORMED, _("remaining_balance is out of range: %(value)s.") % {"value": balance}
        )
    return balance


def _text(value) -> str:
    # PostgreSQL text and jsonb cannot hold NUL characters.
    return str(value).replace("\x00", "\\x00")


def _json_safe(value):
    """The input as received, in a form JSON (and PostgreSQL jsonb) can hold: numbers that
    are not int (Decimal, float) and dates become their text, exactly as given."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return _text(value)


def _parse_chunk(chunk: list[tuple[int, object]], now: datetime) -> tuple[list[_Reading], list[_Rejection]]:
    parser = _Parser(now)
    parsed, rejections = [], []
    for position, raw in chunk:
        try:
            parsed.append(parser.parse(position, raw))
        except _Rejected as exc:
            rejections.append(_rejection_of_raw(position, raw, exc, parser))
    return parsed, rejections


def _rejection_of_raw(position: int, raw, exc: _Rejected, parser: _Parser) -> _Rejection:
    """What can still be told about input that did not parse: the meter and date as given."""
    address, read_date = "", None
    if isinstance(raw, dict):
        given = raw.get("meter")
        if given is None:
            given = raw.get("meter_id")
        address = "" if given is None else _text(given)[:64]
        try:
            read_date = parser.read_date(raw.get("read_date"))[0]
        except _Rejected:
            read_date = None
    return _Rejection(position, raw, exc.reason, exc.message, None, address, read_date)


# --- meters, installations and stored readings ----------------------------------------------


@dataclass(slots=True)
class _Installation:
    service_point_id: int | None
    first_date: date  # first freeze (00:00 local) at or after installation
    last_date: date | None  # last freeze before removal; None while installed
    installed_on: date | None
    baseline: Decimal | None  # forward_total when installed
    replaced: bool | None  # another meter was on this service point before (None: not looked up)
    max_daily: Decimal  # register advance per day the service point can draw
    id: int | None = None

    def covers(self, day: date) -> bool:
        return self.first_date <= day and (self.last_date is None or day <= self.last_date)


@dataclass(slots=True)
class _Meter:
    id: int
    address: str
    status: str
    installations: list[_Installation] = field(default_factory=list)
    # Stored readings around the chunk's dates: (read_date, forward_total) of actual
    # readings, oldest first, and everything stored on the chunk's own dates.
    points: list[tuple[date, Decimal]] = field(default_factory=list)
    same_day: dict[date, tuple[str, tuple]] = field(default_factory=dict)
    latest: tuple[date, Decimal] | None = None  # latest actual reading in the look-back

    def installation_on(self, day: date) -> _Installation | None:
        for installation in self.installations:
            if installation.covers(day):
                return installation
        return None


def _max_daily(capacity_kva, ct_ratio, pt_ratio, ceiling: Decimal) -> Decimal:
    if capacity_kva is None or capacity_kva <= 0 or not ct_ratio or not pt_ratio:
        return ceiling
    return capacity_kva * HOURS_PER_DAY * CAPACITY_HEADROOM / (ct_ratio * pt_ratio)


def _baseline(value) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, float):  # a JSON number as decoded; its repr is what was written
        value = repr(value)
    try:
        return _energy(value, "initial forward_total")
    except _Rejected:
        return None


class _Meters:
    """The meters named in a chunk, found by address or id."""

    def __init__(self):
        self.by_id: dict[int, _Meter] = {}
        self.by_address: dict[str, _Meter] = {}
        self.since: date | None = None  # start of the look-back for each meter's latest reading

    def add_row(self, meter_id, address, status, installation) -> _Meter:
        meter = self.by_id.get(meter_id)
        if meter is None:
            meter = self.by_id[meter_id] = self.by_address[address] = _Meter(meter_id, address, status)
        if installation is not None:
            meter.installations.append(installation)
        return meter

    def find(self, reading: _Reading) -> _Meter | None:
        if reading.meter_id is not None:
            return self.by_id.get(reading.meter_id)
        return self.by_address.get(reading.address)


def _legacy_installation(meter: _Meter, service_point_id, max_daily) -> None:
    """An installed meter with no installation record (installed before history was kept):
    trust its own service point, with no start date and no initial registers."""
    if not meter.installations and meter.status == MeterStatus.INSTALLED:
        meter.installations.append(
            _Installation(service_point_id, date.min, None, None, None, False, max_daily)
        )


# PostgreSQL: the meters of a chunk with their installations (local dates, initial
# register and the service point's daily limit computed by the database) and their latest
# actual reading between a look-back date and today (estimates are never a baseline). The
# bounds are literals, so only the partitions in between are searched.
_METERS_SQL = """
SELECT m.id, m.comm_address, m.status, i.id,
       CASE WHEN i.id IS NULL THEN m.service_point_id ELSE i.service_point_id END,
       (i.installed_at AT TIME ZONE %(tz)s)::date,
       (i.installed_at AT TIME ZONE %(tz)s + interval '1 day' - interval '1 microsecond')::date,
       (i.removed_at AT TIME ZONE %(tz)s)::date,
       CASE WHEN i.initial_registers ->> 'forward_total' ~ '^ *[0-9]{{1,10}}([.][0-9]*)? *$'
            THEN round((i.initial_registers ->> 'forward_total')::numeric, 2) END,
       CASE WHEN c.contracted_capacity_kva > 0
            THEN c.contracted_capacity_kva * %(hours)s * %(headroom)s / (sp.ct_ratio * sp.pt_ratio)
            -- a transformer area's summary meter can register what its transformer delivers
            WHEN m.role = 'area' AND ta.transformer_capacity_kva > 0
            THEN ta.transformer_capacity_kva * %(hours)s * %(headroom)s
            ELSE %(ceiling)s END,
       latest.read_date, latest.forward_total
FROM metering_meter m
LEFT JOIN metering_meterinstallation i ON i.meter_id = m.id
LEFT JOIN customers_servicepoint sp
       ON sp.id = CASE WHEN i.id IS NULL THEN m.service_point_id ELSE i.service_point_id END
LEFT JOIN customers_customer c ON c.id = sp.customer_id
LEFT JOIN core_transformerarea ta ON ta.id = m.transformer_area_id
LEFT JOIN LATERAL (
    SELECT d.read_date, d.forward_total FROM metering_dailyreading d
    WHERE d.meter_id = m.id AND d.read_date >= %(since)s AND d.read_date <= %(today)s
      AND d.source <> 'estimated'
    ORDER BY d.read_date DESC LIMIT 1
) latest ON true
WHERE {where}
"""

# Which of these installations followed another one on the same service point.
_REPLACED_SQL = """
SELECT i.id FROM metering_meterinstallation i
WHERE i.id = ANY(string_to_array(%s, ',')::bigint[]) AND EXISTS (
    SELECT 1 FROM metering_meterinstallation e
    WHERE e.service_point_id = i.service_point_id AND e.installed_at < i.installed_at
)
"""

_SAME_DAY_SQL = """
SELECT meter_id, read_date, source, {values}
FROM metering_dailyreading
WHERE meter_id = ANY(string_to_array(%s, ',')::bigint[]) AND read_date >= %s AND read_date <= %s
""".format(values=", ".join(VALUE_FIELDS))

_PREVIOUS_SQL = """
SELECT m.id, r.read_date, r.forward_total
FROM unnest(string_to_array(%s, ',')::bigint[]) AS m(id)
CROSS JOIN LATERAL (
    SELECT d.read_date, d.forward_total FROM metering_dailyreading d
    WHERE d.meter_id = m.id AND d.read_date < %s AND d.source <> 'estimated'
    ORDER BY d.read_date DESC LIMIT 1
) r
"""

_NEXT_SQL = """
SELECT DISTINCT ON (meter_id) meter_id, read_date, forward_total
FROM metering_dailyreading
WHERE meter_id = ANY(string_to_array(%s, ',')::bigint[]) AND read_date > %s AND source <> 'estimated'
ORDER BY meter_id, read_date
"""


def _lookup_postgres(readings: list[_Reading]) -> _Meters:
    addresses = list({r.address for r in readings if r.meter_id is None})
    ids = list({r.meter_id for r in readings if r.meter_id is not None})
    # Lists go as one comma-separated string each (see _id_list).
    conditions = []
    if addresses:
        conditions.append("m.comm_address = ANY(string_to_array(%(addresses)s, ','))")
    if ids:
        conditions.append("m.id = ANY(string_to_array(%(ids)s, ',')::bigint[])")
    meters = _Meters()
    if not conditions:
        return meters
    params = {
        "tz": settings.TIME_ZONE,
        "hours": HOURS_PER_DAY,
        "headroom": CAPACITY_HEADROOM,
        "ceiling": _daily_ceiling(),
        "since": min(r.read_date for r in readings) - timedelta(days=LATEST_LOOKBACK_DAYS),
        "today": timezone.localdate(),
        "addresses": ",".join(addresses),
        "ids": _id_list(ids),
    }
    meters.since = params["since"]
    with connection.cursor() as cursor:
        cursor.execute(_METERS_SQL.format(where=" OR ".join(conditions)), params)
        rows = cursor.fetchall()
    by_id = meters.by_id
    for (
        meter_id,
        address,
        status,
        inst_id,
        sp_id,
        installed_on,
        first,
        last,
        baseline,
        max_daily,
        *found,
    ) in rows:
        meter = by_id.get(meter_id)
        if meter is None:
            meter = by_id[meter_id] = meters.by_address[address] = _Meter(meter_id, address, status)
            if found[0] is not None:
                meter.latest = (found[0], found[1])
        if inst_id is None:
            _legacy_installation(meter, sp_id, max_daily)
        else:
            meter.installations.append(
                _Installation(sp_id, first, last, installed_on, baseline, None, max_daily, inst_id)
            )
            if len(meter.installations) > 1:
                meter.installations.sort(key=_installed_on)

    return meters


def _id_list(ids) -> str:
    """Many ids as one comma-separated text parameter (split by string_to_array): far
    cheaper to adapt and send than an array parameter of tens of thousands of items."""
    return ",".join(map(str, ids))


def _context_postgres(meters: _Meters, groups: dict[int, list[_Reading]]) -> None:
    """Most meters' readings are simply newer than anything stored: their latest reading
    is all the context they need. The others get a closer look."""
    by_id = meters.by_id
    closer, silent, earliest = [], [], {}
    for meter_id, group in groups.items():
        day = group[0].read_date if len(group) == 1 else min(r.read_date for r in group)
        latest = by_id[meter_id].latest
        if latest is None:
            silent.append(meter_id)
        elif latest[0] < day:
            by_id[meter_id].points.append(latest)
        else:
            closer.append(meter_id)
            earliest[meter_id] = day
    with connection.cursor() as cursor:
        if silent:  # nothing since the look-back: the last reading before it, if any
            cursor.execute(_PREVIOUS_SQL, [_id_list(silent), meters.since])
            for meter_id, read_date, total in cursor.fetchall():
                by_id[meter_id].points.append((read_date, total))
        if closer:
            last = max(r.read_date for meter_id in closer for r in groups[meter_id])
            _closer_look(cursor, meters, closer, min(earliest.values()), last)
        _look_up_replaced(cursor, [by_id[meter_id] for meter_id in groups])


def _installed_on(installation: _Installation) -> date:
    return installation.first_date


def _closer_look(cursor, meters: _Meters, closer: list[int], first: date, last: date) -> None:
    """Everything stored from ``first`` to ``last``, and the nearest actual readings before
    and after, for meters with readings that are late, repeated or replace an estimate."""
    by_id = meters.by_id
    cursor.execute(_SAME_DAY_SQL, [_id_list(closer), first, last])
    for row in cursor.fetchall():
        by_id[row[0]].same_day[row[1]] = (row[2], tuple(row[3:]))
    cursor.execute(_PREVIOUS_SQL, [_id_list(closer), first])
    for meter_id, read_date, total in cursor.fetchall():
        by_id[meter_id].points.append((read_date, total))
    cursor.execute(_NEXT_SQL, [_id_list(closer), last])
    for meter_id, read_date, total in cursor.fetchall():
        by_id[meter_id].points.append((read_date, total))
    for meter_id in closer:
        meter = by_id[meter_id]
        for day, (source, values) in meter.same_day.items():
            if source != ESTIMATED:
                meter.points.append((day, values[TOTAL]))
        meter.points.sort()


def _look_up_replaced(cursor, meters: list[_Meter]) -> None:
    """Whether a meter exchange preceded an installation matters only for its first reading:
    look it up for installations with no stored reading among the ones at hand."""
    pending = {}
    for meter in meters:
        for installation in meter.installations:
            if installation.id is None:
                continue
            for point in meter.points:
                if installation.covers(point[0]):
                    break
            else:
                pending[installation.id] = installation
    if not pending:
        return
    cursor.execute(_REPLACED_SQL, [_id_list(pending)])
    replaced = {row[0] for row in cursor.fetchall()}
    for installation_id, installation in pending.items():
        installation.replaced = installation_id in replaced


def _lookup_portable(readings: list[_Reading]) -> _Meters:
    """The same context through the ORM, for databases other than PostgreSQL."""
    meters = _Meters()
    addresses = {r.address for r in readings if r.meter_id is None}
    ids = {r.meter_id for r in readings if r.meter_id is not None}
    condition = Q()
    if addresses:
        condition |= Q(comm_address__in=addresses)
    if ids:
        condition |= Q(pk__in=ids)
    if not condition:
        return meters
    ceiling = _daily_ceiling()
    own_points = {}
    area_limits = {}
    for meter_id, address, status, sp_id, ct, pt, capacity, role, area_kva in Meter.objects.filter(
        condition
    ).values_list(
        "id",
        "comm_address",
        "status",
        "service_point_id",
        "service_point__ct_ratio",
        "service_point__pt_ratio",
        "service_point__customer__contracted_capacity_kva",
        "role",
        "transformer_area__transformer_capacity_kva",
    ):
        meters.add_row(meter_id, address, status, None)
        if role == MeterRole.AREA and area_kva:
            # A transformer area's summary meter registers what its transformer delivers.
            area_limits[meter_id] = _max_daily(area_kva, 1, 1, ceiling)
        own_points[meter_id] = (sp_id, area_limits.get(meter_id) or _max_daily(capacity, ct, pt, ceiling))
    if not meters.by_id:
        return meters
    earlier = MeterInstallation.objects.filter(
        service_point_id=OuterRef("service_point_id"), installed_at__lt=OuterRef("installed_at")
    )
    for meter_id, sp_id, installed_at, removed_at, initial, ct, pt, capacity, replaced in (
        MeterInstallation.objects.filter(meter_id__in=list(meters.by_id))
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
    ):
        local = timezone.localtime(installed_at)
        first_freeze = local.date() if local.time() == time.min else local.date() + timedelta(days=1)
        meters.by_id[meter_id].installations.append(
            _Installation(
                sp_id,
                first_freeze,
                timezone.localtime(removed_at).date() if removed_at else None,
                local.date(),
                _baseline(initial.get("forward_total")) if isinstance(initial, dict) else None,
                replaced,
                area_limits.get(meter_id) or _max_daily(capacity, ct, pt, ceiling),
            )
        )
    for meter in meters.by_id.values():
        _legacy_installation(meter, *own_points[meter.id])
    return meters


def _context_portable(meters: _Meters, groups: dict[int, list[_Reading]]) -> None:
    """Everything stored on the chunk's dates and the nearest actual readings around them,
    through the ORM."""
    dates = [r.read_date for group in groups.values() for r in group]
    first, last = min(dates), max(dates)
    stored = DailyReading.objects.filter(meter_id__in=list(groups))
    for row in stored.filter(read_date__gte=first, read_date__lte=last).values_list(
        "meter_id", "read_date", "source", *VALUE_FIELDS
    ):
        meter = meters.by_id[row[0]]
        meter.same_day[row[1]] = (row[2], tuple(row[3:]))
        if row[2] != ESTIMATED:
            meter.points.append((row[1], row[3]))
    actual = stored.exclude(source=ESTIMATED)
    for edge, bound in ((Max, Q(read_date__lt=first)), (Min, Q(read_date__gt=last))):
        nearest = dict(
            actual.filter(bound).values("meter_id").annotate(d=edge("read_date")).values_list("meter_id", "d")
        )
        if nearest:
            for meter_id, read_date, total in actual.filter(
                meter_id__in=list(nearest), read_date__in=set(nearest.values())
            ).values_list("meter_id", "read_date", "forward_total"):
                if nearest[meter_id] == read_date:
                    meters.by_id[meter_id].points.append((read_date, total))
    for meter_id in groups:
        meters.by_id[meter_id].points.sort()


# --- validation --------------------------------------------------------------------------


@dataclass
class _Counts:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    flagged: int = 0


def _step(old: Decimal, new: Decimal, days: int, max_daily: Decimal) -> tuple[int, Decimal]:
    """How a register went from ``old`` to ``new`` in ``days`` days, and the consumption."""
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


class _Validator:
    """Validates a chunk's readings meter by meter, in date order, each against the stored
    readings and the ones accepted before it in the same batch."""

    def __init__(self, batch: ReadingBatch, rejections: list[_Rejection]):
        self.estimated_batch = batch.source == ESTIMATED
        self.rejections = rejections
        self.accepted: list[_Reading] = []
        self.replacing: list[_Reading] = []  # take the place of a stored estimate
        self.duplicates = 0

    def reject(self, reading: _Reading, reason: str, message: str, meter: _Meter | None = None) -> None:
        given = reading.address if reading.address is not None else str(reading.meter_id)
        self.rejections.append(
            _Rejection(
                reading.position,
                reading.raw,
                reason,
                message,
                meter.id if meter else None,
                given,
                reading.read_date,
            )
        )

    def meter(self, meter: _Meter, readings: list[_Reading]) -> None:
        dates = [p[0] for p in meter.points]
        totals = dict(meter.points)
        if len(readings) > 1:
            readings.sort(key=_by_date)  # stable: repeats of a day keep their input order
        for reading in readings:
            day = reading.read_date
            installation = meter.installation_on(day)
            if installation is None:
                self.reject(reading, RejectionReason.METER_NOT_INSTALLED, _not_installed(meter, day), meter)
                continue
            replacing = False
            stored = meter.same_day.get(day)
            if stored is not None:
                if stored[0] == ESTIMATED and not self.estimated_batch:
                    replacing = True  # an actual reading takes the estimate's place
                elif stored[1] == reading.values:
                    self.duplicates += 1
                    continue
                else:
                    self.reject(
                        reading,
                        RejectionReason.CONFLICTING_DUPLICATE,
                        _conflicting(meter.address, day, stored[1], reading.values),
                        meter,
                    )
                    continue
            if not self.check_registers(meter, installation, reading, dates, totals):
                continue
            reading.service_point_id = installation.service_point_id
            reading.meter_id = meter.id
            reading.address = meter.address
            self.accepted.append(reading)
            if replacing:
                self.replacing.append(reading)
            meter.same_day[day] = (ESTIMATED if self.estimated_batch else "", reading.values)
            if not self.estimated_batch:
                bisect.insort(dates, day)
                totals[day] = reading.values[TOTAL]

    def check_registers(self, meter, installation, reading, dates, totals) -> bool:
        """Compare the total with the readings before and after it; reject (False) or set
        the reading's quality and note (True)."""
        day = reading.read_date
        total = reading.values[TOTAL]
        index = bisect.bisect_left(dates, day)
        previous = dates[index - 1] if index else None
        following = dates[index] if index < len(dates) else None
        exchange = False
        if previous is not None and previous >= installation.first_date:
            base_total, base_date, from_installation = totals[previous], previous, False
        else:
            # The first reading of this installation is measured from the registers
            # recorded when the meter went in; an exchange if the meter or the service
            # point had readings before.
            base_total, base_date, from_installation = installation.baseline, installation.installed_on, True
            exchange = previous is not None or installation.replaced
        out_of_order = following is not None and (
            installation.last_date is None or following <= installation.last_date
        )
        max_daily = installation.max_daily
        rollover = False
        if base_total is not None:
            days = max(1, (day - base_date).days) if base_date else 1
            kind, consumption = _step(base_total, total, days, max_daily)
            if kind == _DECREASE or kind == _JUMP:
                if out_of_order:
                    reason = RejectionReason.OUT_OF_ORDER_INCONSISTENT
                    message = _not_between(reading, base_date, base_total, following, totals[following])
                elif kind == _DECREASE:
                    reason = RejectionReason.REGISTER_DECREASE
                    message = _decrease(total, day, base_total, base_date, from_installation)
                else:
                    reason = RejectionReason.IMPOSSIBLE_JUMP
                    message = _jump(consumption, days, base_date, from_installation, max_daily * days)
                self.reject(reading, reason, message, meter)
                return False
            rollover = kind == _ROLLOVER
        if out_of_order:
            kind, _consumption = _step(total, totals[following], (following - day).days, max_daily)
            if kind == _DECREASE or kind == _JUMP:
                before = base_date if base_total is not None else None
                message = _not_between(reading, before, base_total, following, totals[following])
                self.reject(reading, RejectionReason.OUT_OF_ORDER_INCONSISTENT, message, meter)
                return False
            rollover = rollover or kind == _ROLLOVER
        self.set_quality(reading, out_of_order=out_of_order, rollover=rollover, exchange=exchange)
        return True

    def set_quality(self, reading: _Reading, *, out_of_order: bool, rollover: bool, exchange: bool) -> None:
        """One quality per reading, the most telling one; the others go in the note."""
        quality, notes = ReadingQuality.VALID, []
        if out_of_order:
            quality = ReadingQuality.OUT_OF_ORDER
        if rollover:
            if out_of_order:
                notes.append(_("arrived out of order"))
            quality = ReadingQuality.ROLLOVER
            notes.append(_("register rolled over at %(limit)s kWh") % {"limit": _kwh(REGISTER_ROLLOVER)})
        if exchange:
            quality = ReadingQuality.EXCHANGE
        if self.estimated_batch or reading.hint == ReadingQuality.ESTIMATED:
            quality = ReadingQuality.ESTIMATED
        if reading.hint == ReadingQuality.SUSPECT:
            quality = ReadingQuality.SUSPECT
        sharp, peak, flat, valley = reading.values[SHARP : VALLEY + 1]
        if sharp is not None or peak is not None or flat is not None or valley is not None:
            total = reading.values[TOTAL]
            tou = (sharp or ZERO) + (peak or ZERO) + (flat or ZERO) + (valley or ZERO)
            if abs(tou - total) > total * TOU_TOLERANCE_RATIO + TOU_TOLERANCE_KWH:
                quality = ReadingQuality.SUSPECT
                notes.append(
                    _("time-of-use registers add up to %(tou)s kWh, the total is %(total)s kWh")
                    % {"tou": _kwh(tou), "total": _kwh(total)}
                )
        if reading.hint_note:
            notes.append(reading.hint_note)
        reading.quality = quality
        reading.note = "; ".join(notes)[:200] if notes else ""


def _by_date(reading: _Reading) -> date:
    return reading.read_date


def _not_installed(meter: _Meter, day: date) -> str:
    if meter.status == MeterStatus.INSTALLED:
        return _("Meter %(meter)s was not installed on %(date)s.") % {"meter": meter.address, "date": day}
    return _("Meter %(meter)s is not installed (it is %(status)s) and was not on %(date)s.") % {
        "meter": meter.address,
        "status": MeterStatus(meter.status).label,
        "date": day,
    }


def _conflicting(address: str, day: date, stored: tuple, values: tuple) -> str:
    return _(
        "A reading of meter %(meter)s for %(date)s is already stored with other values "
        "(forward total %(stored)s kWh; this one %(new)s kWh)."
    ) % {"meter": address, "date": day, "stored": _kwh(stored[TOTAL]), "new": _kwh(values[TOTAL])}


def _since(base_date: date | None, from_installation: bool) -> str:
    if base_date is None:
        return _("at installation")
    if from_installation:
        return _("at installation on %(date)s") % {"date": base_date}
    return _("on %(date)s") % {"date": base_date}


def _decrease(total, day, base_total, base_date, from_installation) -> str:
    return _(
        "Forward total %(new)s kWh on %(date)s is below %(old)s kWh %(since)s, and it is neither a "
        "register rollover nor a meter exchange."
    ) % {
        "new": _kwh(total),
        "date": day,
        "old": _kwh(base_total),
        "since": _since(base_date, from_installation),
    }


def _jump(consumption, days, base_date, from_installation, limit) -> str:
    return _(
        "%(consumption)s kWh in %(days)s day(s) %(since)s is more than the %(limit)s kWh the service "
        "point can draw (contracted capacity × 24 h × 1.2 ÷ multiplier)."
    ) % {
        "consumption": _kwh(consumption),
        "days": days,
        "since": _since(base_date, from_installation),
        "limit": _kwh(limit),
    }


def _not_between(reading, before_date, before_total, after_date, after_total) -> str:
    if before_total is not None and before_date is not None:
        before = _("%(total)s kWh on %(date)s") % {"total": _kwh(before_total), "date": before_date}
    else:
        before = _("nothing")
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


# --- one chunk -----------------------------------------------------------------------------


def _store_parsed(batch: ReadingBatch, parsed: list[_Reading], rejections: list[_Rejection], *, fast: bool):
    if fast:
        with connection.cursor() as cursor:
            # JIT compilation costs more than it saves on these short, wide queries.
            cursor.execute("SET LOCAL jit = off")
    meters = (_lookup_postgres if fast else _lookup_portable)(parsed) if parsed else _Meters()
    by_id, by_address = meters.by_id, meters.by_address
    validator = _Validator(batch, rejections)
    groups: dict[int, list[_Reading]] = {}
    for reading in parsed:
        meter = by_address.get(reading.address) if reading.meter_id is None else by_id.get(reading.meter_id)
        if meter is None:
            given = reading.address if reading.meter_id is None else f"id {reading.meter_id}"
            validator.reject(
                reading,
                RejectionReason.UNKNOWN_METER,
                _("No meter %(meter)s is registered.") % {"meter": given},
            )
        elif (
            reading.meter_id is not None and reading.address is not None and meter.address != reading.address
        ):
            validator.reject(
                reading,
                RejectionReason.MALFORMED,
                _("meter_id %(id)s and meter %(address)s name different meters.")
                % {"id": reading.meter_id, "address": reading.address},
                meter,
            )
        else:
            group = groups.get(meter.id)
            if group is None:
                groups[meter.id] = [reading]
            else:
                group.append(reading)
    if groups:
        (_context_postgres if fast else _context_portable)(meters, groups)
    for meter_id in sorted(groups):
        validator.meter(by_id[meter_id], groups[meter_id])

    accepted = validator.accepted
    if accepted:
        if fast:
            lost = _write_postgres(batch, accepted)
            if lost:
                _settle_lost_races(lost, validator)
        else:
            _write_portable(batch, accepted, validator.replacing)
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
    return _Counts(
        accepted=len(validator.accepted),
        duplicates=validator.duplicates,
        rejected=len(rejections),
        flagged=sum(1 for r in validator.accepted if r.quality == ReadingQuality.SUSPECT),
    )


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
# Rows go in (meter_id, read_date) order, so concurrent deliveries take the unique-index
# locks in the same order and cannot deadlock. A row already there is left alone, unless it
# is an estimate and this reading an actual one, which takes its place (same id).
_INSERT_SQL = f"""
INSERT INTO metering_dailyreading ({_COLUMNS_SQL})
SELECT {_COLUMNS_SQL} FROM kw_daily_stage ORDER BY meter_id, read_date
ON CONFLICT (meter_id, read_date) DO UPDATE SET {_UPDATE_SQL}
WHERE metering_dailyreading.source = 'estimated' AND EXCLUDED.source <> 'estimated'
"""  # noqa: S608 - only the column-name constants above are interpolated
_PLAIN_INSERT_SQL = f"""
INSERT INTO metering_dailyreading ({_COLUMNS_SQL})
SELECT {_COLUMNS_SQL} FROM kw_daily_stage ORDER BY meter_id, read_date
"""  # noqa: S608 - only the column-name constants above are interpolated
# Staged rows that did not get in: someone else's row holds their (meter, day).
_LOST_SQL = """
SELECT s.meter_id, s.read_date, d.source, {values}
FROM kw_daily_stage s JOIN metering_dailyreading d ON d.meter_id = s.meter_id AND d.read_date = s.read_date
WHERE d.batch_id IS DISTINCT FROM s.batch_id
""".format(values=", ".join(f"d.{v}" for v in VALUE_FIELDS))

NULL = "\\N"  # COPY text format
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_line(r: _Reading, tail: str) -> str:
    v = r.values
    sp = r.service_point_id
    return (
        f"{r.meter_id}\t{r.read_date.isoformat()}\t{r.read_at.isoformat()}\t{NULL if sp is None else sp}\t"
        f"{v[0]}\t{NULL if v[1] is None else v[1]}\t{NULL if v[2] is None else v[2]}\t"
        f"{NULL if v[3] is None else v[3]}\t{NULL if v[4] is None else v[4]}\t"
        f"{NULL if v[5] is None else v[5]}\t{NULL if v[6] is None else v[6]}\t"
        f"{NULL if v[7] is None else v[7]}\t{NULL if v[8] is None else v[8]}\t"
        f"{tail[0]}\t{r.quality}\t{r.note.translate(_COPY_ESCAPES) if r.note else ''}\t{tail[1]}\n"
    )


def _write_postgres(batch: ReadingBatch, accepted: list[_Reading]) -> list[tuple]:
    """COPY the accepted readings into a temporary table and insert them from there.
    Returns the rows that another delivery stored first (meter_id, read_date, source,
    values...)."""
    tail = (batch.source, str(batch.pk))
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS pg_temp.kw_daily_stage")
        cursor.execute(_STAGE_DDL)
        with cursor.cursor.copy(f"COPY kw_daily_stage ({_COLUMNS_SQL}) FROM STDIN") as copy:
            for start in range(0, len(accepted), 5_000):
                copy.write("".join([_copy_line(r, tail) for r in accepted[start : start + 5_000]]))
        lost = []
        try:
            # Nearly always every row is new: a plain insert is a third cheaper than one
            # with ON CONFLICT. If a row was there after all, do it the careful way.
            with transaction.atomic():
                cursor.execute(_PLAIN_INSERT_SQL)
        except IntegrityError:
            cursor.execute(_INSERT_SQL)
            if cursor.rowcount != len(accepted):
                cursor.execute(_LOST_SQL)
                lost = cursor.fetchall()
        cursor.execute("DROP TABLE kw_daily_stage")
    return lost


def _settle_lost_races(lost: list[tuple], validator: _Validator) -> None:
    """Readings whose (meter, day) was taken between our look-up and our insert (by a
    concurrent delivery, or by a same-day estimate that was no baseline): a duplicate when
    the values agree, a conflicting duplicate otherwise."""
    by_key = {(r.meter_id, r.read_date): r for r in validator.accepted}
    gone = set()
    for row in lost:
        reading = by_key[(row[0], row[1])]
        gone.add(id(reading))
        stored_values = tuple(row[3:])
        if stored_values == reading.values:
            validator.duplicates += 1
        else:
            validator.reject(
                reading,
                RejectionReason.CONFLICTING_DUPLICATE,
                _conflicting(reading.address, reading.read_date, stored_values, reading.values),
            )
            validator.rejections[-1].meter_id = reading.meter_id
    validator.accepted[:] = [r for r in validator.accepted if id(r) not in gone]


def _write_portable(batch: ReadingBatch, accepted: list[_Reading], replacing: list[_Reading]) -> None:
    replaced = {id(r) for r in replacing}
    for r in replacing:
        DailyReading.objects.filter(meter_id=r.meter_id, read_date=r.read_date, source=ESTIMATED).update(
            **_row_fields(batch, r)
        )
    DailyReading.objects.bulk_create(
        [
            DailyReading(meter_id=r.meter_id, read_date=r.read_date, **_row_fields(batch, r))
            for r in accepted
            if id(r) not in replaced
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
