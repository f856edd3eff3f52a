"""The counter channel: a cashier's shift at a hall, payments taken across the counter, and the
settlement that compares the cash counted with the cash expected and locks the shift.

- One open shift per cashier (a partial unique index on CashierShift); the hall is the
  cashier's org unit.
- A counter payment needs PAYMENT_TAKE and an open shift of the cashier; the shift row is
  locked (``FOR NO KEY UPDATE``) while the payment is posted, and settling takes the same
  lock, so no payment lands on a shift after it was settled.
- The payment's reference is its receipt number, ``<hall code>-<yyyymmdd>-<seq>``, issued when
  the form is shown; a resubmitted form carries the same number and so returns the first
  payment (``payment_post`` is idempotent per channel and reference).
- Expected cash = opening float + the amounts of the shift's cash payments (the change was
  given back out of the cash tendered, so the drawer keeps exactly the amount). Reversed
  payments are left out: their cash went back to the payer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import structlog
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.models import LedgerEntry
from billing.services.accounts import account_for_actor
from core.audit import audit_context
from core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from core.models import OrgUnit, OrgUnitKind, Role
from core.money import ZERO, quantize_yuan, to_decimal
from core.permissions import Actor, Cap, org_scope_q
from core.services.sequences import sequence_next
from payments.models import CashierShift, Channel, Method, Payment, PaymentStatus
from payments.services.posting import PostResult, payment_post

logger = structlog.get_logger(__name__)

COUNTER_METHODS = (Method.CASH, Method.CARD)


def _require_take(actor: Actor | None) -> Actor:
    if actor is None or not actor.has(Cap.PAYMENT_TAKE):
        raise PermissionDenied(_("You are not allowed to take payments."))
    return actor


def _yuan(value, field: str, *, allow_zero: bool = True) -> Decimal:
    try:
        amount = to_decimal(value)
    except (TypeError, ValueError):
        raise ValidationError(
            _("Enter an amount in yuan."), field_errors={field: [_("Not a number.")]}
        ) from None
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ValidationError(_("The amount must not be negative."), field_errors={field: [_("Negative.")]})
    if amount != quantize_yuan(amount):
        raise ValidationError(
            _("The amount may have at most two decimal places (fen)."),
            field_errors={field: [_("At most two decimal places.")]},
        )
    return quantize_yuan(amount)


# ----------------------------------------------------------------------------- shifts


def shift_current(actor: Actor | None) -> CashierShift | None:
    """The actor's open shift, if any."""
    if actor is None:
        return None
    return (
        CashierShift.objects.select_related("hall")
        .filter(cashier_id=actor.user_id, status=CashierShift.Status.OPEN)
        .first()
    )


def shift_open(*, actor: Actor, opening_float) -> CashierShift:
    """Open a shift for the actor at their hall; a second open shift is refused (Conflict)."""
    _require_take(actor)
    if actor.org_unit is None:
        raise ValidationError(_("You are not assigned to a service hall."), code="no_hall")
    opening_float = _yuan(opening_float, "opening_float")
    try:
        with (
            transaction.atomic(),
            audit_context(
                action="shift_open", user=actor.user_id, username=actor.username, hall=actor.org_unit.code
            ),
        ):
            return CashierShift.objects.create(
                cashier_id=actor.user_id, hall=actor.org_unit, opening_float=opening_float
            )
    except IntegrityError:
        raise Conflict(
            _("You already have an open shift. Settle it before opening another."), code="shift_already_open"
        ) from None


def shift_cash_expected(shift: CashierShift) -> Decimal:
    """Opening float + the amounts of the shift's posted cash payments."""
    cash = shift.payments.filter(method=Method.CASH, status=PaymentStatus.POSTED).aggregate(s=Sum("amount"))[
        "s"
    ]
    return quantize_yuan(shift.opening_float + (cash or ZERO))


def shift_settle(*, actor: Actor, shift_id: int, counted_cash, note: str = "") -> CashierShift:
    """Record the counted cash against the expected cash and lock the shift. The cashier settles
    their own shift (an administrator may settle anyone's)."""
    _require_take(actor)
    counted_cash = _yuan(counted_cash, "counted_cash")
    with (
        transaction.atomic(),
        audit_context(action="shift_settle", user=actor.user_id, username=actor.username),
    ):
        shift = CashierShift.objects.select_for_update(no_key=True).filter(pk=shift_id).first()
        if shift is None or (shift.cashier_id != actor.user_id and actor.role != Role.ADMIN):
            raise NotFound(_("No such shift."))
        if shift.status != CashierShift.Status.OPEN:
            raise Conflict(_("This shift is already settled."), code="shift_settled")
        shift.expected_cash = shift_cash_expected(shift)
        shift.counted_cash = counted_cash
        shift.note = (note or "").strip()[:300]
        shift.status = CashierShift.Status.SETTLED
        shift.settled_at = timezone.now()
        shift.save(update_fields=["expected_cash", "counted_cash", "note", "status", "settled_at"])
    logger.info(
        "shift_settled",
        shift=shift.pk,
        cashier=shift.cashier_id,
        settled_by=actor.user_id,
        expected=str(shift.expected_cash),
        counted=str(shift.counted_cash),
        difference=str(shift.difference),
    )
    return shift


# ----------------------------------------------------------------------------- payments


def receipt_number_issue(*, actor: Actor, shift: CashierShift | None = None) -> str:
    """A fresh receipt number ``<hall code>-<yyyymmdd>-<seq>``, numbered per hall and local day.
    Issued when the payment form is shown; a number whose form is never submitted is a gap."""
    hall = shift.hall if shift is not None else actor.org_unit
    if hall is None:
        raise ValidationError(_("You are not assigned to a service hall."), code="no_hall")
    day = timezone.localdate().strftime("%Y%m%d")
    seq = sequence_next(name=f"receipt:{hall.code}:{day}")
    return f"{hall.code}-{day}-{seq:06d}"


def counter_payment(
    *,
    actor: Actor,
    account_number: str,
    amount,
    method: str,
    cash_tendered=None,
    payer: str = "",
    request_id: str,
    shift_id: int | None = None,
) -> PostResult:
    """Take a payment at the counter into the actor's open shift (or the given shift, which must
    be theirs and open). ``request_id`` is the receipt number issued with the form: the same
    number again returns the first payment, even after the shift was settled."""
    _require_take(actor)
    account = account_for_actor(actor=actor, number=(account_number or "").strip(), cap=Cap.PAYMENT_TAKE)
    if method not in COUNTER_METHODS:
        raise ValidationError(
            _("At the counter, payments are in cash or by bank card."),
            field_errors={"method": [_("Choose cash or card.")]},
        )
    if method == Method.CASH:
        if cash_tendered in (None, ""):
            cash_tendered = amount  # exact cash, no change
    else:
        cash_tendered = None
    post = {
        "channel": Channel.COUNTER,
        "external_id": request_id,
        "account_number": account.number,
        "amount": amount,
        "method": method,
        "cash_tendered": cash_tendered,
        "payer": (payer or "").strip(),
        "cashier_id": actor.user_id,
    }
    if Payment.objects.filter(channel=Channel.COUNTER, external_id=(request_id or "").strip()).exists():
        return payment_post(**post)  # a resubmitted form: the first payment (or Conflict if it differs)

    with transaction.atomic():
        shifts = CashierShift.objects.select_for_update(no_key=True).select_related("hall")
        if shift_id is not None:
            shift = shifts.filter(pk=shift_id, cashier_id=actor.user_id).first()
            if shift is None:
                raise NotFound(_("No such shift."))
            if shift.status != CashierShift.Status.OPEN:
                raise Conflict(
                    _("Shift %(shift)s is settled and locked; open a new shift to take payments.")
                    % {"shift": shift.pk},
                    code="shift_settled",
                )
        else:
            shift = shifts.filter(cashier_id=actor.user_id, status=CashierShift.Status.OPEN).first()
            if shift is None:
                raise ValidationError(_("Open a shift before taking payments."), code="no_open_shift")
        with audit_context(
            action="counter_payment", user=actor.user_id, username=actor.username, hall=shift.hall.code
        ):
            return payment_post(**post, shift_id=shift.pk, hall_id=shift.hall_id)


# ----------------------------------------------------------------------------- reads


@dataclass(frozen=True)
class MethodTotal:
    method: str
    label: str
    count: int
    total: Decimal


@dataclass(frozen=True)
class ShiftReport:
    shift: CashierShift
    totals: list[MethodTotal]
    total: Decimal
    count: int
    expected_cash: Decimal  # stored at settlement; the running figure while open
    difference: Decimal | None  # counted - expected (negative: cash short)


def shifts_visible(actor: Actor) -> QuerySet[CashierShift]:
    """Shifts the actor may see: their own, and with PAYMENT_VIEW those of halls in scope."""
    own = Q(cashier_id=actor.user_id)
    if not actor.has(Cap.PAYMENT_VIEW):
        return CashierShift.objects.filter(own)
    if actor.is_global:
        return CashierShift.objects.all()
    if actor.org_unit is None:
        return CashierShift.objects.filter(own)
    return CashierShift.objects.filter(own | Q(hall__path__startswith=actor.org_unit.path))


def shift_report(*, actor: Actor, shift_id: int) -> ShiftReport:
    if actor is None or not (actor.has(Cap.PAYMENT_VIEW) or actor.has(Cap.PAYMENT_TAKE)):
        raise PermissionDenied()
    shift = shifts_visible(actor).select_related("hall", "cashier").filter(pk=shift_id).first()
    if shift is None:
        raise NotFound(_("No such shift."))
    return shift_totals(shift)


def shift_totals(shift: CashierShift, rows: dict | None = None) -> ShiftReport:
    if rows is None:
        rows = {
            r["method"]: r
            for r in shift.payments.filter(status=PaymentStatus.POSTED)
            .values("method")
            .annotate(n=Count("pk"), s=Sum("amount"))
        }
    totals = [
        MethodTotal(m.value, m.label, rows[m]["n"], rows[m]["s"])
        for m in Method
        if m in rows  # counter payments are cash or card; any other shows too
    ]
    cash = rows[Method.CASH]["s"] if Method.CASH in rows else ZERO
    expected = shift.expected_cash if shift.expected_cash is not None else shift.opening_float + cash
    return ShiftReport(
        shift=shift,
        totals=totals,
        total=sum((t.total for t in totals), ZERO),
        count=sum(t.count for t in totals),
        expected_cash=expected,
        difference=None if shift.counted_cash is None else shift.counted_cash - expected,
    )


def shift_payments(shift: CashierShift) -> QuerySet[Payment]:
    return shift.payments.select_related("account", "account__customer").order_by("posted_at", "pk")


def halls_visible(actor: Actor) -> QuerySet[OrgUnit]:
    halls = OrgUnit.objects.filter(kind=OrgUnitKind.HALL).order_by("code")
    if actor.is_global:
        return halls
    if actor.org_unit is None:
        return halls.none()
    return halls.filter(path__startswith=actor.org_unit.path)


def shifts_of_day(*, actor: Actor, hall: OrgUnit, day: date) -> list[ShiftReport]:
    """A hall's shifts opened on a local day, each with its totals (one grouped query)."""
    if actor is None or not actor.has(Cap.PAYMENT_VIEW):
        raise PermissionDenied()
    if not halls_visible(actor).filter(pk=hall.pk).exists():
        raise NotFound(_("No such hall."))
    shifts = list(
        CashierShift.objects.select_related("cashier", "hall")
        .filter(hall=hall, opened_at__date=day)
        .order_by("opened_at", "pk")
    )
    grouped: dict[int, dict] = {s.pk: {} for s in shifts}
    for r in (
        Payment.objects.filter(shift__in=shifts, status=PaymentStatus.POSTED)
        .values("shift_id", "method")
        .annotate(n=Count("pk"), s=Sum("amount"))
    ):
        grouped[r["shift_id"]][r["method"]] = r
    return [shift_totals(s, grouped[s.pk]) for s in shifts]


def payments_visible(actor: Actor) -> QuerySet[Payment]:
    """Payments of customers in the actor's scope (PAYMENT_VIEW)."""
    if actor is None or not actor.has(Cap.PAYMENT_VIEW):
        raise PermissionDenied()
    return Payment.objects.filter(org_scope_q(actor, "account__customer__org_unit"))


def payment_history(
    *,
    actor: Actor,
    account: str = "",
    channel: str = "",
    date_from: date | None = None,
    date_to: date | None = None,
) -> QuerySet[Payment]:
    qs = payments_visible(actor).select_related("account", "account__customer", "hall", "cashier")
    if account:
        qs = qs.filter(account__number=account.strip())
    if channel:
        qs = qs.filter(channel=channel)
    if date_from:
        qs = qs.filter(posted_at__date__gte=date_from)
    if date_to:
        qs = qs.filter(posted_at__date__lte=date_to)
    return qs.order_by("-posted_at", "-pk")


def payment_for_actor(*, actor: Actor, payment_id: int) -> Payment:
    payment = (
        payments_visible(actor)
        .select_related("account", "account__customer", "hall", "cashier", "shift", "restore_command")
        .filter(pk=payment_id)
        .first()
    )
    if payment is None:
        raise NotFound(_("No such payment."))
    return payment


def balance_after(payment: Payment) -> Decimal:
    """The account's balance right after this payment's ledger entry (entries are append-only
    and posted under the account lock, so the entries up to it by id are those before it)."""
    total = LedgerEntry.objects.filter(account_id=payment.account_id, pk__lte=payment.entry_id).aggregate(
        s=Sum("amount")
    )["s"]
    return quantize_yuan(total or ZERO)
