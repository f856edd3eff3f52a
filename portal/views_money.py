"""The portal's money pages (pay online, order status and power back, payments, vouchers) and
the customer's messages and notification settings. Thin: every view is for signed-in portal
users only and reaches an account only through ``bound_account_or_404``; forms in, services
out, service errors shown on the form."""

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods

from billing.models import CostControlState
from billing.selectors import account_billing_summary
from core.exceptions import ApplicationError, NotFound
from customers.models import Customer
from customers.services.preferences import customer_notification_preferences_set
from payments.models import Channel, GatewayOrder, Payment
from payments.services.online import (
    RestoreStatus,
    online_order_create,
    online_order_for_user,
    order_display_status,
    payment_restore_status,
)
from payments.services.vouchers import voucher_redeem
from portal.access import bound_account_or_404, bound_accounts, portal_login_required
from portal.forms_money import QUICK_AMOUNTS, PayForm, PreferencesForm, VoucherForm, apply_service_errors
from portal.models import PortalProfile
from portal.selectors import portal_messages_for

PAGE_SIZE = 20
# How often a waiting order page asks again (milliseconds).
POLL_MS = 3000


def _gateway() -> str:
    return getattr(settings, "PORTAL_PAYMENT_GATEWAY", "sim")


def _account_context(account, active: str) -> dict:
    summary = account_billing_summary(account=account)
    return {
        "account": account,
        "summary": summary,
        "state_label": summary.state.get_state_display(),
        "tripped": summary.state.state == CostControlState.TRIPPED,
        "active": active,
    }


# --- pay online -------------------------------------------------------------------------------


@portal_login_required
@require_http_methods(["GET", "POST"])
def pay(request, number):
    account = bound_account_or_404(request.user, number)
    form = PayForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            _order, redirect_url = online_order_create(
                account_number=account.number,
                amount=form.cleaned_data["amount"],
                provider=_gateway(),
                customer_user_id=request.user.pk,
                # The gateway sends the customer back here with ?order_no=...; that page
                # forwards to the order's own page.
                return_url=reverse("portal:order-return"),
            )
        except ApplicationError as exc:
            apply_service_errors(form, exc)
        else:
            return redirect(redirect_url)
    context = _account_context(account, "pay")
    context.update(form=form, quick_amounts=QUICK_AMOUNTS)
    return render(request, "portal/pay.html", context)


@portal_login_required
@require_GET
def order_return(request):
    """Where the gateway sends the customer back: on to the order's page (which checks that
    the order is theirs)."""
    order_no = (request.GET.get("order_no") or "").strip()
    if not order_no or len(order_no) > 40 or not order_no.isalnum():
        raise Http404("No such order.")
    return redirect("portal:order", order_no)


def _order_or_404(user, order_no: str) -> GatewayOrder:
    try:
        order = online_order_for_user(user=user, order_no=order_no)
    except NotFound:
        raise Http404("No such order.") from None
    # The portal shows an order only to the customer who started it (staff who may see it
    # elsewhere do not see it here), and only while the account is still bound to them.
    if order.customer_user_id != user.pk or not bound_accounts(user).filter(pk=order.account_id).exists():
        raise Http404("No such order.")
    return order


@portal_login_required
@require_GET
def order(request, order_no):
    order = _order_or_404(request.user, order_no)
    status = order_display_status(order)
    restore = payment_restore_status(order.payment) if order.payment_id else None
    waiting = status == GatewayOrder.Status.CREATED or (
        restore is not None and restore.status == RestoreStatus.PENDING
    )
    if request.GET.get("format") == "json":
        return JsonResponse(
            {
                "order_no": order.order_no,
                "status": status,
                "status_label": str(GatewayOrder.Status(status).label),
                "payment": order.payment_id,
                "restore_status": restore.status if restore else None,
                "restore_message": str(restore.message) if restore else "",
                "waiting": waiting,
            },
            headers={"Cache-Control": "no-store"},
        )
    context = _account_context(order.account, "pay")
    context.update(
        order=order,
        status=status,
        status_label=GatewayOrder.Status(status).label,
        restore=restore,
        waiting=waiting,
        poll_ms=POLL_MS,
        json_url=f"{reverse('portal:order', args=[order.order_no])}?format=json",
        pay_again_url=reverse("portal:pay", args=[order.account.number]),
    )
    return render(request, "portal/order.html", context)


# --- payments ---------------------------------------------------------------------------------


@portal_login_required
@require_GET
def payments(request, number):
    account = bound_account_or_404(request.user, number)
    payments = (
        Payment.objects.filter(account=account)
        .select_related("restore_command")
        .order_by("-posted_at", "-pk")
    )
    page = Paginator(payments, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = []
    for i, payment in enumerate(page.object_list):
        if payment.restore_command_id:
            restore = payment_restore_status(payment)  # the command came with the row
        elif page.number == 1 and i == 0:
            # Only the newest payment can still be waiting for enough money to restore.
            restore = payment_restore_status(payment)
        else:
            restore = None
        rows.append((payment, restore))
    context = _account_context(account, "payments")
    context.update(page=page, rows=rows)
    return render(request, "portal/payments.html", context)


# --- vouchers ---------------------------------------------------------------------------------


@portal_login_required
@require_http_methods(["GET", "POST"])
def voucher(request, number):
    account = bound_account_or_404(request.user, number)
    form = VoucherForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            # Not inside a transaction of ours: a failed attempt must stay recorded (lockout).
            result = voucher_redeem(
                serial=form.cleaned_data["serial"],
                pin=form.cleaned_data["pin"],
                account_number=account.number,
                client_key=f"portal:{request.user.pk}",
                channel_context={"via": "portal", "portal_user": request.user.pk},
            )
        except ApplicationError as exc:
            apply_service_errors(form, exc)
        else:
            return redirect(
                f"{reverse('portal:voucher', args=[account.number])}?redeemed={result.payment.pk}"
            )
    redeemed = None
    redeemed_id = request.GET.get("redeemed", "")
    if redeemed_id.isdigit():
        redeemed = (
            Payment.objects.filter(pk=int(redeemed_id), account=account, channel=Channel.VOUCHER)
            .select_related("voucher", "restore_command")
            .first()
        )
    context = _account_context(account, "voucher")
    context.update(
        form=form,
        redeemed=redeemed,
        redeemed_restore=payment_restore_status(redeemed) if redeemed else None,
    )
    return render(request, "portal/voucher.html", context)


# --- messages and settings --------------------------------------------------------------------


@portal_login_required
@require_GET
def notifications(request):
    rows = portal_messages_for(request.user.pk).order_by("-created_at", "-id")
    page = Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page"))
    profile = PortalProfile.objects.get(user_id=request.user.pk)
    seen_before = profile.messages_seen_at
    newest = rows.values_list("created_at", flat=True).first()
    if newest is not None and (seen_before is None or newest > seen_before):
        # Read up to the newest message shown, not "now": one arriving meanwhile stays unread.
        PortalProfile.objects.filter(pk=profile.pk).update(messages_seen_at=newest)
    items = [(n, seen_before is None or n.created_at > seen_before) for n in page.object_list]
    return render(request, "portal/notifications.html", {"page": page, "items": items})


def _bound_customers(user):
    return Customer.objects.filter(accounts__portal_bindings__user_id=user.pk).distinct().order_by("number")


@portal_login_required
@require_http_methods(["GET", "POST"])
def preferences(request):
    customers = list(_bound_customers(request.user))
    forms = {c.pk: PreferencesForm(customer=c) for c in customers}
    if request.method == "POST":
        customer = next((c for c in customers if c.number == request.POST.get("customer")), None)
        if customer is None:
            raise Http404("No such customer.")
        form = PreferencesForm(request.POST, customer=customer)
        forms[customer.pk] = form
        if form.is_valid():
            try:
                customer_notification_preferences_set(
                    customer=customer,
                    by_sms=form.cleaned_data["by_sms"],
                    by_email=form.cleaned_data["by_email"],
                    changed_by_user_id=request.user.pk,
                )
            except ApplicationError as exc:
                apply_service_errors(form, exc)
            else:
                messages.success(
                    request,
                    _("Notification settings saved for customer %(number)s.") % {"number": customer.number},
                )
                return redirect("portal:preferences")
    return render(
        request,
        "portal/preferences.html",
        {"cards": [(c, forms[c.pk]) for c in customers]},
    )
