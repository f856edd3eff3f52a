"""Posting to the append-only ledger.

Every posting locks the account's ``AccountBilling`` row (accounts always in ascending id
order, so two services touching several accounts cannot deadlock), inserts one entry whose
``idempotency_key`` is unique in the database, and moves the cached balance by the same
amount with ``F()``. A repeated posting with the same key returns the first entry and posts
nothing. Corrections are reversing entries, never edits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.models import CHARGE_KINDS, AccountBilling, EntryKind, EntrySource, LedgerEntry
from core.exceptions import Conflict, NotFound, ValidationError
from core.money import quantize_yuan, to_decimal
from customers.models import Account, AccountStatus


def billing_states_ensure(account_ids: Iterable[int]) -> None:
    """Create the missing ``AccountBilling`` rows (balance 0) for these accounts."""
    ids = sorted(set(account_ids))
    if not ids:
        return
    existing = set(AccountBilling.objects.filter(pk__in=ids).values_list("pk", flat=True))
    missing = [AccountBilling(account_id=i) for i in ids if i not in existing]
    if missing:
        AccountBilling.objects.bulk_create(missing, ignore_conflicts=True, batch_size=5000)


def billing_states_lock(account_ids: Iterable[int]) -> dict[int, AccountBilling]:
    """Lock (FOR NO KEY UPDATE) the billing states of these accounts, in ascending id order.

    Must be called inside a transaction; creates missing states first."""
    ids = sorted(set(account_ids))
    billing_states_ensure(ids)
    states = AccountBilling.objects.select_for_update(no_key=True).filter(pk__in=ids).order_by("pk")
    return {s.pk: s for s in states}


def _amount(value) -> Decimal:
    try:
        amount = to_decimal(value)
    except (TypeError, ValueError):
        raise ValidationError(
            _("The amount must be a number of yuan."), field_errors={"amount": [_("Not a number.")]}
        ) from None
    if amount != quantize_yuan(amount):
        raise ValidationError(
            _("The amount may have at most two decimal places (fen)."),
            field_errors={"amount": [_("At most two decimal places.")]},
        )
    if amount == 0:
        raise ValidationError(
            _("The amount must not be zero."), field_errors={"amount": [_("Must not be zero.")]}
        )
    return quantize_yuan(amount)


def _check_sign(kind: str, amount: Decimal) -> None:
    if kind in CHARGE_KINDS and amount > 0:
        raise ValidationError(
            _("A %(kind)s is a charge and must be negative.") % {"kind": EntryKind(kind).label}
        )
    if kind == EntryKind.PAYMENT and amount < 0:
        raise ValidationError(_("A payment must be positive."))


@dataclass(frozen=True)
class Posting:
    entry: LedgerEntry
    created: bool
    state: AccountBilling


def ledger_post(
    *,
    account_id: int,
    kind: str,
    amount,
    source: str,
    idempotency_key: str,
    description: str,
    business_date: date | None = None,
    source_ref: str = "",
    kwh: Decimal | None = None,
    details: dict | None = None,
    created_by_id: int | None = None,
    reverses: LedgerEntry | None = None,
    allow_closed: bool = False,
) -> Posting:
    """Post one entry to ``account_id`` (locks its billing state; call inside or outside a
    transaction). The same ``idempotency_key`` returns the first entry, ``created=False``;
    the same key with a different account, kind or amount is a Conflict."""
    kind = EntryKind(kind)
    source = EntrySource(source)
    amount = _amount(amount)
    _check_sign(kind, amount)
    if not idempotency_key:
        raise ValidationError(_("A posting needs an idempotency key."))
    with transaction.atomic():
        account = Account.objects.filter(pk=account_id).only("pk", "status", "number").first()
        if account is None:
            raise NotFound(_("No such account."))
        state = billing_states_lock([account_id])[account_id]
        existing = LedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return Posting(
                _same_posting(existing, account_id=account_id, kind=kind, amount=amount), False, state
            )
        if account.status == AccountStatus.CLOSED and not allow_closed:
            raise ValidationError(
                _("Account %(number)s is closed; nothing can be posted to it.") % {"number": account.number},
                code="account_closed",
            )
        try:
            with transaction.atomic():
                entry = LedgerEntry.objects.create(
                    account_id=account_id,
                    kind=kind,
                    amount=amount,
                    kwh=kwh,
                    business_date=business_date or timezone.localdate(),
                    description=description[:200],
                    source=source,
                    source_ref=source_ref[:64],
                    idempotency_key=idempotency_key,
                    details=details,
                    created_by_id=created_by_id,
                    reverses=reverses,
                )
        except IntegrityError:
            # The same key posted concurrently to another account (this one is locked).
            existing = LedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
            if existing is None:
                raise
            return Posting(
                _same_posting(existing, account_id=account_id, kind=kind, amount=amount), False, state
            )
        AccountBilling.objects.filter(pk=account_id).update(balance=F("balance") + amount)
        state.balance += amount
        return Posting(entry, True, state)


def _same_posting(existing: LedgerEntry, *, account_id: int, kind: str, amount: Decimal) -> LedgerEntry:
    if existing.account_id != account_id or existing.kind != kind or existing.amount != amount:
        raise Conflict(
            _("This reference was already used for a different posting (entry %(id)s).")
            % {"id": existing.pk},
            code="idempotency_mismatch",
        )
    return existing


def ledger_reverse(*, entry: LedgerEntry, reason: str, created_by_id: int | None) -> Posting:
    """Post the reversing entry of ``entry`` (once: a second reversal returns the first)."""
    if not reason or not reason.strip():
        raise ValidationError(_("A reversal needs a reason."), field_errors={"reason": [_("Required.")]})
    if entry.kind == EntryKind.REVERSAL:
        raise ValidationError(_("A reversal cannot itself be reversed; post an adjustment instead."))
    return ledger_post(
        account_id=entry.account_id,
        kind=EntryKind.REVERSAL,
        amount=-entry.amount,
        source=EntrySource.STAFF if created_by_id else EntrySource.SYSTEM,
        idempotency_key=f"reversal:{entry.pk}",
        description=_("Reversal of entry %(id)s: %(reason)s") % {"id": entry.pk, "reason": reason.strip()},
        source_ref=f"entry:{entry.pk}",
        created_by_id=created_by_id,
        reverses=entry,
        allow_closed=True,
    )


def account_balance(account_id: int) -> Decimal:
    """The balance as the sum of the account's entries (the truth the cache is checked against)."""
    total = LedgerEntry.objects.filter(account_id=account_id).aggregate(s=Sum("amount"))["s"]
    return quantize_yuan(total or 0)


@dataclass(frozen=True)
class BalanceMismatch:
    account_id: int
    account_number: str
    cached: Decimal
    ledger: Decimal

    @property
    def difference(self) -> Decimal:
        return self.cached - self.ledger


_CHECK_SQL = """
SELECT b.account_id, a.number, b.balance, COALESCE(s.total, 0)
FROM billing_accountbilling b
JOIN customers_account a ON a.id = b.account_id
LEFT JOIN (
    SELECT account_id, SUM(amount) AS total FROM billing_ledgerentry GROUP BY account_id
) s ON s.account_id = b.account_id
WHERE b.balance <> COALESCE(s.total, 0)
UNION ALL
SELECT s.account_id, a.number, NULL, s.total
FROM (SELECT account_id, SUM(amount) AS total FROM billing_ledgerentry GROUP BY account_id) s
JOIN customers_account a ON a.id = s.account_id
WHERE NOT EXISTS (SELECT 1 FROM billing_accountbilling b WHERE b.account_id = s.account_id)
ORDER BY 1
"""


def ledger_check() -> list[BalanceMismatch]:
    """Every account whose cached balance differs from the sum of its ledger entries
    (including entries without a billing state). One set-based query."""
    with connection.cursor() as cursor:
        cursor.execute(_CHECK_SQL)
        rows = cursor.fetchall()
    return [
        BalanceMismatch(
            account_id=r[0],
            account_number=r[1],
            cached=quantize_yuan(r[2] if r[2] is not None else 0),
            ledger=quantize_yuan(r[3]),
        )
        for r in rows
    ]
