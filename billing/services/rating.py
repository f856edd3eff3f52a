"""Real-time rating of stored readings for remote cost-control (prepaid) accounts.

``rate_batch(batch_id)`` runs when metering reports a stored batch (``metering.hooks``; the
task is queued after commit). Work is set-based: one query for the batch's readings with
their accounts; then per slice of whole accounts (at most ``SLICE_READINGS`` readings), one
transaction that locks the accounts' billing states in ascending id order (so a payment
posted at the same moment waits and loses nothing), loads cursors, tariffs and tier
accumulators with one query each (ids passed as one array), computes the charges in memory
with the pure engine (``billing.rating.engine.rate_energy_day``), COPYs the entries straight
into the ledger, moves the balances with one UPDATE, writes cursors and accumulators with
one statement each and hands only the accounts the policy could act on to
``policy_evaluate``. On PostgreSQL a large batch outside a caller's transaction is shared
out among ``WORKERS`` threads, each with its own connection (the slices' accounts are
disjoint). ``RatingResult.seconds`` says where the time went.

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

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

import psycopg
import structlog
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from billing.models import AccountBilling, EntryKind, EntrySource, LedgerEntry, RatingCursor, TierAccumulator
from billing.rating import engine
from billing.rating import model as rm
from billing.services.ledger import billing_states_ensure, billing_states_lock
from billing.services.policy import policy_evaluate, policy_may_act, policy_quiet_above
from billing.services.tariffs import account_tariffs, tariff_on, tariff_specs
from core.money import quantize_energy
from customers.models import Account, SettlementMode
from metering.models import CostControlMode, DailyReading, ReadingSource

logger = structlog.get_logger(__name__)

BANDS = ("sharp", "peak", "flat", "valley")
ROLLOVER = Decimal("1000000")  # registers roll over past 999,999.99 kWh
SLICE_READINGS = 20_000  # readings per transaction at most (whole accounts per slice)
WORKERS = 2  # slices rated at once (threads, each with its own connection)
PARALLEL_FROM = 10_000  # readings in a batch from which it is shared out among the workers
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
    # Seconds spent per phase (fetch, lock, load, compute, entries, cursors, tiers, policy, commit),
    # summed over the workers.
    seconds: dict = field(default_factory=lambda: defaultdict(float))

    def add(self, other: RatingResult) -> None:
        for name in ("rated", "entries", "baselines", "skipped", "true_ups", "decisions", "accounts"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, n in other.unrated.items():
            self.unrated[key] += n
        for key, n in other.seconds.items():
            self.seconds[key] += n


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
    started = time.perf_counter()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_READINGS_SQL, [batch_id, SettlementMode.PREPAID, CostControlMode.REMOTE])
            rows = cursor.fetchall()
    else:
        rows = _readings_portable(batch_id)
    fetched = time.perf_counter() - started
    result = rate_readings(rows, trigger_ref=f"batch:{batch_id}", now=now)
    result.seconds["fetch"] += fetched
    return result


def _readings_portable(batch_id: int) -> list[tuple]:
    """The same rows through the ORM: SQLite hands raw numeric columns back as float, and
    no float may touch energy; the ORM's converters give Decimal."""
    qs = (
        DailyReading.objects.filter(
            batch_id=batch_id,
            service_point__account__settlement_mode=SettlementMode.PREPAID,
            meter__cost_control_mode=CostControlMode.REMOTE,
        )
        .order_by("service_point__account_id", "meter_id", "read_date")
        .values_list(
            "id",
            "meter_id",
            "read_date",
            "forward_total",
            "forward_sharp",
            "forward_peak",
            "forward_flat",
            "forward_valley",
            "source",
            "service_point__account_id",
            "service_point__ct_ratio",
            "service_point__pt_ratio",
        )
    )
    return [(*r[:10], (r[10] or 1) * (r[11] or 1)) for r in qs]


def rate_readings(rows: list[tuple], *, trigger_ref: str = "", now=None) -> RatingResult:
    """Rate reading rows shaped like ``_READINGS_SQL`` (sorted by account, meter, date).

    Slices hold disjoint sets of accounts, so on PostgreSQL, outside a caller's transaction,
    they are rated ``WORKERS`` at a time, each worker in its own thread and connection: one
    slice's SQL runs while another's charges are computed."""
    result = RatingResult(readings=len(rows))
    parallel = (
        WORKERS > 1
        and len(rows) >= PARALLEL_FROM
        and connection.vendor == "postgresql"
        and not connection.in_atomic_block
    )
    if parallel:
        rounds = -(-len(rows) // (WORKERS * SLICE_READINGS))
        slices = list(_slices(rows, -(-len(rows) // (WORKERS * rounds))))
        shares = [slices[w::WORKERS] for w in range(WORKERS)]
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="rating") as pool:
            futures = [
                pool.submit(_rate_slices_in_thread, share, trigger_ref=trigger_ref, now=now)
                for share in shares
            ]
            for future in futures:
                result.add(future.result())
    else:
        for chunk in _slices(rows, SLICE_READINGS):
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


def _rate_slices_in_thread(slices: list[list[tuple]], *, trigger_ref: str, now) -> RatingResult:
    result = RatingResult()
    try:
        for chunk in slices:
            _rate_slice(chunk, result, trigger_ref=trigger_ref, now=now)
    finally:
        connection.close()  # this thread's own connection
    return result


def _slices(rows: list[tuple], size: int):
    """Cut the sorted rows into slices of about ``size`` without splitting an account."""
    start = 0
    while start < len(rows):
        end = min(start + size, len(rows))
        while end < len(rows) and rows[end][9] == rows[end - 1][9]:
            end += 1
        yield rows[start:end]
        start = end


class _Tiers:
    """Tier period, limits and accumulated kWh per account, loaded for one slice."""

    def __init__(self, used: dict[tuple[int, date], Decimal]):
        self.used = used
        self.loaded = set(used)
        self.changed: set[tuple[int, date]] = set()

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
    store = _PgStore() if connection.vendor == "postgresql" else _OrmStore()
    clock = _Clock(result.seconds)
    with transaction.atomic():
        # The accounts' billing states first, in id order: every writer of an account's
        # entries, balance, cursors and accumulators holds this lock (no deadlock, no lost write).
        store.lock_accounts(account_ids)
        clock("lock")
        cursors = store.cursors(meter_ids)
        assignments = store.tariff_assignments(account_ids)
        specs = tariff_specs({t for a in assignments.values() for _s, t in a})
        prices = _Prices(specs, store.open_dates(account_ids))
        periods = set()
        for day in {r[2] for r in rows}:
            day -= ONE_DAY
            periods.add(day.replace(day=1))
            periods.add(day.replace(month=1, day=1))
        tiers = _Tiers(store.tier_kwh(account_ids, periods))
        clock("load")
        entries, cursor_rows = _compute(rows, result, cursors, assignments, specs, prices, tiers)
        clock("compute")

        stamp = now or timezone.now()
        touched = store.post_entries(entries, stamp)  # account_id -> (entries, billing figures)
        result.entries += sum(n for n, _figures in touched.values())
        clock("entries")
        store.save_cursors(cursor_rows, stamp, existing=cursors.keys())
        clock("cursors")
        store.save_tiers(
            {key: quantize_energy(tiers.used[key]) for key in sorted(tiers.changed)}, existing=tiers.loaded
        )
        clock("tiers")
        result.accounts += len(touched)
        # Only accounts the policy could act on are loaded as states (see policy_may_act).
        quiet_above = policy_quiet_above()
        candidates = [a for a, (_n, figures) in touched.items() if policy_may_act(*figures, quiet_above)]
        if candidates:
            states = AccountBilling.objects.in_bulk(candidates)
            decided = policy_evaluate(states, trigger="rating", trigger_ref=trigger_ref, now=now)
            result.decisions += len(decided)
        clock("policy")
    clock("commit")


class _Clock:
    """Adds the seconds since the previous call to ``seconds[phase]``."""

    def __init__(self, seconds: dict):
        self.seconds = seconds
        self.last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] += now - self.last
        self.last = now


ONE_DAY = timedelta(days=1)


def _compute(rows, result, cursors, assignments, specs, prices, tiers) -> tuple[list[tuple], dict]:
    """Rate the slice's readings in memory -> (entries, new cursors by meter)."""
    entries: list[tuple] = []
    cursor_rows: dict[int, tuple] = {}
    tariff_of: dict[tuple[int, date], int | None] = {}
    day_text: dict[date, tuple[str, str]] = {}
    estimated_source = ReadingSource.ESTIMATED
    rate_energy_day = engine.rate_energy_day
    for r in rows:
        reading_id, meter_id, read_date, total, sharp, peak, flat, valley, source, account_id, mult = r
        estimated = source == estimated_source
        cur = cursor_rows.get(meter_id) or cursors.get(meter_id)
        registers = (total, sharp, peak, flat, valley)
        if cur is None:
            cursor_rows[meter_id] = (account_id, read_date, reading_id, estimated, registers, mult)
            result.baselines += 1
            continue
        cur_date, cur_estimated, cur_regs = cur[1], cur[3], cur[4]
        if read_date > cur_date:
            true_up = False
        elif read_date == cur_date and cur_estimated and not estimated:
            true_up = True
        else:
            result.skipped += 1  # already rated (a batch delivered twice) or older than the cursor
            continue
        cursor_rows[meter_id] = (account_id, read_date, reading_id, estimated, registers, mult)
        day = read_date - ONE_DAY
        key = (account_id, day)
        tariff_id = tariff_of.get(key, 0)
        if tariff_id == 0:
            tariff_id = tariff_of[key] = tariff_on(assignments.get(account_id, []), day)
        if tariff_id is None or tariff_id not in specs:
            result.unrated["no_tariff"] += 1
            continue
        version = prices.version(tariff_id, day)
        if version is None:
            result.unrated["no_price_on_day"] += 1
            continue
        kwh = consumption_by_band(registers, cur_regs, mult, version, true_up=true_up)
        if kwh is None:
            result.unrated["registers"] += 1
            continue
        period = tier_period_start(version.tier_basis, day)
        if period:
            used = tiers.get(account_id, period)
            limits = prices.limits(tariff_id, version, period, account_id)
        else:
            used, limits = ZERO, ()
        amount, used_after = rate_energy_day(version, kwh, used, limits)
        if period:
            tiers.set(account_id, period, used_after)
        result.rated += 1
        if amount == 0:
            continue
        total_kwh = quantize_energy(sum(kwh.values(), ZERO))
        texts = day_text.get(read_date)
        if texts is None:
            texts = day_text[read_date] = (day.isoformat(), read_date.strftime("%Y%m%d"))
        if true_up:
            result.true_ups += 1
            description, key = f"True-up {texts[0]} {total_kwh} kWh", f"rt:{meter_id}:{texts[1]}:true-up"
        else:
            description, key = f"Energy {texts[0]} {total_kwh} kWh", f"rt:{meter_id}:{texts[1]}"
        entries.append((account_id, -amount, total_kwh, day, description, f"reading:{reading_id}", key))
    return entries, cursor_rows


def consumption_by_band(
    registers, previous, mult, version: rm.PriceVersion, *, true_up: bool = False
) -> dict | None:
    """kWh by band between two register sets (x multiplier). Bands the tariff does not
    price are billed at the flat price; a tariff with band prices but a reading without band
    registers bills the whole difference as flat. Registers are (total, sharp, peak, flat,
    valley); a decrease is a rollover unless ``true_up`` (an actual replacing an estimate)."""
    total = _delta(registers[0], previous[0], true_up)
    if total is None:
        return None
    if mult != 1:
        mult = Decimal(mult)
    prices = version.energy_prices
    if len(prices) == 1:
        return {"flat": total * mult}
    kwh: dict[str, Decimal] = {}
    banded = ZERO
    for i, band in ((1, "sharp"), (2, "peak"), (4, "valley")):
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


# --- loading and writing ------------------------------------------------------------------


def _ids(values) -> str:
    """A PostgreSQL array literal of ids (one parameter, however many ids)."""
    return "{" + ",".join(map(str, values)) + "}"


def _copy_text(value) -> str:
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    return str(value)


_STAGES = (
    "CREATE TEMP TABLE IF NOT EXISTS billing_rating_stage ("
    " account_id bigint, amount numeric(14,2), kwh numeric(14,2), business_date date,"
    " description varchar(200), source_ref varchar(64), idempotency_key varchar(96)"
    ") ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS billing_rating_cursor_stage ("
    " meter_id bigint, account_id bigint, read_date date, reading_id bigint, estimated boolean,"
    " total numeric(14,2), sharp numeric(14,2), peak numeric(14,2), flat numeric(14,2),"
    " valley numeric(14,2), multiplier numeric(10,2)"
    ") ON COMMIT DELETE ROWS",
)

_SAVE_CURSORS_SQL = """
INSERT INTO billing_ratingcursor (meter_id, account_id, read_date, reading_id, estimated, total, sharp,
                                  peak, flat, valley, multiplier, updated_at)
SELECT meter_id, account_id, read_date, reading_id, estimated, total, sharp, peak, flat, valley,
       multiplier, %s
FROM billing_rating_cursor_stage
ON CONFLICT (meter_id) DO UPDATE SET
    account_id = EXCLUDED.account_id, read_date = EXCLUDED.read_date, reading_id = EXCLUDED.reading_id,
    estimated = EXCLUDED.estimated, total = EXCLUDED.total, sharp = EXCLUDED.sharp,
    peak = EXCLUDED.peak, flat = EXCLUDED.flat, valley = EXCLUDED.valley,
    multiplier = EXCLUDED.multiplier, updated_at = EXCLUDED.updated_at
"""

_UPDATE_CURSORS_SQL = """
UPDATE billing_ratingcursor c SET
    account_id = s.account_id, read_date = s.read_date, reading_id = s.reading_id, estimated = s.estimated,
    total = s.total, sharp = s.sharp, peak = s.peak, flat = s.flat, valley = s.valley,
    multiplier = s.multiplier, updated_at = %s
FROM billing_rating_cursor_stage s WHERE c.meter_id = s.meter_id
"""

_UPDATE_TIERS_SQL = """
UPDATE billing_tieraccumulator t SET kwh = v.kwh
FROM unnest(%s::bigint[], %s::date[], %s::numeric[]) AS v(account_id, period_start, kwh)
WHERE t.account_id = v.account_id AND t.period_start = v.period_start
"""

_SAVE_TIERS_SQL = """
INSERT INTO billing_tieraccumulator (account_id, period_start, kwh)
SELECT * FROM unnest(%s::bigint[], %s::date[], %s::numeric[])
ON CONFLICT (account_id, period_start) DO UPDATE SET kwh = EXCLUDED.kwh
"""


class _PgStore:
    """Set-based loads and writes on PostgreSQL: ids passed as one array, rows written with
    COPY into temporary staging tables and moved with one statement each."""

    def lock_accounts(self, account_ids: list[int]) -> None:
        sql = (
            "SELECT account_id FROM billing_accountbilling WHERE account_id = ANY(%s::bigint[])"
            " ORDER BY account_id FOR NO KEY UPDATE"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [_ids(account_ids)])
            if cursor.rowcount != len(account_ids):
                # Accounts without a billing state yet (rare): create them, then lock them too.
                found = {a for (a,) in cursor.fetchall()}
                missing = [a for a in account_ids if a not in found]
                billing_states_ensure(missing)
                cursor.execute(sql, [_ids(missing)])

    def cursors(self, meter_ids: list[int]) -> dict[int, tuple]:
        # No row locks needed: every writer of a cursor holds its account's billing lock.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT meter_id, account_id, read_date, reading_id, estimated, total, sharp, peak, flat,"
                " valley FROM billing_ratingcursor WHERE meter_id = ANY(%s::bigint[])",
                [_ids(meter_ids)],
            )
            return {r[0]: (r[1], r[2], r[3], r[4], r[5:10]) for r in cursor.fetchall()}

    def tariff_assignments(self, account_ids: list[int]) -> dict[int, list[tuple[date, int]]]:
        result: dict[int, list[tuple[date, int]]] = defaultdict(list)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT account_id, effective_from, tariff_id FROM billing_accounttariff"
                " WHERE account_id = ANY(%s::bigint[]) ORDER BY account_id, effective_from",
                [_ids(account_ids)],
            )
            for account_id, start, tariff_id in cursor.fetchall():
                result[account_id].append((start, tariff_id))
        return result

    def open_dates(self, account_ids: list[int]) -> dict[int, tuple[date, date | None]]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, opened_on, closed_on FROM customers_account WHERE id = ANY(%s::bigint[])",
                [_ids(account_ids)],
            )
            return {pk: (opened_on, closed_on) for pk, opened_on, closed_on in cursor.fetchall()}

    def tier_kwh(self, account_ids: list[int], periods: set[date]) -> dict[tuple[int, date], Decimal]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT account_id, period_start, kwh FROM billing_tieraccumulator"
                " WHERE account_id = ANY(%s::bigint[]) AND period_start = ANY(%s::date[])",
                [_ids(account_ids), "{" + ",".join(p.isoformat() for p in periods) + "}"],
            )
            return {(a, p): kwh for a, p, kwh in cursor.fetchall()}

    def _stage(self, cursor, table: str, columns: str, lines) -> None:
        for statement in _STAGES:
            cursor.execute(statement)
        cursor.execute(f"TRUNCATE {table}")
        with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            copy.write("".join(lines))

    def post_entries(self, entries: list[tuple], stamp) -> dict[int, tuple[int, tuple]]:
        """Insert the entries (skipping keys already posted) and move the balances of their
        accounts -> account_id: (entries inserted, (balance, credit allowance, state, withheld reason))."""
        if not entries:
            return {}
        created = timezone.now().isoformat()
        kind, source = EntryKind.ENERGY_CHARGE.value, EntrySource.READING.value
        with connection.cursor() as cursor:
            # Normally no key was posted before (the cursors say what was rated), so the rows
            # go straight into the ledger; if one was, the unique key stops the COPY and the
            # slow path skips the keys already there.
            savepoint = transaction.savepoint()
            try:
                with cursor.copy(
                    "COPY billing_ledgerentry (account_id, kind, amount, kwh, business_date, description,"
                    " source, source_ref, idempotency_key, created_at) FROM STDIN"
                ) as copy:
                    copy.write(
                        "".join(
                            f"{a}\t{kind}\t{amount}\t{kwh}\t{day}\t{text}\t{source}\t{ref}\t{key}\t{created}\n"
                            for a, amount, kwh, day, text, ref, key in entries
                        )
                    )
            except (psycopg.errors.UniqueViolation, IntegrityError) as exc:
                if isinstance(exc, IntegrityError) and not isinstance(
                    exc.__cause__, psycopg.errors.UniqueViolation
                ):
                    raise
                transaction.savepoint_rollback(savepoint)
                inserted = self._post_entries_skipping_posted(cursor, entries, created)
            else:
                transaction.savepoint_commit(savepoint)
                inserted = [(e[0], e[1]) for e in entries]
            deltas: dict[int, list] = {}
            for account_id, amount in inserted:
                d = deltas.get(account_id)
                if d is None:
                    deltas[account_id] = [amount, 1]
                else:
                    d[0] += amount
                    d[1] += 1
            if not deltas:
                return {}
            cursor.execute(
                "UPDATE billing_accountbilling b SET balance = b.balance + v.delta, last_rated_at = %s,"
                " updated_at = %s FROM unnest(%s::bigint[], %s::numeric[]) AS v(account_id, delta)"
                " WHERE b.account_id = v.account_id"
                " RETURNING b.account_id, b.balance, b.credit_allowance, b.state, b.withheld_reason",
                [stamp, stamp, _ids(deltas), "{" + ",".join(str(d[0]) for d in deltas.values()) + "}"],
            )
            return {r[0]: (deltas[r[0]][1], r[1:]) for r in cursor.fetchall()}

    def _post_entries_skipping_posted(self, cursor, entries: list[tuple], created: str) -> list[tuple]:
        self._stage(
            cursor,
            "billing_rating_stage",
            "account_id, amount, kwh, business_date, description, source_ref, idempotency_key",
            (
                f"{a}\t{amount}\t{kwh}\t{day}\t{text}\t{ref}\t{key}\n"
                for a, amount, kwh, day, text, ref, key in entries
            ),
        )
        cursor.execute(
            "INSERT INTO billing_ledgerentry (account_id, kind, amount, kwh, business_date, description,"
            " source, source_ref, idempotency_key, created_at)"
            " SELECT account_id, %s, amount, kwh, business_date, description, %s, source_ref,"
            " idempotency_key, %s FROM billing_rating_stage"
            " ON CONFLICT (idempotency_key) DO NOTHING RETURNING account_id, amount",
            [EntryKind.ENERGY_CHARGE.value, EntrySource.READING.value, created],
        )
        return cursor.fetchall()

    def save_cursors(self, cursor_rows: dict[int, tuple], stamp, existing=()) -> None:
        if not cursor_rows:
            return
        with connection.cursor() as cursor:
            self._stage(
                cursor,
                "billing_rating_cursor_stage",
                "meter_id, account_id, read_date, reading_id, estimated, total, sharp, peak, flat, valley,"
                " multiplier",
                (
                    "\t".join(
                        map(_copy_text, (meter_id, account_id, read_date, reading_id, estimated, *regs, mult))
                    )
                    + "\n"
                    for meter_id, (
                        account_id,
                        read_date,
                        reading_id,
                        estimated,
                        regs,
                        mult,
                    ) in cursor_rows.items()
                ),
            )
            now = timezone.now()
            if any(m not in existing for m in cursor_rows):
                cursor.execute(_SAVE_CURSORS_SQL, [now])
            else:  # every cursor exists: a plain update is cheaper than an upsert
                cursor.execute(_UPDATE_CURSORS_SQL, [now])

    def save_tiers(self, kwh: dict[tuple[int, date], Decimal], existing=()) -> None:
        new = {k: v for k, v in kwh.items() if k not in existing}
        old = {k: v for k, v in kwh.items() if k in existing}
        with connection.cursor() as cursor:
            for sql, rows in ((_UPDATE_TIERS_SQL, old), (_SAVE_TIERS_SQL, new)):
                if rows:
                    cursor.execute(
                        sql,
                        [
                            _ids(a for a, _p in rows),
                            "{" + ",".join(p.isoformat() for _a, p in rows) + "}",
                            "{" + ",".join(map(str, rows.values())) + "}",
                        ],
                    )


class _OrmStore:
    """The same loads and writes through the ORM, for other databases (SQLite in development)."""

    def lock_accounts(self, account_ids: list[int]) -> None:
        billing_states_lock(account_ids)

    def cursors(self, meter_ids: list[int]) -> dict[int, tuple]:
        rows = RatingCursor.objects.select_for_update().filter(meter_id__in=meter_ids)
        return {
            c.meter_id: (
                c.account_id,
                c.read_date,
                c.reading_id,
                c.estimated,
                (c.total, c.sharp, c.peak, c.flat, c.valley),
            )
            for c in rows
        }

    def tariff_assignments(self, account_ids: list[int]) -> dict[int, list[tuple[date, int]]]:
        return account_tariffs(account_ids)

    def open_dates(self, account_ids: list[int]) -> dict[int, tuple[date, date | None]]:
        rows = Account.objects.filter(pk__in=account_ids).values_list("pk", "opened_on", "closed_on")
        return {pk: (opened_on, closed_on) for pk, opened_on, closed_on in rows}

    def tier_kwh(self, account_ids: list[int], periods: set[date]) -> dict[tuple[int, date], Decimal]:
        rows = TierAccumulator.objects.filter(
            account_id__in=account_ids, period_start__in=periods
        ).values_list("account_id", "period_start", "kwh")
        return {(a, p): kwh for a, p, kwh in rows}

    def post_entries(self, entries: list[tuple], stamp) -> dict[int, tuple[int, tuple]]:
        if not entries:
            return {}
        existing = set(
            LedgerEntry.objects.filter(idempotency_key__in=[e[6] for e in entries]).values_list(
                "idempotency_key", flat=True
            )
        )
        objs = [
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
            for account_id, amount, kwh, day, description, ref, key in entries
            if key not in existing
        ]
        LedgerEntry.objects.bulk_create(objs, batch_size=2000)
        deltas: dict[int, Decimal] = defaultdict(lambda: ZERO)
        counts: dict[int, int] = defaultdict(int)
        for o in objs:
            deltas[o.account_id] += o.amount
            counts[o.account_id] += 1
        for account_id, delta in deltas.items():
            AccountBilling.objects.filter(pk=account_id).update(
                balance=F("balance") + delta, last_rated_at=stamp
            )
        rows = AccountBilling.objects.filter(pk__in=list(deltas)).values_list(
            "pk", "balance", "credit_allowance", "state", "withheld_reason"
        )
        return {r[0]: (counts[r[0]], r[1:]) for r in rows}

    def save_cursors(self, cursor_rows: dict[int, tuple], stamp, existing=()) -> None:
        _save_cursors(cursor_rows)

    def save_tiers(self, kwh: dict[tuple[int, date], Decimal], existing=()) -> None:
        objs = [TierAccumulator(account_id=a, period_start=p, kwh=q) for (a, p), q in kwh.items()]
        TierAccumulator.objects.bulk_create(
            objs,
            batch_size=5000,
            update_conflicts=True,
            unique_fields=["account", "period_start"],
            update_fields=["kwh"],
        )


def _save_cursors(cursor_rows: dict[int, tuple]) -> None:
    if not cursor_rows:
        return
    if connection.vendor == "postgresql":
        _PgStore().save_cursors(cursor_rows, timezone.now())
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
            # Cursors are written under their accounts' billing locks, like rating does.
            billing_states_lock({account_id for account_id, *_rest in cursor_rows.values()})
            _save_cursors(cursor_rows)
        started += len(cursor_rows)
    return started
