"""Staff pages for recharge vouchers (batches, selling, redeeming, voiding), payment reversals
(request and approval queue) and the refund of a closing account's balance. Thin: forms in,
services out; errors not handled here become pages via the middleware."""

import csv
import io

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from billing.models import AccountBilling
from billing.services.accounts import account_for_actor
from core.exceptions import ApplicationError, ValidationError
from core.money import format_yuan
from core.permissions import Cap, org_scope_q, require
from payments.forms_vouchers import (
    RefundForm,
    ReversalDecisionForm,
    ReversalRequestForm,
    VoucherBatchIssueForm,
    VoucherRedeemForm,
    VoucherSellForm,
    VoucherVoidForm,
    apply_service_errors,
)
from payments.models import CashierShift, Payment, Refund, Voucher, VoucherBatch
from payments.services.refunds import refund_remaining_balance
from payments.services.reversals import reversal_decide, reversal_request, reversals_pending
from payments.services.vouchers import (
    batch_status_counts,
    voucher_batch_issue,
    voucher_redeem,
    voucher_sell,
    voucher_void,
)

PAGE_SIZE = 50


def _counts():
    return {
        f"n_{status}": Count("vouchers", filter=Q(vouchers__status=status))
        for status in Voucher.Status.values
    }


def _codes_csv(batch: VoucherBatch, codes: list[tuple[str, str]]) -> HttpResponse:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["batch", "serial", "pin", "face_value", "valid_through"])
    for serial, pin in codes:
        writer.writerow([batch.code, serial, pin, f"{batch.face_value:.2f}", batch.expires_on.isoformat()])
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="voucher-batch-{batch.code}.csv"'
    # The PINs exist only in this response: no cache may keep a copy.
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_http_methods(["GET", "POST"])
def batch_list(request):
    actor = require(request.user, Cap.VOUCHER_MANAGE)
    form = VoucherBatchIssueForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            batch, codes = voucher_batch_issue(actor=actor, **form.cleaned_data)
        except ValidationError as exc:
            apply_service_errors(form, exc)
        else:
            messages.success(
                request,
                _(
                    "Batch %(code)s issued: %(n)s vouchers of %(value)s. Its PINs were in the file just "
                    "downloaded; they cannot be shown again."
                )
                % {"code": batch.code, "n": batch.quantity, "value": format_yuan(batch.face_value)},
            )
            return _codes_csv(batch, codes)
    batches = VoucherBatch.objects.select_related("issued_by").annotate(**_counts()).order_by("-issued_at")
    page = Paginator(batches, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request, "payments/vouchers/batch_list.html", {"form": form, "page": page, "querystring": ""}
    )


@login_required
def batch_detail(request, code):
    require(request.user, Cap.VOUCHER_MANAGE)
    batch = get_object_or_404(VoucherBatch.objects.select_related("issued_by"), code=code)
    vouchers = batch.vouchers.select_related("payment", "payment__account", "sold_by").order_by("serial")
    status = request.GET.get("status", "")
    if status in Voucher.Status.values:
        vouchers = vouchers.filter(status=status)
    page = Paginator(vouchers, PAGE_SIZE).get_page(request.GET.get("page"))
    counts = batch_status_counts(batch)
    return render(
        request,
        "payments/vouchers/batch_detail.html",
        {
            "batch": batch,
            "counts": [(value, label, counts[value]) for value, label in Voucher.Status.choices],
            "page": page,
            "status": status,
            "querystring": f"status={status}" if status else "",
            "void_form": VoucherVoidForm(initial={"batch": batch.code}),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def voucher_sell_page(request):
    actor = require(request.user, Cap.PAYMENT_TAKE)
    form = VoucherSellForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            voucher = voucher_sell(actor=actor, serial=form.cleaned_data["serial"])
        except ApplicationError as exc:
            apply_service_errors(form, exc)
        else:
            messages.success(
                request,
                _("Voucher %(serial)s sold: collect %(value)s.")
                % {"serial": voucher.serial, "value": format_yuan(voucher.batch.face_value)},
            )
            return redirect("payments:voucher-sell")
    return render(
        request,
        "payments/vouchers/form.html",
        {"form": form, "title": _("Sell a voucher"), "submit": _("Sell")},
    )


@login_required
@require_http_methods(["GET", "POST"])
def voucher_redeem_page(request):
    actor = require(request.user, Cap.PAYMENT_TAKE)
    form = VoucherRedeemForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        context = {"via": "counter", "cashier_id": actor.user_id}
        if actor.org_unit is not None:
            context["hall_id"] = actor.org_unit.pk
        shift = CashierShift.objects.filter(cashier_id=actor.user_id, status=CashierShift.Status.OPEN).first()
        if shift is not None:
            context["shift_id"] = shift.pk
        try:
            result = voucher_redeem(
                serial=form.cleaned_data["serial"],
                pin=form.cleaned_data["pin"],
                account_number=form.cleaned_data["account_number"],
                client_key=f"counter:{actor.user_id}",
                channel_context=context,
            )
        except ApplicationError as exc:
            apply_service_errors(form, exc)
        else:
            payment = result.payment
            if result.created:
                messages.success(
                    request,
                    _("Voucher redeemed: %(value)s credited to account %(account)s.")
                    % {"value": format_yuan(payment.amount), "account": payment.account.number},
                )
            else:
                messages.info(
                    request,
                    _("This voucher was already credited to account %(account)s; nothing more was posted.")
                    % {"account": payment.account.number},
                )
            return redirect("payments:voucher-redeem")
    return render(
        request,
        "payments/vouchers/form.html",
        {"form": form, "title": _("Redeem a voucher"), "submit": _("Redeem")},
    )


@login_required
@require_http_methods(["GET", "POST"])
def voucher_void_page(request):
    actor = require(request.user, Cap.VOUCHER_MANAGE)
    form = VoucherVoidForm(request.POST or None, initial={"batch": request.GET.get("batch", "")})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            n = voucher_void(
                actor=actor, reason=data["reason"], serial=data["serial"] or None, batch=data["batch"] or None
            )
        except ApplicationError as exc:
            apply_service_errors(form, exc)
        else:
            messages.success(request, _("%(n)s vouchers voided.") % {"n": n})
            if data["batch"]:
                return redirect("payments:voucher-batch", code=data["batch"])
            return redirect("payments:voucher-void")
    return render(
        request,
        "payments/vouchers/form.html",
        {"form": form, "title": _("Void vouchers"), "submit": _("Void"), "danger": True},
    )


# --- reversals -----------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def reversal_request_page(request, payment_id):
    actor = require(request.user, Cap.REVERSAL_REQUEST)
    payment = get_object_or_404(
        Payment.objects.filter(org_scope_q(actor, "account__customer__org_unit")).select_related(
            "account", "account__customer", "cashier"
        ),
        pk=payment_id,
    )
    form = ReversalRequestForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            reversal_request(actor=actor, payment_id=payment.pk, reason=form.cleaned_data["reason"])
        except ApplicationError as exc:
            if exc.status_code == 404:
                raise
            apply_service_errors(form, exc)
        else:
            messages.success(request, _("Reversal requested; it is posted when a second person approves it."))
            return redirect("payments:reversal-request", payment_id=payment.pk)
    reversals = payment.reversals.select_related("requested_by", "decided_by").order_by("-requested_at")
    return render(
        request,
        "payments/vouchers/reversal_request.html",
        {"payment": payment, "form": form, "reversals": reversals},
    )


@login_required
def reversal_queue(request):
    actor = require(request.user, Cap.REVERSAL_APPROVE)
    page = Paginator(reversals_pending(actor=actor), PAGE_SIZE).get_page(request.GET.get("page"))
    for reversal in page.object_list:
        reversal.can_decide = reversal.requested_by_id != actor.user_id
    return render(request, "payments/vouchers/reversal_queue.html", {"page": page, "querystring": ""})


@login_required
@require_POST
def reversal_decision(request, reversal_id):
    actor = require(request.user, Cap.REVERSAL_APPROVE)
    form = ReversalDecisionForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose approve or reject."))
        return redirect("payments:reversals")
    approve = form.cleaned_data["decision"] == "approve"
    try:
        reversal = reversal_decide(actor=actor, reversal_id=reversal_id, approve=approve)
    except ApplicationError as exc:
        if exc.status_code == 404:
            raise
        messages.error(request, str(exc.message))
    else:
        if approve:
            messages.success(
                request,
                _("Payment %(id)s reversed (%(amount)s taken back from account %(account)s).")
                % {
                    "id": reversal.payment_id,
                    "amount": format_yuan(reversal.payment.amount),
                    "account": reversal.payment.account.number,
                },
            )
        else:
            messages.success(request, _("Reversal rejected; the payment stands."))
    return redirect("payments:reversals")


# --- refund on close -----------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def refund_page(request, account):
    actor = require(request.user, Cap.REFUND)
    account_obj = account_for_actor(actor=actor, number=account, cap=Cap.REFUND)
    form = RefundForm(request.POST or None, initial={"payee": account_obj.customer.name})
    if request.method == "POST" and form.is_valid():
        try:
            refund = refund_remaining_balance(
                actor=actor, account_number=account_obj.number, **form.cleaned_data
            )
        except ApplicationError as exc:
            if exc.status_code == 404:
                raise
            apply_service_errors(form, exc)
        else:
            messages.success(
                request,
                _("%(amount)s refunded to %(payee)s. The account can now be closed.")
                % {"amount": format_yuan(refund.amount), "payee": refund.payee},
            )
            return redirect("payments:refund", account=account_obj.number)
    state = AccountBilling.objects.filter(pk=account_obj.pk).first()
    return render(
        request,
        "payments/vouchers/refund.html",
        {
            "account": account_obj,
            "customer": account_obj.customer,
            "balance": state.balance if state else 0,
            "refund": Refund.objects.filter(account=account_obj).select_related("created_by").first(),
            "form": form,
        },
    )
