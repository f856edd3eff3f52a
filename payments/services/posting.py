"""The one posting service every channel calls (DESIGN.md flow 3, §5 "never lost, never twice").

``payment_post`` validates, then in one transaction credits the ledger through billing's
``payment_apply`` (which locks the account and lets the cost-control policy close a tripped
meter) and records the payment row. ``(channel, external_id)`` is unique in the database and
also keys the ledger entry, so a retried or concurrent duplicate returns the first payment
and posts nothing; the same reference with another account or amount is a Conflict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.models import PolicyAction, PolicyDecision
from billing.services.accounts import payment_apply
from core.exceptions import Conflict, NotFound, ValidationError
from core.money import quantize_yuan, to_decimal
from customers.models import Account, AccountStatus
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

    existing = (
        Payment.objects.select_related("account").filter(channel=channel, external_id=external_id).first()
    )
    if existing is not None:
        return PostResult(_same(existing, account_number=account_number, amount=amount), False)

    account = Account.objects.filter(number=account_number).only("pk", "number", "status").first()
    if account is None:
        raise NotFound(
            _("No account with number %(number)s.") % {"number": account_number or "—"},
            code="unknown_account",
        )
    if account.status == AccountStatus.CLOSED:
        raise ValidationError(
            _("Account %(number)s is closed and takes no payments.") % {"number": account.number},
            code="account_closed",
        )
    change = None
    if cash_tendered is not None:
        tendered = quantize_yuan(to_decimal(cash_tendered))
        if tendered < amount:
            raise ValidationError(
                _("Cash tendered (%(tendered)s) is less than the amount (%(amount)s).")
                % {"tendered": tendered, "amount": amount},
                field_errors={"cash_tendered": [_("Less than the amount.")]},
            )
        cash_tendered, change = tendered, tendered - amount

    reference = f"{channel}:{external_id}"
    try:
        with transaction.atomic():
            posting = payment_apply(
                account_id=account.pk,
                amount=amount,
                idempotency_key=f"payment:{reference}",
                source_ref=reference,
                description=_("Payment (%(channel)s)") % {"channel": channel.label},
                created_by_id=cashier_id,
            )
            close = (
                PolicyDecision.objects.filter(
                    account_id=account.pk, trigger_ref=reference, action=PolicyAction.CLOSE
                )
                .only("command_id")
                .first()
            )
            payment = Payment.objects.create(
                channel=channel,
                external_id=external_id,
                account=account,
                amount=amount,
                method=method,
                received_at=received_at or timezone.now(),
                entry=posting.entry,
                cashier_id=cashier_id,
                shift_id=shift_id,
                hall_id=hall_id,
                device_id=device_id,
                bank_id=bank_id,
                cash_tendered=cash_tendered,
                change_given=change,
                payer=payer[:100],
                restore_command_id=close.command_id if close else None,
                details=details or {},
            )
    except IntegrityError:
        # A concurrent delivery of the same payment committed first: return it.
        existing = (
            Payment.objects.select_related("account").filter(channel=channel, external_id=external_id).first()
        )
        if existing is None:
            raise
        return PostResult(_same(existing, account_number=account_number, amount=amount), False)
    logger.info(
        "payment_posted",
        payment=payment.pk,
        channel=channel.value,
        account=account.number,
        amount=str(amount),
        restore_command=payment.restore_command_id,
    )
    return PostResult(payment, True)
