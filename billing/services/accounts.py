"""Account-level billing actions: crediting a payment, manual adjustments with a second
person's approval, tariff assignment."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.models import AccountTariff, AdjustmentRequest, AdjustmentStatus, EntryKind, EntrySource, Tariff
from billing.services.ledger import Posting, _amount, ledger_post
from billing.services.policy import policy_evaluate
from core.audit import audit_context
from core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from core.permissions import Actor, Cap, org_scope_q
from customers.models import Account


def account_for_actor(*, actor: Actor, number: str, cap: Cap = Cap.LEDGER_VIEW) -> Account:
    """The account ``number`` if the actor may act on it, else NotFound (scope) or
    PermissionDenied (role)."""
    if actor is None or not actor.has(cap):
        raise PermissionDenied()
    account = (
        Account.objects.filter(org_scope_q(actor, "customer__org_unit"))
        .select_related("customer", "customer__org_unit")
        .filter(number=number)
        .first()
    )
    if account is None:
        raise NotFound(_("No such account."))
    return account


def payment_apply(
    *,
    account_id: int,
    amount,
    idempotency_key: str,
    source_ref: str,
    description: str = "",
    created_by_id: int | None = None,
    now: datetime | None = None,
) -> Posting:
    """Credit a payment to the ledger and let the policy react (a tripped account lifted
    above its close threshold gets exactly one close command, at any hour). Channels
    (payments app) call this with their own idempotency key."""
    with transaction.atomic():
        posting = ledger_post(
            account_id=account_id,
            kind=EntryKind.PAYMENT,
            amount=amount,
            source=EntrySource.PAYMENT,
            idempotency_key=idempotency_key,
            description=description or _("Payment"),
            source_ref=source_ref,
            created_by_id=created_by_id,
            business_date=timezone.localdate(now) if now else None,
        )
        if posting.created:
            policy_evaluate({account_id: posting.state}, trigger="payment", trigger_ref=source_ref, now=now)
        return posting


def adjustment_request(*, actor: Actor, account_number: str, amount, reason: str) -> AdjustmentRequest:
    account = account_for_actor(actor=actor, number=account_number, cap=Cap.ADJUSTMENT_REQUEST)
    amount = _amount(amount)
    reason = (reason or "").strip()
    if len(reason) < 4:
        raise ValidationError(
            _("Say why the account is adjusted (at least a few words)."),
            field_errors={"reason": [_("Required.")]},
        )
    with audit_context(action="adjustment_request", user=actor.user_id, username=actor.username):
        return AdjustmentRequest.objects.create(
            account=account, amount=amount, reason=reason[:300], requested_by_id=actor.user_id
        )


def adjustment_decide(
    *, actor: Actor, adjustment_id: int, approve: bool, note: str = ""
) -> AdjustmentRequest:
    """Approve (posts the entry) or reject a pending adjustment. Never one's own request."""
    if actor is None or not actor.has(Cap.ADJUSTMENT_APPROVE):
        raise PermissionDenied(_("You are not allowed to approve adjustments."))
    with (
        transaction.atomic(),
        audit_context(
            action="adjustment_approve" if approve else "adjustment_reject",
            user=actor.user_id,
            username=actor.username,
        ),
    ):
        adj = (
            AdjustmentRequest.objects.select_for_update()
            .select_related("account", "account__customer__org_unit")
            .filter(pk=adjustment_id)
            .first()
        )
        if (
            adj is None
            or not Account.objects.filter(
                org_scope_q(actor, "customer__org_unit"), pk=adj.account_id
            ).exists()
        ):
            raise NotFound(_("No such adjustment."))
        if adj.requested_by_id == actor.user_id:
            raise PermissionDenied(
                _("An adjustment must be approved by someone other than the person who requested it."),
                code="four_eyes",
            )
        if adj.status != AdjustmentStatus.PENDING:
            raise Conflict(_("This adjustment was already decided."), code="already_decided")
        now = timezone.now()
        adj.status = AdjustmentStatus.APPROVED if approve else AdjustmentStatus.REJECTED
        adj.decided_by_id = actor.user_id
        adj.decided_at = now
        adj.decision_note = (note or "").strip()[:300]
        if approve:
            posting = ledger_post(
                account_id=adj.account_id,
                kind=EntryKind.ADJUSTMENT,
                amount=adj.amount,
                source=EntrySource.STAFF,
                idempotency_key=f"adjustment:{adj.pk}",
                description=_("Adjustment: %(reason)s") % {"reason": adj.reason},
                source_ref=f"adjustment:{adj.pk}",
                created_by_id=actor.user_id,
                details={"requested_by": adj.requested_by_id, "approved_by": actor.user_id},
            )
            adj.entry = posting.entry
            adj.save()
            policy_evaluate(
                {adj.account_id: posting.state},
                trigger="adjustment",
                trigger_ref=f"adjustment:{adj.pk}",
                now=now,
            )
        else:
            adj.save()
        return adj


def tariff_assign(*, account: Account, tariff: Tariff, effective_from: date) -> AccountTariff:
    if effective_from < account.opened_on:
        raise ValidationError(_("A tariff cannot start before the account was opened."))
    obj, _created = AccountTariff.objects.update_or_create(
        account=account, effective_from=effective_from, defaults={"tariff": tariff}
    )
    return obj


def available_balance(balance: Decimal, credit_allowance: Decimal) -> Decimal:
    return balance + credit_allowance
