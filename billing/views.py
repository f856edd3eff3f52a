"""Staff pages of billing: an account's balance, ledger, policy decisions and adjustments; the
adjustment approval queue; tariffs with a quote form. Thin: forms in, services and
selectors, templates out. Service errors not handled here become pages via the middleware
(out of scope = 404, missing role = 403)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from billing import selectors
from billing.forms import AdjustmentDecisionForm, AdjustmentRequestForm, LedgerFilterForm, TariffQuoteForm
from billing.models import AdjustmentRequest, AdjustmentStatus
from billing.rating.engine import quote_to_dict
from billing.services.accounts import account_for_actor, adjustment_decide, adjustment_request
from billing.services.tariffs import tariff_quote
from core.exceptions import ApplicationError, ValidationError
from core.money import format_yuan
from core.permissions import Cap, require

DECISIONS_SHOWN = 50
ADJUSTMENTS_SHOWN = 50
QUEUE_PAGE_SIZE = 50


def _form_messages(request, form) -> None:
    for errors in form.errors.values():
        for error in errors:
            messages.error(request, error)


@login_required
def account_billing(request, number):
    actor = require(request.user, Cap.LEDGER_VIEW)
    account = account_for_actor(actor=actor, number=number, cap=Cap.LEDGER_VIEW)
    summary = selectors.account_billing_summary(account=account)

    filter_form = LedgerFilterForm(request.GET or None)
    filters = filter_form.cleaned_data if filter_form.is_bound and filter_form.is_valid() else {}
    ledger = selectors.ledger_with_running_balance(
        account=account,
        kind=filters.get("kind") or "",
        date_from=filters.get("date_from"),
        date_to=filters.get("date_to"),
    )
    page = Paginator(ledger, selectors.LEDGER_PAGE_SIZE).get_page(request.GET.get("page"))
    params = request.GET.copy()
    params.pop("page", None)

    adjustments = list(selectors.adjustments_for_account(account=account)[:ADJUSTMENTS_SHOWN])
    can_approve = actor.has(Cap.ADJUSTMENT_APPROVE)
    for adj in adjustments:
        # The service refuses one's own request; the button is not offered either.
        adj.can_decide = (
            can_approve and adj.status == AdjustmentStatus.PENDING and adj.requested_by_id != actor.user_id
        )
    return render(
        request,
        "billing/account.html",
        {
            "account": account,
            "customer": account.customer,
            "summary": summary,
            "filter_form": filter_form,
            "page": page,
            "querystring": params.urlencode(),
            "decisions": list(selectors.policy_decisions_for_account(account=account)[:DECISIONS_SHOWN]),
            "adjustments": adjustments,
            "can_request": actor.has(Cap.ADJUSTMENT_REQUEST),
            "can_approve": can_approve,
            "adjustment_form": AdjustmentRequestForm(),
        },
    )


@login_required
@require_POST
def adjustment_create(request, number):
    actor = require(request.user, Cap.ADJUSTMENT_REQUEST)
    account = account_for_actor(actor=actor, number=number, cap=Cap.ADJUSTMENT_REQUEST)
    form = AdjustmentRequestForm(request.POST)
    if not form.is_valid():
        _form_messages(request, form)
        return redirect("billing:account", number=account.number)
    try:
        adj = adjustment_request(
            actor=actor,
            account_number=account.number,
            amount=form.cleaned_data["amount"],
            reason=form.cleaned_data["reason"],
        )
    except ValidationError as exc:
        messages.error(request, str(exc.message))
    else:
        messages.success(
            request,
            _("Adjustment of %(amount)s requested; it is posted when a second person approves it.")
            % {"amount": format_yuan(adj.amount)},
        )
    return redirect("billing:account", number=account.number)


@login_required
@require_POST
def adjustment_decision(request, adjustment_id):
    actor = require(request.user, Cap.ADJUSTMENT_APPROVE)
    form = AdjustmentDecisionForm(request.POST)
    if not form.is_valid():
        _form_messages(request, form)
        return redirect("billing:adjustments")
    approve = form.cleaned_data["decision"] == "approve"
    try:
        adj = adjustment_decide(
            actor=actor, adjustment_id=adjustment_id, approve=approve, note=form.cleaned_data["note"]
        )
    except ApplicationError as exc:
        if exc.status_code == 404:
            raise
        messages.error(request, str(exc.message))
        adj = AdjustmentRequest.objects.select_related("account").filter(pk=adjustment_id).first()
    else:
        if approve:
            messages.success(
                request,
                _("Adjustment of %(amount)s approved and posted to account %(account)s.")
                % {"amount": format_yuan(adj.amount), "account": adj.account.number},
            )
        else:
            messages.success(request, _("Adjustment rejected."))
    if form.cleaned_data.get("return_to") == "account" and adj is not None:
        return redirect("billing:account", number=adj.account.number)
    return redirect("billing:adjustments")


@login_required
def adjustment_queue(request):
    actor = require(request.user, Cap.ADJUSTMENT_APPROVE)
    page = Paginator(selectors.adjustments_pending(actor=actor), QUEUE_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    for adj in page.object_list:
        adj.can_decide = adj.requested_by_id != actor.user_id
    return render(request, "billing/adjustment_queue.html", {"page": page, "querystring": ""})


@login_required
def tariff_list(request):
    actor = require(request.user, Cap.LEDGER_VIEW)
    return render(request, "billing/tariff_list.html", {"tariffs": list(selectors.tariffs_list(actor=actor))})


@login_required
def tariff_detail(request, code):
    actor = require(request.user, Cap.LEDGER_VIEW)
    tariff = selectors.tariff_get(actor=actor, code=code)
    versions = [
        {
            "version": v,
            "prices": selectors.version_band_prices(v),
            "seasons": selectors.tou_seasons(v),
        }
        for v in tariff.versions.all()
    ]
    can_quote = actor.has(Cap.TARIFF_QUOTE)
    quote = None
    quote_form = None
    if can_quote:
        quote_form = TariffQuoteForm(request.GET if "period_start" in request.GET else None)
        if quote_form.is_bound and quote_form.is_valid():
            try:
                quote = tariff_quote(tariff_code=tariff.code, usage=quote_form.usage())
            except ValidationError as exc:
                quote_form.add_error(None, str(exc.message))
                for field, field_messages in exc.field_errors.items():
                    if field in quote_form.fields:
                        for message in field_messages:
                            quote_form.add_error(field, message)
    return render(
        request,
        "billing/tariff_detail.html",
        {
            "tariff": tariff,
            "versions": versions,
            "hours": range(24),
            "can_quote": can_quote,
            "quote_form": quote_form,
            "quote": quote,
            "quote_data": quote_to_dict(quote) if quote is not None else None,
        },
    )
