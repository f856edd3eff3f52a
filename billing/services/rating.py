"""Real-time rating of stored readings for remote cost-control (prepaid) accounts.

``rate_batch(batch_id)`` runs when metering reports a stored batch (``metering.hooks``; the
task is queued after commit). Work is set-based: one query for the batch's readings with
their accounts, one for the meters' rating cursors, one for the tier accumulators; charges
computed in memory by the pure engine (``billing.rating.engine.rate_energy_day``); entries,
cursors, accumulators and balances written with a few bulk statements (COPY on PostgreSQL)
in one transaction per slice of accounts, holding those accounts' billing-state locks in
ascending order, so a payment posted at the same moment waits and loses nothing.

Consumption is the difference between a meter's freeze registers and its rating cursor
(the registers rated so far) times the CT x PT multiplier, charged on the day before the
freeze date. Idempotent: a reading at or before the cursor is not rated again, and each
entry's idempotency key (meter, freeze date) is unique in the database. An estimated
reading is rated like an actual one; when the actual for the same day replaces it, the
difference is rated as a true-up (positive or negative). A meter seen for the first time
starts its cursor at that reading (nothing charged); ``rating_cursors_start`` sets cursors
for accounts entering real-time rating.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

import structlog
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from billing.models import AccountBilling, EntryKind, EntrySource, LedgerEntry, RatingCursor, TierAccumulator
from billing.rating import engine
from billing.rating import model as rm
from billing.services.ledger import billing_states_lock
from billing.services.policy import policy_evaluate
from billing.services.tariffs import account_tariffs, tariff_on, tariff_specs
from core.money import quantize_energy
from customers.models import Account, SettlementMode
from metering.models import CostControlMode, DailyReading, ReadingSource

logger = structlog.get_logger(__name__)

BANDS = ("sharp", "peak", "flat", "valley")
ROLLOVER = Decimal("1000000")  # registers roll over past 999,999.99 kWh
SLICE_READINGS = 20_000  # readings per transaction (whole accounts per slice)
ZERO = Decimal("0")


@dataclass
class RatingResult:
    readings: int = 0
    rated: int = 0
    entries: int = 0
    baselines: int = 0
    skipped: int = 0
    true_ups: int = 0
    decisions: int = 0
    accounts: int = 0
    unrated: dict = field(default_factory=lambda: defaultdict(int))


_READINGS_SQL = """
SELECT d.id, d.meter_id, d.read_date, d.forward_total, d.forward_sharp, d.forward_peak,
       d.forward_flat, d.forward_valley, d.source, sp.account_id, sp.ct_ratio * sp.pt_ratio
FROM metering_dailyreading d
JOIN customers_servicepoint sp ON sp.id = d.service_point_id
JOIN customers_account a ON a.id = sp.account_id
JOIN metering_meter m ON m.id = d.meter_id
WHERE d.batch_id = %s AND a.settlement_mode = %s AND m.cost_control_mode = %s
ORDER BY sp.account_id, d.meter_id, d.read_date
"""


def rate_batch(batch_id: int, *, now=None) -> RatingResult:
    """Rate the readings of one stored batch (see the module docstring)."""
    with connection.cursor() as cursor:
        cursor.execute(_READINGS_SQL, [batch_id, SettlementMode.PREPAID, CostControlMode.REMOTE])
        rows = cursor.fetchall()
    return rate_readings(rows, trigger_ref=f"batch:{batch_id}", now=now)


def rate_readings(rows: list[tuple], *, trigger_ref: str = "", now=None) -> RatingResult:
    """Rate reading rows shaped like ``_READINGS_SQL`` (sorted by account, meter, date)."""
    result = RatingResult(readings=len(rows))
    for chunk in _slices(rows):
        _rate_slice(chunk, result, trigger_ref=trigger_ref, now=now)
    logger.info(
        "readings_rated",
        ref=trigger_ref,
        readings=result.readings,
        entries=result.entries,
        baselines=result.baselines,
        skipped=result.skipped,
        true_ups=result.true_ups,
        decisions=result.decisions,
        unrated=dict(result.unrated),
    )
    return result


def _slices(rows: list[tuple]):
    """Cut the sorted rows into slices of about SLICE_READINGS without splitting an account."""
    start = 0
    while start < len(rows):
        end = min(start + SLICE_READINGS, len(rows))
        while end < len(rows) and rows[end][9] == rows[end - 1][9]:
            end += 1
        yield rows[start:end]
        start = end


class _Tiers:
    """Tier period, limits and accumulated kWh per account, loaded for one slice."""

    def __init__(self, account_ids: list[int], periods: set[date]):
        self.used: dict[tuple[int, date], Decimal] = {}
        self.changed: set[tuple[int, date]] = set()
        if periods:
            for account_id, start, kwh in TierAccumulator.objects.filter(
                account_id__in=account_ids, period_start__in=periods
            ).values_list("account_id", "period_start", "kwh"):
                self.used[(account_id, start)] = kwh

    def get(self, account_id: int, period: date) -> Decimal:
        return self.used.get((account_id, period), ZERO)

    def set(self, account_id: int, period: date, kwh: Decimal) -> None:
        self.used[(account_id, period)] = kwh
        self.changed.add((account_id, period))


def tier_period_start(basis: str, day: date) -> date | None:
    if basis == "monthly":
        return day.replace(day=1)
    if basis == "annual":
        return day.replace(month=1, day=1)
    return None


class _Prices:
    """Version, tier period and tier limits for (tariff, day, account), memoised."""

    def __init__(self, specs: dict[int, rm.TariffSpec], opened: dict[int, tuple[date, date | None]]):
        self.specs = specs
        self.opened = opened
        self._versions: dict[tuple[int, date], rm.PriceVersion | None] = {}
        self._limits: dict[tuple[int, date, int], tuple] = {}

    def version(self, tariff_id: int, day: date) -> rm.PriceVersion | None:
        key = (tariff_id, day)
        if key not in self._versions:
            found = None
            for v in self.specs[tariff_id].versions:
                if v.effective_from <= day and (v.effective_to is None or day < v.effective_to):
                    found = v
            self._versions[key] = found
        return self._versions[key]

    def limits(self, tariff_id: int, version: rm.PriceVersion, period: date | None, account_id: int) -> tuple:
        if period is None or not version.tiers:
            return ()
        opened_on, closed_on = self.opened.get(account_id, (None, None))
        key = (id(version), period, account_id if version.tier_basis == "annual" else 0)
        cached = self._limits.get(key)
        if cached is None:
            cached = engine.prorated_tier_limits(version, period.year, opened_on, closed_on)
            self._limits[key] = cached
        return cached


def _delta(new, old, true_up: bool = False) -> Decimal | None:
    if new is None or old is None:
        return None
    d = new - old
    if d < 0 and not true_up:
        d += ROLLOVER  # metering stores a decrease only as a recorded rollover (or exchange: new meter)
    return d


def _rate_slice(rows: list[tuple], result: RatingResult, *, trigger_ref: str, now) -> None:
    account_ids = sorted({r[9] for r in rows})
    meter_ids = sorted({r[1] for r in rows})
    with transaction.atomic():
        states = billing_states_lock(account_ids)
        cursors = {
            c.meter_id: c for c in RatingCursor.objects.select_for_update().filter(meter_id__in=meter_ids)
        }
        assignments = account_tariffs(account_ids)
        specs = tariff_specs({t for a in assignments.values() for _s, t in a})
        opened = {
            pk: (opened_on, closed_on)
            for pk, opened_on, closed_on in Account.objects.filter(pk__in=account_ids).values_list(
                "pk", "opened_on", "closed_on"
            )
        }
        prices = _Prices(specs, opened)
        periods = set()
        for r in rows:
            day = r[2] - timedelta(days=1)
            periods.add(day.replace(day=1))
            periods.add(day.replace(month=1, day=1))
        tiers = _Tiers(account_ids, periods)

        entries: list[tuple] = []
        cursor_rows: dict[int, tuple] = {}
        for r in rows:
            reading_id, meter_id, read_date, total, sharp, peak, flat, valley, source, account_id, mult = r
            estimated = source == ReadingSource.ESTIMATED
            cur = cursor_rows.get(meter_id) or _cursor_tuple(cursors.get(meter_id))
            registers = (total, sharp, peak, flat, valley)
            if cur is None:
                cursor_rows[meter_id] = (account_id, read_date, reading_id, estimated, registers, mult)
                result.baselines += 1
                continue
            _acc, cur_date, _cur_id, cur_estimated, cur_regs, _m = cur
            if read_date > cur_date:
                kind = "daily"
            elif read_date == cur_date and cur_estimated and not estimated:
                kind = "true_up"
            else:
                result.skipped += 1  # already rated (a batch delivered twice) or older than the cursor
                continue
            cursor_rows[meter_id] = (account_id, read_date, reading_id, estimated, registers, mult)
            day = read_date - timedelta(days=1)
            tariff_id = tariff_on(assignments.get(account_id, []), day)
            if tariff_id is None or tariff_id not in specs:
                result.unrated["no_tariff"] += 1
                continue
            version = prices.version(tariff_id, day)
            if version is None:
                result.unrated["no_price_on_day"] += 1
                continue
            kwh = _consumption(registers, cur_regs, mult, version, true_up=kind == "true_up")
            if kwh is None:
                result.unrated["registers"] += 1
                continue
            period = tier_period_start(version.tier_basis, day)
            used = tiers.get(account_id, period) if period else ZERO
            limits = prices.limits(tariff_id, version, period, account_id)
            amount, used_after = engine.rate_energy_day(version, kwh, used, limits)
            if period:
                tiers.set(account_id, period, used_after)
            result.rated += 1
            if amount == 0:
                continue
            total_kwh = quantize_energy(sum(kwh.values(), ZERO))
            label = "True-up" if kind == "true_up" else "Energy"
            suffix = ":true-up" if kind == "true_up" else ""
            if kind == "true_up":
                result.true_ups += 1
            entries.append(
                (
                    account_id,
                    -amount,
                    total_kwh,
                    day,
                    f"{label} {day:%Y-%m-%d} {total_kwh} kWh",
                    f"reading:{reading_id}",
                    f"rt:{meter_id}:{read_date:%Y%m%d}{suffix}",
                )
            )

        inserted = _insert_entries(entries)
        result.entries += len(inserted)
        deltas: dict[int, Decimal] = defaultdict(lambda: ZERO)
        for account_id, amount in inserted:
            deltas[account_id] += amount
        _save_cursors(cursor_rows)
        _save_tiers(tiers)
        stamp = now or timezone.now()
        _update_balances(deltas, stamp)
        for account_id, delta in deltas.items():
            states[account_id].balance += delta
        touched = {a: states[a] for a in deltas}
        result.accounts += len(touched)
        result.decisions += len(policy_evaluate(touched, trigger="rating", trigger_ref=trigger_ref, now=now))


def _cursor_tuple(c: RatingCursor | None):
    if c is None:
        return None
    return (
        c.account_id,
        c.read_date,
        c.reading_id,
        c.estimated,
        (c.total, c.sharp, c.peak, c.flat, c.valley),
        c.multiplier,
    )


def _consumption(registers, previous, mult, version: rm.PriceVersion, *, true_up: bool) -> dict | None:
    """kWh by band between two register sets (x multiplier). Bands the tariff does not
    price are billed at the flat price; a tariff with band prices but a reading without band
    registers bills the whole difference as flat."""
    total = _delta(registers[0], previous[0], true_up)
    if total is None:
        return None
    mult = Decimal(mult)
    prices = version.energy_prices
    if len(prices) == 1:
        return {"flat": total * mult}
    kwh: dict[str, Decimal] = {}
    banded = ZERO
    for i, band in enumerate(BANDS, start=1):
        if band == "flat":
            continue
        d = _delta(registers[i], previous[i], true_up)
        if d is None or d == 0:
            continue
        target = band if band in prices else "flat"
        kwh[target] = kwh.get(target, ZERO) + d * mult
        banded += d
    rest = total - banded  # flat register plus any rounding between total and bands
    if rest:
        kwh["flat"] = kwh.get("flat", ZERO) + rest * mult
    return kwh


# --- bulk writes ------------------------------------------------------------------------


def _insert_entries(entries: list[tuple]) -> list[tuple[int, Decimal]]:
    """Insert entries, skipping keys already posted; returns (account_id, amount) inserted."""
    if not entries:
        return []
    if connection.vendor != "postgresql":
        objs = []
        existing = set(
            LedgerEntry.objects.filter(idempotency_key__in=[e[6] for e in entries]).values_list(
                "idempotency_key", flat=True
            )
        )
        for account_id, amount, kwh, day, description, ref, key in entries:
            if key in existing:
                continue
            objs.append(
                LedgerEntry(
                    account_id=account_id,
                    kind=EntryKind.ENERGY_CHARGE,
                    amount=amount,
                    kwh=kwh,
                    business_date=day,
                    description=description,
                    source=EntrySource.READING,
                    source_ref=ref,
                    idempotency_key=key,
                )
            )
        LedgerEntry.objects.bulk_create(objs, batch_size=2000)
        return [(o.account_id, o.amount) for o in objs]
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS billing_rating_stage ("
            " account_id bigint, amount numeric(14,2), kwh numeric(14,2), business_date date,"
            " description varchar(200), source_ref varchar(64), idempotency_key varchar(96)"
            ") ON COMMIT DELETE ROWS"
        )
        buf = io.StringIO()
        for account_id, amount, kwh, day, description, ref, key in entries:
            buf.write(f"{account_id}\t{amount}\t{kwh}\t{day.isoformat()}\t{description}\t{ref}\t{key}\n")
        with cursor.copy(
            "COPY billing_rating_stage (account_id, amount, kwh, business_date, description, source_ref,"
            " idempotency_key) FROM STDIN"
        ) as copy:
            copy.write(buf.getvalue())
        cursor.execute(
            "INSERT INTO billing_ledgerentry (account_id, kind, amount, kwh, business_date, description,"
            " source, source_ref, idempotency_key, created_at)"
            " SELECT account_id, %s, amount, kwh, business_date, description, %s, source_ref,"
            " idempotency_key, now() FROM billing_rating_stage"
            " ON CONFLICT (idempotency_key) DO NOTHING RETURNING account_id, amount",
            [EntryKind.ENERGY_CHARGE.value, EntrySource.READING.value],
        )
        inserted = cursor.fetchall()
        cursor.execute("TRUNCATE billing_rating_stage")
    return inserted


def _save_cursors(cursor_rows: dict[int, tuple]) -> None:
    if not cursor_rows:
        return
    objs = [
        RatingCursor(
            meter_id=meter_id,
            account_id=account_id,
            read_date=read_date,
            reading_id=reading_id,
            estimated=estimated,
            total=regs[0],
            sharp=regs[1],
            peak=regs[2],
            flat=regs[3],
            valley=regs[4],
            multiplier=mult,
            updated_at=timezone.now(),
        )
        for meter_id, (account_id, read_date, reading_id, estimated, regs, mult) in cursor_rows.items()
    ]
    RatingCursor.objects.bulk_create(
        objs,
        batch_size=5000,
        update_conflicts=True,
        unique_fields=["meter"],
        update_fields=[
            "account",
            "read_date",
            "reading_id",
            "estimated",
            "total",
            "sharp",
            "peak",
            "flat",
            "valley",
            "multiplier",
            "updated_at",
        ],
    )


def _save_tiers(tiers: _Tiers) -> None:
    if not tiers.changed:
        return
    objs = [
        TierAccumulator(account_id=a, period_start=p, kwh=quantize_energy(tiers.used[(a, p)]))
        for a, p in sorted(tiers.changed)
    ]
    TierAccumulator.objects.bulk_create(
        objs,
        batch_size=5000,
        update_conflicts=True,
        unique_fields=["account", "period_start"],
        update_fields=["kwh"],
    )


def _update_balances(deltas: dict[int, Decimal], stamp) -> None:
    if not deltas:
        return
    if connection.vendor != "postgresql":
        for account_id, delta in deltas.items():
            AccountBilling.objects.filter(pk=account_id).update(
                balance=F("balance") + delta, last_rated_at=stamp
            )
        return
    ids = list(deltas)
    amounts = [str(deltas[i]) for i in ids]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE billing_accountbilling b SET balance = b.balance + v.delta, last_rated_at = %s,"
            " updated_at = %s"
            " FROM unnest(%s::bigint[], %s::numeric[]) AS v(account_id, delta)"
            " WHERE b.account_id = v.account_id",
            [stamp, stamp, ids, amounts],
        )


# --- starting cursors ---------------------------------------------------------------------


_LATEST_SQL = """
SELECT DISTINCT ON (d.meter_id) d.id, d.meter_id, d.read_date, d.forward_total, d.forward_sharp,
       d.forward_peak, d.forward_flat, d.forward_valley, d.source, sp.account_id, sp.ct_ratio * sp.pt_ratio
FROM metering_dailyreading d
JOIN customers_servicepoint sp ON sp.id = d.service_point_id
WHERE d.meter_id = ANY(%s) AND d.read_date <= %s
ORDER BY d.meter_id, d.read_date DESC
"""


def rating_cursors_start(*, meter_ids: list[int], as_of: date) -> int:
    """Start (or move forward) the rating cursors of these meters at their latest reading on
    or before ``as_of``, charging nothing: consumption up to there is billed elsewhere (a
    migration's opening balance, or the post-paid bill that ended)."""
    started = 0
    for start in range(0, len(meter_ids), 5000):
        ids = meter_ids[start : start + 5000]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(_LATEST_SQL, [ids, as_of])
                rows = cursor.fetchall()
        else:
            rows = []
            for meter_id in ids:
                d = (
                    DailyReading.objects.filter(
                        meter_id=meter_id, read_date__lte=as_of, service_point__isnull=False
                    )
                    .select_related("service_point")
                    .order_by("-read_date")
                    .first()
                )
                if d is not None:
                    sp = d.service_point
                    rows.append(
                        (
                            d.id,
                            d.meter_id,
                            d.read_date,
                            d.forward_total,
                            d.forward_sharp,
                            d.forward_peak,
                            d.forward_flat,
                            d.forward_valley,
                            d.source,
                            sp.account_id,
                            sp.ct_ratio * sp.pt_ratio,
                        )
                    )
        cursor_rows = {
            r[1]: (r[9], r[2], r[0], r[8] == ReadingSource.ESTIMATED, (r[3], r[4], r[5], r[6], r[7]), r[10])
            for r in rows
        }
        with transaction.atomic():
            _save_cursors(cursor_rows)
        started += len(cursor_rows)
    return started
