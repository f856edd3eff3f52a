"""Reads for the portal's account pages: the home cards, usage (daily and monthly consumption
with the time-of-use split, the tier position) and the statement.

Every function takes accounts the caller already got through ``portal.access`` (the binding
rule); nothing here decides who may see what.

Speed (issue 6: p95 ≤ 200 ms with a year of daily readings and ledger entries for 20,000
customers, ``benchmarks/portal_pages.py``): each read is a handful of indexed range queries on
one account's service points or ledger, whatever the number of accounts shown; sums and
month boundaries are computed by the database, only a few dozen rows reach Python.

Consumption rule (the same as real-time rating's): the freeze on ``read_date`` D holds the
registers at 00:00 of D, so the difference between a meter's freezes on D and D+1 is the
consumption of day D, and the difference between its first freezes of two consecutive months
is the first month's consumption. Differences are taken per meter (a meter exchange starts a
new series), rollover-aware and split by band with real-time rating's own
``consumption_by_band``; the CT x PT multiplier of the service point applies.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

from django.db.models import DateTimeField, Max, Min, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce, TruncMonth
from django.utils import timezone

from billing.models import (
    AccountBilling,
    AccountTariff,
    CostControlState,
    EntryKind,
    LedgerEntry,
    TierAccumulator,
)
from billing.rating import engine
from billing.rating import model as rm
from billing.selectors import LEDGER_PAGE_SIZE, RunningLedger
from billing.services.policy import PolicyTable, credit_allowance_of
from billing.services.rating import consumption_by_band, tier_period_start
from billing.services.tariffs import tariff_on, tariff_specs
from core.models import Notification, NotificationChannel
from core.money import format_yuan, quantize_energy, quantize_yuan
from customers.models import Account, ServicePoint, SettlementMode
from metering.models import DailyReading
from portal.models import AccountBinding, PortalProfile

__all__ = [
    "LEDGER_PAGE_SIZE",
    "STATEMENT_KINDS",
    "AccountCard",
    "DayUsage",
    "MonthUsage",
    "TierPosition",
    "account_cards",
    "daily_usage",
    "days_left",
    "monthly_usage",
    "statement_entries",
    "tier_position",
]

BANDS = rm.BANDS  # sharp, peak, flat, valley
ZERO = Decimal("0.00")
DAYS_LEFT_WINDOW = 30
DAILY_CHART_DAYS = 60
MONTHLY_CHART_MONTHS = 24

# The meter's own band registers, whatever the tariff prices: every band is "priced", so
# rating's consumption_by_band passes each band's difference through unchanged.
_ALL_BANDS = rm.PriceVersion(
    effective_from=date(2000, 1, 1), effective_to=None, energy_prices=dict.fromkeys(BANDS, ZERO)
)
_TOTAL_ONLY = rm.PriceVersion(
    effective_from=date(2000, 1, 1), effective_to=None, energy_prices={"flat": ZERO}
)

# The statement's kind filter: groups of ledger entry kinds, as a customer thinks of them.
STATEMENT_KINDS: dict[str, tuple[str, ...]] = {
    "all": (),
    "charges": (
        EntryKind.ENERGY_CHARGE,
        EntryKind.BASIC_CHARGE,
        EntryKind.POWER_FACTOR,
        EntryKind.LATE_FEE,
        EntryKind.PENALTY,
    ),
    "payments": (EntryKind.PAYMENT, EntryKind.REFUND),
    "adjustments": (EntryKind.ADJUSTMENT, EntryKind.REVERSAL),
}


# ----------------------------------------------------------------------------- home


def days_left(
    *, available_balance: Decimal, trip_threshold: Decimal, energy_charged: Decimal, window_days: int
) -> int | None:
    """Estimated whole days until the account trips at recent consumption.

    Rule: the money above the trip threshold (available balance − trip threshold) divided by
    the average daily energy charge, which is the energy charged (a positive sum of the
    energy entries, true-ups included) over the ``window_days`` before today; rounded down
    to whole days. None ("—") when nothing was charged in the window or the available
    balance is already at or below the trip threshold.

    E.g. available ¥100.00, trip threshold ¥0, ¥45.00 charged in 30 days: 1.50 a day,
    100 / 1.5 = 66.7 -> 66 days."""
    if window_days <= 0 or energy_charged <= 0:
        return None
    headroom = available_balance - trip_threshold
    if headroom <= 0:
        return None
    return int((headroom * window_days / energy_charged).to_integral_value(rounding=ROUND_FLOOR))


@dataclass
class AccountCard:
    account: Account
    address: str
    prepaid: bool
    balance: Decimal
    available_balance: Decimal
    state: str  # normal / warning / tripped; "" for post-paid accounts
    days_left: int | None
    last_reading_kwh: Decimal | None = None
    last_reading_at: datetime | None = None
    last_reading_date: date | None = None

    @property
    def balance_display(self) -> str:
        return format_yuan(self.balance)

    @property
    def available_display(self) -> str:
        return format_yuan(self.available_balance)


def _state_group(state: str) -> str:
    if state == CostControlState.TRIPPED:
        return "tripped"
    if state in (CostControlState.WARNING1, CostControlState.WARNING2):
        return "warning"
    return "normal"


def account_cards(*, accounts: list[Account], today: date | None = None) -> list[AccountCard]:
    """One card per account (accounts with their customers loaded): balance, available
    balance, cost-control state and days left (prepaid only, see ``days_left``), the service
    address and the last reading. Six queries, however many accounts."""
    today = today or timezone.localdate()
    if not accounts:
        return []
    ids = [a.pk for a in accounts]
    states = {s.pk: s for s in AccountBilling.objects.filter(pk__in=ids)}
    policies = PolicyTable()
    window_start = today - timedelta(days=DAYS_LEFT_WINDOW)
    charged = {
        account_id: -quantize_yuan(total)
        for account_id, total in LedgerEntry.objects.filter(
            account_id__in=ids,
            kind=EntryKind.ENERGY_CHARGE,
            business_date__gte=window_start,
            business_date__lt=today,
        )
        .values("account_id")
        .annotate(total=Sum("amount"))
        .values_list("account_id", "total")
    }
    points = list(
        ServicePoint.objects.filter(account_id__in=ids)
        .order_by("number")
        .values_list("pk", "account_id", "address")
    )
    last = _last_readings([p for p, _a, _addr in points], today)

    cards = []
    for account in accounts:
        state = states.get(account.pk) or AccountBilling(account=account)
        customer = account.customer
        policy = policies.for_account(state, _PolicyKey(customer.category, customer.importance_grade))
        available = state.balance + credit_allowance_of(state, policy)
        prepaid = account.settlement_mode == SettlementMode.PREPAID
        left = None
        if prepaid:
            window_days = min(DAYS_LEFT_WINDOW, (today - account.opened_on).days)
            left = days_left(
                available_balance=available,
                trip_threshold=policy.trip_threshold if policy else ZERO,
                energy_charged=charged.get(account.pk, ZERO),
                window_days=window_days,
            )
        own_points = [(p, addr) for p, a, addr in points if a == account.pk]
        card = AccountCard(
            account=account,
            address=own_points[0][1] if own_points else customer.address,
            prepaid=prepaid,
            balance=state.balance,
            available_balance=available,
            state=_state_group(state.state) if prepaid else "",
            days_left=left,
        )
        readings = [last[p] for p, _addr in own_points if p in last]
        if readings:
            newest = max(readings, key=lambda r: r[0])
            card.last_reading_date, card.last_reading_at, card.last_reading_kwh = newest
        cards.append(card)
    return cards


@dataclass(frozen=True)
class _PolicyKey:
    category: str
    grade: str


def _last_readings(point_ids: list[int], today: date) -> dict[int, tuple[date, datetime, Decimal]]:
    """service point -> (freeze date, read at, total register) of its newest reading in the
    last 400 days (the bound lets PostgreSQL skip older partitions)."""
    if not point_ids:
        return {}
    recent = DailyReading.objects.filter(
        service_point_id__in=point_ids, read_date__gte=today - timedelta(days=400), read_date__lte=today
    )
    newest = dict(
        recent.values("service_point_id").annotate(d=Max("read_date")).values_list("service_point_id", "d")
    )
    if not newest:
        return {}
    result = {}
    rows = recent.filter(read_date__in=set(newest.values())).values_list(
        "service_point_id", "read_date", "read_at", "forward_total"
    )
    for point_id, read_date, read_at, total in rows:
        if newest.get(point_id) == read_date:
            result[point_id] = (read_date, read_at, total)
    return result


# ----------------------------------------------------------------------------- usage


@dataclass
class DayUsage:
    """Consumption from 00:00 of ``day`` for ``days`` days (more than 1 after missed reads)."""

    day: date
    days: int
    total: Decimal
    bands: dict[str, Decimal] = field(default_factory=dict)  # empty when the meter has no band registers

    @property
    def band_list(self) -> list[Decimal | None]:
        return [self.bands.get(b) for b in BANDS] if self.bands else [None] * len(BANDS)


@dataclass
class MonthUsage:
    month: date  # the first of the month
    total: Decimal | None  # None: no readings to tell
    bands: dict[str, Decimal] = field(default_factory=dict)
    last_year: Decimal | None = None  # the same month a year before

    @property
    def band_list(self) -> list[Decimal | None]:
        return [self.bands.get(b) for b in BANDS] if self.bands else [None] * len(BANDS)

    @property
    def change_percent(self) -> Decimal | None:
        if self.total is None or not self.last_year:
            return None
        return ((self.total - self.last_year) * 100 / self.last_year).quantize(Decimal("0.1"))


def _multipliers(account: Account) -> dict[int, int]:
    """The account's service points -> CT x PT multiplier (kept on the account for the request)."""
    cached = getattr(account, "_portal_multipliers", None)
    if cached is None:
        rows = ServicePoint.objects.filter(account=account).values_list("pk", "ct_ratio", "pt_ratio")
        cached = account._portal_multipliers = {pk: ct * pt for pk, ct, pt in rows}
    return cached


_REGISTERS = ("forward_total", "forward_sharp", "forward_peak", "forward_flat", "forward_valley")


def _split(registers, previous, mult) -> tuple[Decimal, dict[str, Decimal]]:
    """(total, bands) between two register sets (total, sharp, peak, flat, valley); bands
    only when both sets have band registers (a meter may leave some, e.g. sharp, empty)."""
    banded = any(r is not None for r in registers[1:]) and any(r is not None for r in previous[1:])
    kwh = consumption_by_band(registers, previous, mult, _ALL_BANDS if banded else _TOTAL_ONLY)
    total = quantize_energy(sum(kwh.values(), ZERO))
    if not banded:
        return total, {}
    return total, {band: quantize_energy(kwh.get(band, ZERO)) for band in BANDS}


def _add(into: dict[str, Decimal], bands: dict[str, Decimal]) -> None:
    for band, q in bands.items():
        into[band] = into.get(band, ZERO) + q


def daily_usage(
    *, account: Account, days: int = DAILY_CHART_DAYS, today: date | None = None
) -> list[DayUsage]:
    """The account's consumption per day for the ``days`` days before today, oldest first
    (one row per day that starts a span between two of a meter's freezes; meters of the
    account's service points summed)."""
    today = today or timezone.localdate()
    start = today - timedelta(days=days)
    mults = _multipliers(account)
    if not mults:
        return []
    rows = (
        DailyReading.objects.filter(
            service_point_id__in=list(mults), read_date__gte=start, read_date__lte=today
        )
        .order_by("meter_id", "read_date")
        .values_list("meter_id", "read_date", "service_point_id", *_REGISTERS)
    )
    by_day: dict[date, DayUsage] = {}
    previous = None
    for row in rows:
        meter_id, read_date, point_id, *registers = row
        if previous is not None and previous[0] == meter_id:
            day = previous[1]
            total, bands = _split(registers, previous[3:], mults.get(point_id, 1))
            usage = by_day.get(day)
            if usage is None:
                usage = by_day[day] = DayUsage(day=day, days=0, total=ZERO)
            usage.days = max(usage.days, (read_date - day).days)
            usage.total += total
            _add(usage.bands, bands)
        previous = row
    return [by_day[d] for d in sorted(by_day)]


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    return date(day.year + month // 12, month % 12 + 1, 1)


def monthly_usage(
    *, account: Account, months: int = MONTHLY_CHART_MONTHS, today: date | None = None
) -> list[MonthUsage]:
    """The account's consumption per calendar month for the last ``months`` months (this
    month so far included), oldest first, each with the same month a year before when it is
    in range.

    A month's consumption is the difference between the meter's first freezes in it and in
    the next month (this month: up to the newest freeze). The database finds each meter's
    first freeze per month; only those rows reach Python. A month without a figure (None)
    has no freeze to start from or none after it, or its span runs over whole months
    without readings (such consumption is shown in no month rather than piled into one)."""
    today = today or timezone.localdate()
    first_month = _add_months(_month_start(today), -(months - 1))
    mults = _multipliers(account)
    result = {}
    for i in range(months):
        month = _add_months(first_month, i)
        result[month] = MonthUsage(month=month, total=None)
    if mults:
        in_range = DailyReading.objects.filter(
            service_point_id__in=list(mults), read_date__gte=first_month, read_date__lte=today
        )
        firsts = list(
            in_range.annotate(month=TruncMonth("read_date"))
            .values("meter_id", "month")
            .annotate(first=Min("read_date"), last=Max("read_date"))
            .values_list("meter_id", "first", "last")
        )
        wanted: dict[int, set[date]] = defaultdict(set)
        newest: dict[int, date] = {}
        for meter_id, first, last in firsts:
            wanted[meter_id].add(first)
            newest[meter_id] = max(newest.get(meter_id, last), last)
        for meter_id, last in newest.items():
            wanted[meter_id].add(last)
        condition = Q()
        for meter_id, days in wanted.items():
            condition |= Q(meter_id=meter_id, read_date__in=sorted(days))
        boundaries = (
            in_range.filter(condition)
            .order_by("meter_id", "read_date")
            .values_list("meter_id", "read_date", "service_point_id", *_REGISTERS)
            if wanted
            else []
        )
        previous = None
        for row in boundaries:
            meter_id, read_date, point_id, *registers = row
            if (
                previous is not None
                and previous[0] == meter_id
                # the next boundary in the same month (this month so far) or the next one:
                # a span over whole months without readings is put in no month
                and _month_start(read_date) <= _add_months(_month_start(previous[1]), 1)
            ):
                usage = result[_month_start(previous[1])]
                total, bands = _split(registers, previous[3:], mults.get(point_id, 1))
                usage.total = (usage.total or ZERO) + total
                _add(usage.bands, bands)
            previous = row
    ordered = [result[m] for m in sorted(result)]
    by_month = {u.month: u for u in ordered}
    for usage in ordered:
        before = by_month.get(usage.month.replace(year=usage.month.year - 1))
        if before is not None:
            usage.last_year = before.total
    return ordered


@dataclass
class TierPosition:
    basis: str  # "annual" or "monthly"
    period_start: date
    used: Decimal  # kWh counted in the tier period so far
    from_billing: bool  # True: the rating's accumulator; False: summed from readings
    limits: tuple[Decimal | None, ...]  # cumulative upper bounds (prorated for a part year)
    tier: int  # 1-based
    left: Decimal | None  # kWh left in the current tier; None in the last (unbounded) tier
    prorated: bool

    @property
    def rows(self) -> list[tuple[int, Decimal, Decimal | None, bool]]:
        """(tier, lower kWh, upper kWh or None, is the current tier)."""
        out, lower = [], Decimal(0)
        for i, upper in enumerate(self.limits, start=1):
            out.append((i, lower, upper, i == self.tier))
            if upper is None:
                break
            lower = upper
        return out


def tier_position(
    *, account: Account, today: date | None = None, months: list[MonthUsage] | None = None
) -> TierPosition | None:
    """Where the account stands in its tariff's blocks this tier period (year or month):
    kWh used, the current block and kWh left in it, with the block bounds prorated for an
    account opened or closed within the year exactly as the rating engine does
    (``engine.prorated_tier_limits``). kWh used are the rating's tier accumulator when
    there is one (prepaid accounts rated in real time), else the period's consumption from
    ``months`` (``monthly_usage``). None for a tariff without blocks."""
    today = today or timezone.localdate()
    assignments = list(
        AccountTariff.objects.filter(account=account)
        .order_by("effective_from")
        .values_list("effective_from", "tariff_id")
    )
    tariff_id = tariff_on(assignments, today)
    if tariff_id is None:
        return None
    spec = tariff_specs([tariff_id]).get(tariff_id)
    version = spec.version_on(today) if spec else None
    if version is None or version.tier_basis == "none" or not version.tier_limits:
        return None
    period = tier_period_start(version.tier_basis, today)
    limits = engine.prorated_tier_limits(version, period.year, account.opened_on, account.closed_on)
    accumulated = (
        TierAccumulator.objects.filter(account=account, period_start=period)
        .values_list("kwh", flat=True)
        .first()
    )
    if accumulated is not None:
        used, from_billing = accumulated, True
    else:
        months = (
            months if months is not None else monthly_usage(account=account, months=today.month, today=today)
        )
        used = sum((m.total or ZERO for m in months if m.month >= period), ZERO)
        from_billing = False
    tier, left = len(limits), None
    for i, upper in enumerate(limits, start=1):
        if upper is None or used < upper:
            tier, left = i, (None if upper is None else upper - used)
            break
    return TierPosition(
        basis=version.tier_basis,
        period_start=period,
        used=used,
        from_billing=from_billing,
        limits=limits,
        tier=tier,
        left=left,
        prorated=limits != version.tier_limits,
    )


# ----------------------------------------------------------------------------- statement


def statement_entries(
    *, account: Account, kind: str = "all", date_from: date | None = None, date_to: date | None = None
) -> RunningLedger:
    """The account's ledger for the statement page and PDF: ``kind`` is a key of
    ``STATEMENT_KINDS``; dates are business dates, inclusive."""
    return RunningLedger(
        account_id=account.pk,
        kinds=STATEMENT_KINDS.get(kind or "all", ()),
        date_from=date_from,
        date_to=date_to,
    )


# ----------------------------------------------------------------------------- messages

_NEVER = datetime(1970, 1, 1, tzinfo=UTC)


def portal_messages_for(user_id: int) -> QuerySet[Notification]:
    """The portal messages a portal user may read: those for the customers of their bound
    accounts, about one of those accounts or about the customer as a whole (a customer's other,
    unbound accounts stay private)."""
    bindings = AccountBinding.objects.filter(user_id=user_id)
    return Notification.objects.filter(
        channel=NotificationChannel.PORTAL,
        customer_id__in=bindings.values("account__customer_id"),
    ).filter(Q(account_id__isnull=True) | Q(account_id__in=bindings.values("account_id")))


def portal_unread_count(user_id: int) -> int:
    """Messages newer than the user last read up to: one query (the read mark is a subquery)."""
    seen = PortalProfile.objects.filter(user_id=user_id).values("messages_seen_at")[:1]
    return (
        portal_messages_for(user_id)
        .filter(created_at__gt=Coalesce(Subquery(seen), Value(_NEVER), output_field=DateTimeField()))
        .count()
    )
