"""Online payment: orders sent to a gateway, and the gateway's signed notifications.

``online_order_create`` records an order (30 minutes to pay) and asks the gateway adapter
where to send the customer. The gateway then calls our notify endpoint server to server;
``online_notification_receive`` logs EVERY notification (a ``GatewayNotification`` row with
its outcome, whatever it is) and posts a payment only for one that is:

- signed by the gateway and well formed (the adapter's ``parse_notification``);
- fresh: sent at most 5 minutes ago and not in the future (30 s of clock skew allowed);
- not a replay: its nonce was never accepted before (also a partial unique constraint on
  accepted rows, so two racing deliveries cannot both be accepted);
- for a known order of this gateway, for exactly the order's amount.

The order row is locked while a notification is handled, so deliveries of the same
notification (a gateway retries until it hears "success") are handled one after the other:
the first posts through ``payment_post(channel="online", external_id=order_no)`` (itself
idempotent on that pair) and marks the order paid; the others are logged as a replay (same
nonce) or duplicate (order already paid) and acknowledged, so the gateway stops retrying.
A paid notification for an order that expired or was cancelled is still posted: the money
was taken, and an accepted payment is never lost.

The returned row carries ``acknowledge`` (not stored): whether to answer the gateway with its
success response (stop retrying) or its failure response.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.models import AccountBilling, CostControlState
from core.audit import audit_context
from core.exceptions import ApplicationError, NotFound, ValidationError
from core.permissions import Cap, actor_for, can_see_unit
from customers.models import Account, AccountStatus
from metering.models import ACTIVE_COMMAND_STATUSES, CommandStatus
from payments.gateways import GatewayError, NotificationStatus, get_gateway
from payments.models import Channel, GatewayNotification, GatewayOrder, Method, Payment
from payments.services.posting import payment_amount, payment_post

logger = structlog.get_logger(__name__)

ORDER_LIFETIME = timedelta(minutes=30)
NOTIFICATION_MAX_AGE = timedelta(minutes=5)
NOTIFICATION_CLOCK_SKEW = timedelta(seconds=30)
MAX_NOTIFICATION_BYTES = 16 * 1024
Outcome = GatewayNotification.Outcome


def _new_order_no() -> str:
    # Local time for people reading it, 48 random bits so that order numbers cannot be guessed.
    return f"KW{timezone.localtime():%Y%m%d%H%M%S}{secrets.token_hex(6).upper()}"


def _return_url(value: str) -> str:
    value = (value or "").strip()
    if not value:
        return ""
    # Only paths on this site: the cashier redirects there, so anything else is an open redirect.
    if len(value) > 300 or not value.startswith("/") or value.startswith("//") or "\\" in value:
        raise ValidationError(
            _("The return address must be a path on this site."),
            field_errors={"return_url": [_("A path starting with /.")]},
        )
    return value


def online_order_create(
    *,
    account_number: str,
    amount,
    provider: str = "sim",
    customer_user_id: int | None = None,
    return_url: str = "",
) -> tuple[GatewayOrder, str]:
    """Create an order of ``amount`` yuan for ``account_number`` at gateway ``provider``;
    returns the order and the URL to send the customer to. The caller decides who may pay
    what (anyone may pay any open account; the portal passes its user's id)."""
    adapter = get_gateway(provider)
    amount = payment_amount(amount, channel=Channel.ONLINE)
    return_url = _return_url(return_url)
    account_number = (account_number or "").strip()
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
    now = timezone.now()
    for attempt in range(5):
        try:
            with transaction.atomic():
                order = GatewayOrder.objects.create(
                    order_no=_new_order_no(),
                    provider=provider,
                    account=account,
                    amount=amount,
                    created_at=now,
                    expires_at=now + ORDER_LIFETIME,
                    customer_user_id=customer_user_id,
                    return_url=return_url,
                )
            break
        except IntegrityError:
            if attempt == 4:
                raise
    # Outside any transaction: a real adapter calls the provider here.
    redirect_url = adapter.create_payment(order)
    logger.info("online_order_created", order=order.order_no, account=account.number, amount=str(amount))
    return order, redirect_url


def online_order_get(order_no: str) -> GatewayOrder:
    order = (
        GatewayOrder.objects.select_related(
            "account", "account__customer__org_unit", "payment", "payment__restore_command"
        )
        .filter(order_no=order_no)
        .first()
    )
    if order is None:
        raise NotFound(_("No online payment order %(no)s.") % {"no": order_no}, code="unknown_order")
    return order


def online_order_for_user(*, user, order_no: str) -> GatewayOrder:
    """Order ``order_no`` if ``user`` may see it: the portal user who started it, or staff who
    may view payments of the account's org unit. NotFound otherwise (existence is not told)."""
    order = online_order_get(order_no)
    if user is not None and user.is_authenticated:
        if order.customer_user_id is not None and order.customer_user_id == user.pk:
            return order
        actor = actor_for(user)
        if (
            actor is not None
            and actor.has(Cap.PAYMENT_VIEW)
            and can_see_unit(actor, order.account.customer.org_unit)
        ):
            return order
    raise NotFound(_("No online payment order %(no)s.") % {"no": order_no}, code="unknown_order")


def order_display_status(order: GatewayOrder, *, now=None) -> str:
    """The order's status as the customer sees it: an unpaid order past its time is expired."""
    if order.status == GatewayOrder.Status.CREATED and order.expires_at <= (now or timezone.now()):
        return GatewayOrder.Status.EXPIRED
    return order.status


# --- restore status ----------------------------------------------------------------------


class RestoreStatus:
    NOT_NEEDED = "not_needed"  # the account was not tripped
    STILL_OFF = "still_off"  # tripped, and this payment did not lift it above the close threshold
    PENDING = "pending"  # close command on its way
    RESTORED = "restored"  # the meter confirmed the close: power is back
    FAILED = "failed"  # the close failed; a field work order follows


@dataclass(frozen=True)
class Restore:
    status: str
    message: str
    command_id: int | None = None
    command_status: str = ""
    confirmed_at: object = None


def payment_restore_status(payment: Payment) -> Restore:
    """Whether the payment brought the power back (for the portal, terminal and IVR)."""
    command = payment.restore_command if payment.restore_command_id else None
    if command is not None:
        if command.status == CommandStatus.CONFIRMED:
            status, message = RestoreStatus.RESTORED, _("Power restored.")
        elif command.status in ACTIVE_COMMAND_STATUSES:
            status, message = RestoreStatus.PENDING, _("Power is being restored.")
        else:
            status = RestoreStatus.FAILED
            message = _("Power could not be restored remotely; a technician will be sent.")
        return Restore(
            status=status,
            message=message,
            command_id=command.pk,
            command_status=command.status,
            confirmed_at=command.confirmed_at,
        )
    state = AccountBilling.objects.filter(pk=payment.account_id).values_list("state", flat=True).first()
    if state == CostControlState.TRIPPED:
        return Restore(
            RestoreStatus.STILL_OFF,
            _("The balance is still below the level at which power is restored; please pay more."),
        )
    return Restore(RestoreStatus.NOT_NEEDED, _("Power is on."))


# --- notifications -----------------------------------------------------------------------


def _setting_seconds(name: str, default: timedelta) -> timedelta:
    value = getattr(settings, name, None)
    return default if value is None else timedelta(seconds=int(value))


def online_notification_receive(
    *, provider: str, body: bytes, headers, remote_addr: str = ""
) -> GatewayNotification:
    """Handle one server-to-server notification from gateway ``provider``; never raises for
    a bad notification: every one is logged with its outcome (see the module doc)."""
    now = timezone.now()
    provider = (provider or "")[:32]
    body = bytes(body or b"")

    def log(outcome: str, detail: str, *, order_no: str = "", nonce: str = "", ack: bool = False):
        row = GatewayNotification.objects.create(
            provider=provider,
            received_at=now,
            order_no=(order_no or "")[:40],
            nonce=(nonce or "")[:64],
            body=body[:MAX_NOTIFICATION_BYTES].decode("utf-8", "replace"),
            outcome=outcome,
            detail=str(detail)[:300],
            remote_addr=(remote_addr or "")[:64],
        )
        row.acknowledge = ack
        logger.info(
            "gateway_notification",
            provider=provider,
            order=row.order_no,
            outcome=outcome,
            detail=row.detail,
            remote_addr=row.remote_addr,
        )
        return row

    try:
        adapter = get_gateway(provider)
    except NotFound:
        return log(Outcome.MALFORMED, "unknown gateway")
    if len(body) > MAX_NOTIFICATION_BYTES:
        return log(Outcome.MALFORMED, f"body larger than {MAX_NOTIFICATION_BYTES} bytes")
    try:
        note = adapter.parse_notification(body, headers)
    except GatewayError as exc:
        return log(exc.outcome, exc.message, order_no=exc.order_no, nonce=exc.nonce)
    ids = {"order_no": note.order_no, "nonce": note.nonce}

    age = now - note.timestamp
    if age > _setting_seconds("PAYMENT_NOTIFY_MAX_AGE_SECONDS", NOTIFICATION_MAX_AGE):
        return log(Outcome.REPLAY, f"stale: sent {int(age.total_seconds())} s ago", **ids)
    if -age > _setting_seconds("PAYMENT_NOTIFY_CLOCK_SKEW_SECONDS", NOTIFICATION_CLOCK_SKEW):
        return log(Outcome.REPLAY, f"timestamp {int(-age.total_seconds())} s in the future", **ids)

    try:
        with transaction.atomic(), audit_context(action="online_payment_notification", gateway=provider):
            order = (
                GatewayOrder.objects.select_for_update(of=("self",))
                .select_related("account")
                .filter(order_no=note.order_no, provider=provider)
                .first()
            )
            if order is None:
                return log(Outcome.UNKNOWN_ORDER, "no such order at this gateway", **ids)
            if GatewayNotification.objects.filter(
                provider=provider, nonce=note.nonce, outcome=Outcome.ACCEPTED
            ).exists():
                # The first delivery was accepted: acknowledge, post nothing.
                return log(Outcome.REPLAY, "nonce already accepted", ack=True, **ids)
            if note.amount != order.amount:
                return log(
                    Outcome.AMOUNT_MISMATCH, f"notified {note.amount}, order is for {order.amount}", **ids
                )
            if order.status == GatewayOrder.Status.PAID:
                return log(
                    Outcome.DUPLICATE, f"order already paid (payment {order.payment_id})", ack=True, **ids
                )
            if note.status == NotificationStatus.FAILED:
                order.status = GatewayOrder.Status.FAILED
                order.provider_txn_id = note.provider_txn_id
                order.save(update_fields=["status", "provider_txn_id"])
                return log(Outcome.ACCEPTED, "payment failed or cancelled at the gateway", ack=True, **ids)
            result = payment_post(
                channel=Channel.ONLINE,
                external_id=order.order_no,
                account_number=order.account.number,
                amount=order.amount,
                method=Method.ONLINE,
                received_at=min(note.timestamp, now),
                details={"provider": provider, "txn": note.provider_txn_id},
            )
            order.status = GatewayOrder.Status.PAID
            order.paid_at = now
            order.provider_txn_id = note.provider_txn_id
            order.payment = result.payment
            order.save(update_fields=["status", "paid_at", "provider_txn_id", "payment"])
            return log(Outcome.ACCEPTED, f"paid: payment {result.payment.pk}", ack=True, **ids)
    except IntegrityError:
        # The nonce was accepted for another order meanwhile (unique on accepted rows); all of
        # the above was rolled back.
        return log(Outcome.REPLAY, "nonce already accepted for another order", **ids)
    except ApplicationError as exc:
        # Signed and for a known order, but the posting refused it (e.g. the account was closed
        # since the order was made): nothing posted, the gateway retries, staff must look.
        logger.warning("gateway_notification_refused", order=note.order_no, error=str(exc.message))
        return log(Outcome.REFUSED, f"refused by posting: {exc.message}", **ids)


def notification_response(provider: str, notification: GatewayNotification) -> tuple[str, str]:
    """(body, content type) to answer the gateway with."""
    try:
        adapter = get_gateway(provider)
    except NotFound:
        return "fail", "text/plain"
    ok = getattr(notification, "acknowledge", notification.outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE))
    return adapter.success_response if ok else adapter.failure_response
