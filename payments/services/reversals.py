"""Payment reversals, four eyes: one person asks (with a reason), another approves.

Only an approval posts the reversing ledger entry (``ledger_reverse`` of the payment's entry)
and marks the payment reversed; the database refuses a decision by the requester
(``reversal_four_eyes``) and a second live reversal of one payment (``one_live_reversal``).
After the reversal the cost-control policy looks at the lowered balance like after any
adjustment (it may warn or trip, within its own rules).

A reversed voucher payment does not make the voucher redeemable again: the voucher stays
``redeemed`` and (channel "voucher", serial) stays taken in the payments table, so the same
PIN can never credit a second account. If a voucher went to the wrong account, the right
account is credited by a manual adjustment (also four eyes), with the voucher serial in its
reason.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.services.ledger import ledger_reverse
from billing.services.policy import policy_evaluate
from core.audit import audit_context
from core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from core.permissions import Actor, Cap, org_scope_q
from payments.models import Payment, PaymentReversal, PaymentStatus


def _payments_in_scope(actor: Actor):
    return Payment.objects.filter(org_scope_q(actor, "account__customer__org_unit"))


def reversal_request(*, actor: Actor, payment_id: int, reason: str) -> PaymentReversal:
    if actor is None or not actor.has(Cap.REVERSAL_REQUEST):
        raise PermissionDenied(_("You are not allowed to request reversals."))
    reason = (reason or "").strip()
    if len(reason) < 4:
        raise ValidationError(
            _("Say why the payment is reversed (at least a few words)."),
            field_errors={"reason": [_("Required.")]},
        )
    with (
        transaction.atomic(),
        audit_context(action="reversal_request", user=actor.user_id, username=actor.username),
    ):
        payment = _payments_in_scope(actor).select_for_update(of=("self",)).filter(pk=payment_id).first()
        if payment is None:
            raise NotFound(_("No such payment."))
        if payment.status != PaymentStatus.POSTED:
            raise Conflict(_("This payment is already reversed."), code="already_reversed")
        if PaymentReversal.objects.filter(payment=payment, status=PaymentReversal.Status.PENDING).exists():
            raise Conflict(_("A reversal of this payment is already awaiting approval."), code="pending")
        try:
            with transaction.atomic():
                return PaymentReversal.objects.create(
                    payment=payment, reason=reason[:300], requested_by_id=actor.user_id
                )
        except IntegrityError:
            raise Conflict(
                _("A reversal of this payment is already awaiting approval."), code="pending"
            ) from None


def reversal_decide(*, actor: Actor, reversal_id: int, approve: bool) -> PaymentReversal:
    """Approve (posts the reversing entry) or reject a pending reversal; never one's own."""
    if actor is None or not actor.has(Cap.REVERSAL_APPROVE):
        raise PermissionDenied(_("You are not allowed to approve reversals."))
    with (
        transaction.atomic(),
        audit_context(
            action="reversal_approve" if approve else "reversal_reject",
            user=actor.user_id,
            username=actor.username,
        ),
    ):
        reversal = PaymentReversal.objects.select_for_update().filter(pk=reversal_id).first()
        if reversal is None or not _payments_in_scope(actor).filter(pk=reversal.payment_id).exists():
            raise NotFound(_("No such reversal."))
        if reversal.requested_by_id == actor.user_id:
            raise PermissionDenied(
                _("A reversal must be approved by someone other than the person who requested it."),
                code="four_eyes",
            )
        if reversal.status != PaymentReversal.Status.PENDING:
            raise Conflict(_("This reversal was already decided."), code="already_decided")
        now = timezone.now()
        reversal.status = PaymentReversal.Status.APPROVED if approve else PaymentReversal.Status.REJECTED
        reversal.decided_by_id = actor.user_id
        reversal.decided_at = now
        if approve:
            payment = Payment.objects.select_for_update().select_related("entry").get(pk=reversal.payment_id)
            if payment.status != PaymentStatus.POSTED:
                raise Conflict(_("This payment is already reversed."), code="already_reversed")
            posting = ledger_reverse(
                entry=payment.entry,
                reason=_("payment %(id)s reversed: %(reason)s")
                % {"id": payment.pk, "reason": reversal.reason},
                created_by_id=actor.user_id,
            )
            reversal.entry = posting.entry
            payment.status = PaymentStatus.REVERSED
            payment.save(update_fields=["status"])
            policy_evaluate(
                {payment.account_id: posting.state},
                trigger="reversal",
                trigger_ref=f"reversal:{reversal.pk}",
                now=now,
            )
        reversal.save()
        return reversal


def reversals_pending(*, actor: Actor):
    """The approval queue: pending reversals in the actor's scope, oldest first."""
    return (
        PaymentReversal.objects.filter(
            org_scope_q(actor, "payment__account__customer__org_unit"),
            status=PaymentReversal.Status.PENDING,
        )
        .select_related("payment", "payment__account", "payment__account__customer", "requested_by")
        .order_by("requested_at", "pk")
    )
