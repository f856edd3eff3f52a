"""Counter pages: the cashier's shift (open, settle, report), taking a payment for an account,
its receipt (page and PDF), the daily settlement list of a hall, and payment history.
Thin: forms in, services out. Errors the views do not handle become pages through the
middleware (out of scope = 404, missing role = 403)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from billing.selectors import account_billing_summary
from billing.services.accounts import account_for_actor
from core.exceptions import ApplicationError
from core.money import format_yuan
from core.permissions import Cap, require
from payments import receipts
from payments.forms_counter import (
    CounterPaymentForm,
    PaymentHistoryFilterForm,
    ShiftDayForm,
    ShiftOpenForm,
    ShiftSettleForm,
    payment_token,
)
from payments.services import counter

HISTORY_PAGE_SIZE = 50


def _form_messages(request, form) -> None:
    for errors in form.errors.values():
        for error in errors:
            messages.error(request, error)


def _apply_error(form, exc: ApplicationError) -> None:
    form.add_error(None, str(exc.message))
    for field, field_messages in getattr(exc, "field_errors", {}).items():
        for message in field_messages:
            form.add_error(field if field in form.fields else None, message)


# ----------------------------------------------------------------------------- shift


@login_required
def shift_page(request):
    actor = require(request.user, Cap.PAYMENT_TAKE)
    shift = counter.shift_current(actor)
    context = {"shift": shift}
    if shift is None:
        context["open_form"] = ShiftOpenForm()
    else:
        context["report"] = counter.shift_totals(shift)
        context["settle_form"] = ShiftSettleForm()
    context["recent"] = list(
        counter.shifts_visible(actor).filter(cashier_id=actor.user_id).select_related("hall")[:10]
    )
    return render(request, "payments/counter/shift.html", context)


@login_required
@require_POST
def shift_open(request):
    actor = require(request.user, Cap.PAYMENT_TAKE)
    form = ShiftOpenForm(request.POST)
    if not form.is_valid():
        _form_messages(request, form)
        return redirect("payments:shift")
    try:
        shift = counter.shift_open(actor=actor, opening_float=form.cleaned_data["opening_float"])
    except ApplicationError as exc:
        messages.error(request, str(exc.message))
    else:
        messages.success(
            request,
            _("Shift opened at %(hall)s with a float of %(float)s.")
            % {"hall": shift.hall.name, "float": format_yuan(shift.opening_float)},
        )
    # back to the payment form the shift was opened from, if any
    nxt = request.POST.get("next") or ""
    if nxt.startswith("/payments/take/") and "//" not in nxt:
        return redirect(nxt)
    return redirect("payments:shift")


@login_required
@require_POST
def shift_settle(request, shift_id):
    actor = require(request.user, Cap.PAYMENT_TAKE)
    form = ShiftSettleForm(request.POST)
    if not form.is_valid():
        _form_messages(request, form)
        return redirect("payments:shift")
    try:
        shift = counter.shift_settle(
            actor=actor,
            shift_id=shift_id,
            counted_cash=form.cleaned_data["counted_cash"],
            note=form.cleaned_data["note"],
        )
    except ApplicationError as exc:
        if exc.status_code == 404:
            raise
        messages.error(request, str(exc.message))
        return redirect("payments:shift")
    messages.success(
        request,
        _("Shift settled: expected %(expected)s, counted %(counted)s.")
        % {"expected": format_yuan(shift.expected_cash), "counted": format_yuan(shift.counted_cash)},
    )
    return redirect("payments:shift-report", shift_id=shift.pk)


@login_required
def shift_report(request, shift_id):
    actor = require(request.user, Cap.PAYMENT_VIEW)
    report = counter.shift_report(actor=actor, shift_id=shift_id)
    return render(
        request,
        "payments/counter/shift_report.html",
        {"report": report, "shift": report.shift, "payments": list(counter.shift_payments(report.shift))},
    )


@login_required
def shift_day(request):
    actor = require(request.user, Cap.PAYMENT_VIEW)
    halls = list(counter.halls_visible(actor))
    default_hall = (
        actor.org_unit.code
        if actor.org_unit and actor.org_unit in halls
        else (halls[0].code if halls else "")
    )
    form = ShiftDayForm(
        {
            "hall": request.GET.get("hall") or default_hall,
            "date": request.GET.get("date") or timezone.localdate(),
        },
        halls=halls,
    )
    reports, hall = [], None
    if form.is_valid():
        hall = next(h for h in halls if h.code == form.cleaned_data["hall"])
        reports = counter.shifts_of_day(actor=actor, hall=hall, day=form.cleaned_data["date"])
    totals = {
        "total": sum((r.total for r in reports), 0),
        "count": sum(r.count for r in reports),
        "expected": sum((r.expected_cash for r in reports if r.shift.counted_cash is not None), 0),
        "counted": sum((r.shift.counted_cash for r in reports if r.shift.counted_cash is not None), 0),
        "difference": sum((r.difference for r in reports if r.difference is not None), 0),
    }
    return render(
        request,
        "payments/counter/shift_day.html",
        {"form": form, "hall": hall, "reports": reports, "totals": totals},
    )


# ----------------------------------------------------------------------------- taking a payment


@login_required
def take(request, number):
    actor = require(request.user, Cap.PAYMENT_TAKE)
    account = account_for_actor(actor=actor, number=number, cap=Cap.PAYMENT_TAKE)
    shift = counter.shift_current(actor)
    form_kwargs = {"user_id": actor.user_id, "account_number": account.number}
    form = None
    if request.method == "POST":
        form = CounterPaymentForm(request.POST, **form_kwargs)
        if form.is_valid():
            data = form.cleaned_data
            try:
                result = counter.counter_payment(
                    actor=actor,
                    account_number=account.number,
                    amount=data["amount"],
                    method=data["method"],
                    cash_tendered=data["cash_tendered"],
                    payer=data["payer"],
                    request_id=data["token"],
                )
            except ApplicationError as exc:
                if exc.status_code in (403, 404):
                    raise
                _apply_error(form, exc)
                if exc.code == "reference_reused":
                    form = None  # a fresh receipt number below
            else:
                if not result.created:
                    messages.info(request, _("This payment was already recorded; here is its receipt."))
                return redirect("payments:receipt", payment_id=result.payment.pk)
    if shift is None and form is not None:
        _form_messages(request, form)  # e.g. the shift was settled while the form was open
    if form is None and shift is not None:
        token = payment_token(
            receipt_number=counter.receipt_number_issue(actor=actor, shift=shift),
            user_id=actor.user_id,
            account_number=account.number,
        )
        form = CounterPaymentForm(initial={"token": token}, **form_kwargs)
    return render(
        request,
        "payments/counter/take.html",
        {
            "account": account,
            "customer": account.customer,
            "summary": account_billing_summary(account=account),
            "shift": shift,
            "form": form if shift is not None else None,
            "open_form": ShiftOpenForm() if shift is None else None,
        },
    )


# ----------------------------------------------------------------------------- receipts


@login_required
def receipt(request, payment_id):
    actor = require(request.user, Cap.PAYMENT_VIEW)
    payment = counter.payment_for_actor(actor=actor, payment_id=payment_id)
    balance = counter.balance_after(payment)
    return render(
        request,
        "payments/counter/receipt.html",
        {
            "payment": payment,
            "customer": payment.account.customer,
            "balance_after": balance,
            "amount_in_words": receipts.amount_in_chinese(payment.amount),
            "lines": receipts.receipt_lines(payment, balance_after=balance),
        },
    )


@login_required
def receipt_pdf(request, payment_id):
    actor = require(request.user, Cap.PAYMENT_VIEW)
    payment = counter.payment_for_actor(actor=actor, payment_id=payment_id)
    pdf = receipts.receipt_pdf(payment, balance_after=counter.balance_after(payment))
    response = HttpResponse(pdf, content_type="application/pdf")
    response["Content-Disposition"] = f'inline; filename="receipt-{payment.external_id}.pdf"'
    return response


# ----------------------------------------------------------------------------- history


def _history_page(request, qs):
    page = Paginator(qs, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    params = request.GET.copy()
    params.pop("page", None)
    return page, params.urlencode()


@login_required
def history(request):
    actor = require(request.user, Cap.PAYMENT_VIEW)
    form = PaymentHistoryFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_bound and form.is_valid() else {}
    qs = counter.payment_history(
        actor=actor,
        account=filters.get("account") or "",
        channel=filters.get("channel") or "",
        date_from=filters.get("date_from"),
        date_to=filters.get("date_to"),
    )
    page, querystring = _history_page(request, qs)
    return render(
        request, "payments/counter/history.html", {"form": form, "page": page, "querystring": querystring}
    )


@login_required
def account_history(request, number):
    actor = require(request.user, Cap.PAYMENT_VIEW)
    account = account_for_actor(actor=actor, number=number, cap=Cap.PAYMENT_VIEW)
    page, querystring = _history_page(request, counter.payment_history(actor=actor, account=account.number))
    return render(
        request,
        "payments/counter/account_history.html",
        {
            "account": account,
            "customer": account.customer,
            "page": page,
            "querystring": querystring,
            "can_take": actor.has(Cap.PAYMENT_TAKE),
        },
    )
