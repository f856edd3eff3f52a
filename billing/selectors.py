"""Reads for the billing staff pages: an account's billing summary, its ledger with a running
balance computed by the database, policy decisions, adjustments and tariffs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from types import SimpleNamespace

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count, Max, Min, Prefetch, QuerySet
from django.utils import timezone

from billing.models import (
    AccountBilling,
    AccountTariff,
    AdjustmentRequest,
    AdjustmentStatus,
    Band,
    CostControlPolicy,
    LedgerEntry,
    PolicyDecision,
    Tariff,
    TariffVersion,
    TouPeriod,
)
from billing.rating import model as rm
from billing.rating.tou import SLOTS_PER_DAY, period_slots
from billing.services.accounts import available_balance
from billing.services.policy import PolicyTable, credit_allowance_of
from core.exceptions import NotFound, PermissionDenied
from core.money import quantize_yuan
from core.permissions import Actor, Cap, org_scope_q
from customers.models import Account

LEDGER_PAGE_SIZE = 50


# ----------------------------------------------------------------------------- account summary


@dataclass(frozen=True)
class BillingSummary:
    account: Account
    state: AccountBilling  # unsaved with balance 0 when nothing was ever posted
    policy: CostControlPolicy | None
    credit_allowance: Decimal
    available_balance: Decimal
    tariff_assignment: AccountTariff | None


def account_billing_summary(*, account: Account, today: date | None = None) -> BillingSummary:
    """Balance, available balance, cost-control state, the policy and tariff in force."""
    state = AccountBilling.objects.select_related("policy").filter(pk=account.pk).first()
    if state is None:
        state = AccountBilling(account=account)
    customer = account.customer
    policy = PolicyTable().for_account(
        state, SimpleNamespace(category=customer.category, grade=customer.importance_grade)
    )
    allowance = credit_allowance_of(state, policy)
    assignment = (
        AccountTariff.objects.filter(account=account, effective_from__lte=today or timezone.localdate())
        .select_related("tariff")
        .order_by("-effective_from")
        .first()
    )
    return BillingSummary(
        account=account,
        state=state,
        policy=policy,
        credit_allowance=allowance,
        available_balance=available_balance(state.balance, allowance),
        tariff_assignment=assignment,
    )


# ----------------------------------------------------------------------------- ledger


class RunningLedger:
    """An account's ledger entries, newest first, each with ``running_balance``: the balance
    after the entry, summed over *all* the account's entries up to it (a window SUM over id in
    PostgreSQL), so the column stays right when the list is filtered by kind or date.

    The window has to run before the filter, which the ORM cannot express (it puts every
    plain filter inside the windowed query), hence one derived table in SQL. Sliceable and
    countable, so ``Paginator`` pages it with one COUNT and one page query."""

    ordered = True  # for Paginator: the order is fixed (newest first)

    def __init__(
        self,
        *,
        account_id: int,
        kind: str = "",
        kinds: tuple[str, ...] = (),
        date_from: date | None = None,
        date_to: date | None = None,
    ):
        """``kind`` one kind of entry, or ``kinds`` any of several (the portal's groups)."""
        self.account_id = account_id
        conditions, params = [], []
        if kind:
            conditions.append("t.kind = %s")
            params.append(kind)
        if kinds:
            conditions.append("t.kind IN (" + ", ".join(["%s"] * len(kinds)) + ")")
            params.extend(str(k) for k in kinds)
        if date_from:
            conditions.append("t.business_date >= %s")
            params.append(date_from)
        if date_to:
            conditions.append("t.business_date <= %s")
            params.append(date_to)
        self._where = (" AND ".join(conditions), params)
        self._count: int | None = None

    def _filter_sql(self, prefix: str) -> tuple[str, list]:
        sql, params = self._where
        return (f" {prefix} {sql}" if sql else ""), list(params)

    def count(self) -> int:
        if self._count is None:
            extra, params = self._filter_sql("AND")
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT COUNT(*) FROM {LedgerEntry._meta.db_table} t WHERE t.account_id = %s{extra}",  # noqa: S608
                    [self.account_id, *params],
                )
                self._count = cursor.fetchone()[0]
        return self._count

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step is not None:
            raise TypeError("RunningLedger supports plain slices only")
        start = key.start or 0
        stop = key.stop if key.stop is not None else self.count()
        if stop <= start:
            return []
        extra, params = self._filter_sql("WHERE")
        table = LedgerEntry._meta.db_table
        users = get_user_model()._meta.db_table
        sql = (
            "SELECT t.*, u.username AS created_by_username FROM ("  # noqa: S608 (identifiers are ours)
            f" SELECT e.*, SUM(e.amount) OVER (ORDER BY e.id) AS running_balance FROM {table} e"
            " WHERE e.account_id = %s"
            f") t LEFT JOIN {users} u ON u.id = t.created_by_id{extra} ORDER BY t.id DESC LIMIT %s OFFSET %s"
        )
        entries = list(LedgerEntry.objects.raw(sql, [self.account_id, *params, stop - start, start]))
        for e in entries:
            if not isinstance(e.running_balance, Decimal):
                # SQLite (the embedded mode) sums its numeric column as a binary float; the
                # entries themselves are exact, so the sum rounds back to the fen exactly.
                e.running_balance = quantize_yuan(Decimal(str(e.running_balance)))
        return entries


def ledger_with_running_balance(
    *, account: Account, kind: str = "", date_from: date | None = None, date_to: date | None = None
) -> RunningLedger:
    return RunningLedger(account_id=account.pk, kind=kind, date_from=date_from, date_to=date_to)


# ----------------------------------------------------------------------------- decisions, adjustments


def policy_decisions_for_account(*, account: Account) -> QuerySet[PolicyDecision]:
    return (
        PolicyDecision.objects.filter(account=account)
        .select_related("command")
        .order_by("-decided_at", "-id")
    )


def adjustments_for_account(*, account: Account) -> QuerySet[AdjustmentRequest]:
    return (
        AdjustmentRequest.objects.filter(account=account)
        .select_related("requested_by", "decided_by", "entry")
        .order_by("-requested_at", "-id")
    )


def adjustments_pending(*, actor: Actor) -> QuerySet[AdjustmentRequest]:
    """Adjustments awaiting a second person's approval, within the approver's scope, oldest first."""
    if actor is None or not actor.has(Cap.ADJUSTMENT_APPROVE):
        raise PermissionDenied()
    return (
        AdjustmentRequest.objects.filter(
            org_scope_q(actor, "account__customer__org_unit"), status=AdjustmentStatus.PENDING
        )
        .select_related("account", "account__customer", "requested_by")
        .order_by("requested_at", "id")
    )


# ----------------------------------------------------------------------------- tariffs


def tariffs_list(*, actor: Actor) -> QuerySet[Tariff]:
    if actor is None or not actor.has(Cap.LEDGER_VIEW):
        raise PermissionDenied()
    return Tariff.objects.annotate(
        version_count=Count("versions"),
        first_effective=Min("versions__effective_from"),
        latest_effective=Max("versions__effective_from"),
    ).order_by("code")


def tariff_get(*, actor: Actor, code: str) -> Tariff:
    if actor is None or not actor.has(Cap.LEDGER_VIEW):
        raise PermissionDenied()
    tariff = (
        Tariff.objects.filter(code=code)
        .prefetch_related(
            Prefetch(
                "versions",
                queryset=TariffVersion.objects.order_by("-effective_from").prefetch_related(
                    "tiers",
                    "surcharges",
                    Prefetch("tou_periods", queryset=TouPeriod.objects.order_by("start")),
                ),
            )
        )
        .first()
    )
    if tariff is None:
        raise NotFound()
    return tariff


@dataclass(frozen=True)
class TouSeason:
    """The months sharing one daily schedule, as 48 half-hour slots (band or None)."""

    months: tuple[int, ...]
    slots: tuple[str | None, ...]
    periods: tuple[TouPeriod, ...]

    @property
    def hours(self) -> range:
        return range(24)

    def cells(self) -> list[tuple[int, str | None, str]]:
        """(slot, band, "HH:MM") for the strip."""
        return [(i, band, f"{i // 2:02d}:{30 * (i % 2):02d}") for i, band in enumerate(self.slots)]


def tou_seasons(version: TariffVersion) -> list[TouSeason]:
    """A version's TOU periods grouped by season (the ``months`` of each period), each season's
    day laid out in half-hour slots."""
    by_months: dict[tuple[int, ...], list[TouPeriod]] = {}
    for period in version.tou_periods.all():
        by_months.setdefault(tuple(sorted(period.month_set())), []).append(period)
    seasons = []
    for months, periods in sorted(by_months.items()):
        slots: list[str | None] = [None] * SLOTS_PER_DAY
        for p in periods:
            spec = rm.TouPeriod(band=p.band, start=p.start, end=p.end, months=frozenset(months))
            for slot in period_slots(spec):
                slots[slot] = p.band
        seasons.append(TouSeason(months=months, slots=tuple(slots), periods=tuple(periods)))
    return seasons


def version_band_prices(version: TariffVersion) -> list[tuple[str, str, Decimal]]:
    """(band, label, price) for the bands the version prices, in the order sharp, peak, flat, valley."""
    rows = []
    for band in Band:
        price = getattr(version, f"price_{band.value}")
        if price is not None:
            rows.append((band.value, band.label, price))
    return rows
