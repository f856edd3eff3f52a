"""The one posting service every channel calls (DESIGN.md flow 3, §5 "never lost, never twice").

``payment_post`` validates, then in one transaction credits the ledger through billing's
``payment_credit`` (which locks the account's billing state and lets the cost-control policy
close a tripped meter), records the payment row and queues the customer's receipt in the
notification outbox. ``(channel, external_id)`` is unique in the database and also keys the
ledger entry (``INSERT … ON CONFLICT DO NOTHING``), so a retried or concurrent duplicate
returns the first payment and posts nothing; the same reference with another account or
amount is a Conflict.

It is the hot path of every channel (issue 5: hundreds of payments a second): on PostgreSQL
a new payment takes two statements, the locked account and then one statement for the entry,
the balance, the payment row and the receipts (the payment row and the receipts ride on
billing's credit statement as ``CreditRider`` CTEs), so with BEGIN and COMMIT four round trips
to the database and no savepoint when it runs outside a transaction; the receipts' delivery is
queued in batches (``dispatch="batched"``: one Redis RPUSH after commit, no task per payment).
The embedded mode (SQLite) inserts the payment and the receipts statement by statement.
A receipt is keyed ``receipt:<channel>:<reference>:<notice channel>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import partial

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from billing.services.accounts import CreditPreview, CreditRider, PaymentCredit, payment_credit
from core.exceptions import Conflict, NotFound, ValidationError
from core.models import NotificationChannel, NotificationTopic
from core.money import format_yuan, quantize_yuan, to_decimal
from core.services.notifications import (
    customer_channels,
    notification_rows,
    notifications_dispatch,
    notifications_enqueue_many,
    notifications_insert_sql,
)
from payments.models import Channel, Method, Payment

logger = structlog.get_logger(__name__)

_REFERENCE = re.compile(r"^[0-9A-Za-z._:\-]{1,64}$")
DEFAULT_LIMITS = {
    Channel.COUNTER: "200000.00",
    Channel.TERMINAL: "5000.00",
    Channel.BANK: "1000000.00",
    Channel.ONLINE: "50000.00",
    Channel.IVR: "5000.00",
    Channel.VOUCHER: "1000.00",
}


def channel_limit(channel: str) -> Decimal:
    limits = {**DEFAULT_LIMITS, **getattr(settings, "PAYMENT_CHANNEL_LIMITS", {})}
    return Decimal(str(limits[channel]))


@dataclass(frozen=True)
class PostResult:
    payment: Payment
    created: bool
    # The account, its billing state after the payment and the policy in force, as locked
    # while posting (None when the repeat was found after a conflict).
    credit: PaymentCredit | None = None


def payment_amount(value, *, channel: str) -> Decimal:
    """A payment amount: a number of yuan, positive, at most two places, within the channel's limit."""
    try:
        amount = to_decimal(value)
    except (TypeError, ValueError):
        raise ValidationError(
            _("The amount must be a number of yuan."), field_errors={"amount": [_("Not a number.")]}
        ) from None
    if amount <= 0:
        raise ValidationError(
            _("The amount must be positive."), field_errors={"amount": [_("Must be positive.")]}
        )
    if amount != quantize_yuan(amount):
        raise ValidationError(
            _("The amount may have at most two decimal places (fen)."),
            field_errors={"amount": [_("At most two decimal places.")]},
        )
    limit = channel_limit(channel)
    if amount > limit:
        raise ValidationError(
            _("At most %(limit)s yuan can be paid through this channel at once.") % {"limit": limit},
            field_errors={"amount": [_("Above the channel's limit.")]},
            code="above_limit",
        )
    return quantize_yuan(amount)


def _same(existing: Payment, *, account_number: str, amount: Decimal) -> Payment:
    if existing.account.number != account_number or existing.amount != amount:
        raise Conflict(
            _("Reference %(ref)s was already used for a different payment.") % {"ref": existing.external_id},
            code="reference_reused",
        )
    return existing


def payment_post(
    *,
    channel: str,
    external_id: str,
    account_number: str,
    amount,
    method: str,
    received_at: datetime | None = None,
    cashier_id: int | None = None,
    shift_id: int | None = None,
    hall_id: int | None = None,
    device_id: int | None = None,
    bank_id: int | None = None,
    cash_tendered=None,
    payer: str = "",
    details: dict | None = None,
) -> PostResult:
    try:
        channel = Channel(channel)
        method = Method(method)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    external_id = (external_id or "").strip()
    if not _REFERENCE.match(external_id):
        raise ValidationError(
            _("A payment reference is 1 to 64 letters, digits or . _ : -"),
            field_errors={"external_id": [_("Invalid reference.")]},
        )
    amount = payment_amount(amount, channel=channel)
    account_number = (account_number or "").strip()

    change, tendered_error = None, None
    if cash_tendered is not None:
        tendered = quantize_yuan(to_decimal(cash_tendered))
        if tendered < amount:
            # Raised once the reference is known to be new: a repeat returns the first payment.
            tendered_error = ValidationError(
                _("Cash tendered (%(tendered)s) is less than the amount (%(amount)s).")
                % {"tendered": tendered, "amount": amount},
                field_errors={"cash_tendered": [_("Less than the amount.")]},
            )
        cash_tendered, change = tendered, tendered - amount

    reference = f"{channel}:{external_id}"
    payment = Payment(
        channel=channel,
        external_id=external_id,
        amount=amount,
        method=method,
        received_at=received_at or timezone.now(),
        cashier_id=cashier_id,
        shift_id=shift_id,
        hall_id=hall_id,
        device_id=device_id,
        bank_id=bank_id,
        cash_tendered=cash_tendered,
        change_given=change,
        payer=payer[:100],
        details=details or {},
    )
    postgres = transaction.get_connection().vendor == "postgresql"
    riders = partial(_riders, payment, reference) if postgres else None
    try:
        with transaction.atomic():
            credit = payment_credit(
                account_number=account_number,
                amount=amount,
                idempotency_key=f"payment:{reference}",
                source_ref=reference,
                description=_("Payment (%(channel)s)") % {"channel": channel.label},
                created_by_id=cashier_id,
                riders=riders,
            )
            if not credit.created:
                # A repeat (or a concurrent delivery that committed first): the first result.
                existing = _existing(channel, external_id)
                if existing is None:
                    raise Conflict(
                        _("Reference %(ref)s was already used for a different posting.") % {"ref": reference},
                        code="reference_reused",
                    )
                return PostResult(
                    _same(existing, account_number=account_number, amount=amount), False, credit
                )
            if tendered_error is not None:
                raise tendered_error
            payment.account = credit.account
            payment.entry_id = credit.entry_id
            close = credit.close_command
            if riders is None:  # embedded mode (SQLite): statement by statement
                payment.restore_command = close
                _payment_insert(payment)
                _receipt_enqueue(payment, credit, reference)
            else:  # the payment row and its receipts were inserted with the entry
                (payment.pk,), *receipts = credit.rider_ids
                payment._state.adding = False
                payment._state.db = transaction.get_connection().alias
                if close is not None:  # the policy closed the meter: rare, one more statement
                    Payment.objects.filter(pk=payment.pk).update(restore_command=close)
                    payment.restore_command = close
                if receipts:
                    notifications_dispatch(receipts[0], dispatch="batched")
    except IntegrityError:
        # A concurrent delivery of the same payment committed first: return it.
        existing = _existing(channel, external_id)
        if existing is None:
            raise
        return PostResult(_same(existing, account_number=account_number, amount=amount), False)
    except (NotFound, ValidationError) as exc:
        # An account closed (or renumbered) since: a repeat still gets its first payment.
        if exc.code not in ("unknown_account", "account_closed"):
            raise
        existing = _existing(channel, external_id)
        if existing is None:
            raise
        return PostResult(_same(existing, account_number=account_number, amount=amount), False)
    logger.info(
        "payment_posted",
        payment=payment.pk,
        channel=channel.value,
        account=credit.account.number,
        amount=str(amount),
        restore_command=payment.restore_command_id,
    )
    return PostResult(payment, True, credit)


def _existing(channel: str, external_id: str) -> Payment | None:
    return Payment.objects.select_related("account").filter(channel=channel, external_id=external_id).first()


_PAYMENT_FIELDS = [f for f in Payment._meta.concrete_fields if not f.primary_key]
_PAYMENT_SQL = (
    f"INSERT INTO {Payment._meta.db_table} ({', '.join(f.column for f in _PAYMENT_FIELDS)}) "  # noqa: S608
    f"VALUES ({', '.join(['%s'] * len(_PAYMENT_FIELDS))}) RETURNING {Payment._meta.pk.column}"
)


def _payment_insert(payment: Payment) -> Payment:
    """INSERT the (unsaved) payment row: what ``Payment.objects.create`` does, without
    compiling the statement anew on every payment (the hot path of every channel)."""
    connection = transaction.get_connection()
    values = [f.get_db_prep_save(f.pre_save(payment, True), connection) for f in _PAYMENT_FIELDS]
    with connection.cursor() as cursor:
        cursor.execute(_PAYMENT_SQL, values)
        payment.pk = cursor.fetchone()[0]
    payment._state.adding = False
    payment._state.db = connection.alias
    return payment


def receipt_text(*, customer_name: str, account_number: str, amount, received_at, balance) -> str:
    """The payment receipt notice, in the utility's language."""
    with translation.override(settings.LANGUAGE_CODE):
        return _(
            "Dear %(name)s, we received %(amount)s for account %(account)s on %(time)s. Balance %(balance)s."
        ) % {
            "name": customer_name,
            "amount": format_yuan(amount),
            "account": account_number,
            "time": timezone.localtime(received_at).strftime("%Y-%m-%d %H:%M"),
            "balance": format_yuan(balance),
        }


def _receipt_items(*, customer, account, amount, received_at, balance, reference: str) -> list[dict]:
    """The customer's receipt, one item per channel: the portal always, SMS and e-mail as the
    customer chose. Keyed by the payment's reference, so a payment has one receipt per channel."""
    body = receipt_text(
        customer_name=customer.name,
        account_number=account.number,
        amount=amount,
        received_at=received_at,
        balance=balance,
    )
    with translation.override(settings.LANGUAGE_CODE):
        subject = _("Payment received for account %(account)s") % {"account": account.number}
    return [
        {
            "channel": channel,
            "topic": NotificationTopic.PAYMENT_RECEIPT,
            "body": body,
            "subject": subject if channel == NotificationChannel.EMAIL else "",
            "recipient": recipient,
            "customer_id": customer.pk,
            "account_id": account.pk,
            "dedupe_key": f"receipt:{reference}:{channel}",
        }
        for channel, recipient in customer_channels(
            mobile_phone=customer.mobile_phone,
            email=customer.email,
            by_sms=customer.notify_by_sms,
            by_email=customer.notify_by_email,
        )
    ]


def _receipt_rows(items: list[dict], reference: str) -> tuple[list[dict], list[tuple]]:
    """The items the outbox takes and their rows; a contact detail it refuses (e.g. a
    landline number for SMS) loses only that channel's copy, never the payment."""
    try:
        return items, notification_rows(items)
    except ValidationError:
        kept, rows = [], []
        for item in items:
            try:
                rows.extend(notification_rows([item]))
                kept.append(item)
            except ValidationError as exc:
                logger.warning(
                    "payment_receipt_skipped",
                    payment=reference,
                    channel=item["channel"],
                    reason=str(exc.message),
                )
        return kept, rows


_PAYMENT_RIDER_SQL = (
    f"INSERT INTO {Payment._meta.db_table} ({', '.join(f.column for f in _PAYMENT_FIELDS)}) "  # noqa: S608
    f"SELECT {', '.join('e.id' if f.attname == 'entry_id' else '%s' for f in _PAYMENT_FIELDS)} FROM e "
    f"RETURNING {Payment._meta.pk.column}"
)


def _riders(payment: Payment, reference: str, preview: CreditPreview) -> list[CreditRider]:
    """PostgreSQL: the payment row and its receipts, inserted in the credit's own statement
    (``payment_credit``'s riders): ``p`` on the new entry, the receipts only if ``p`` was
    inserted. With the lock and BEGIN/COMMIT, a new payment is four round trips."""
    payment.account = preview.account
    connection = transaction.get_connection()
    values = [
        f.get_db_prep_save(f.pre_save(payment, True), connection)
        for f in _PAYMENT_FIELDS
        if f.attname != "entry_id"
    ]
    riders = [CreditRider("p", _PAYMENT_RIDER_SQL, values)]
    items = _receipt_items(
        customer=preview.customer,
        account=preview.account,
        amount=payment.amount,
        received_at=payment.received_at,
        balance=preview.balance_after,
        reference=reference,
    )
    _kept, rows = _receipt_rows(items, reference)
    if rows:
        sql, params = notifications_insert_sql(rows, timezone.now(), when="EXISTS (SELECT 1 FROM p)")
        riders.append(CreditRider("r", sql, params))
    return riders


def _receipt_enqueue(payment: Payment, credit: PaymentCredit, reference: str) -> None:
    """Embedded mode: queue the customer's receipt in this transaction (outbox), one INSERT
    for all channels; delivery queued after commit."""
    items = _receipt_items(
        customer=credit.customer,
        account=credit.account,
        amount=payment.amount,
        received_at=payment.received_at,
        balance=credit.state.balance,
        reference=reference,
    )
    kept, _rows = _receipt_rows(items, reference)
    if kept:
        notifications_enqueue_many(kept, dispatch="batched")
