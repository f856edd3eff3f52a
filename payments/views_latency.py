"""The payment → power-back page: how fast a paying customer's supply comes back."""

from datetime import date, timedelta

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import render
from django.utils import timezone

from core.permissions import Cap, require
from payments.services.latency import restore_figures, restore_latency, restore_payments


def _day(value: str | None, default: date) -> date:
    try:
        return date.fromisoformat(value) if value else default
    except ValueError:
        return default


@login_required
def restore_latency_page(request):
    actor = require(request.user, Cap.PAYMENT_VIEW)
    today = timezone.localdate()
    date_to = _day(request.GET.get("date_to"), today)
    date_from = _day(request.GET.get("date_from"), date_to - timedelta(days=6))
    if date_from > date_to:
        date_from, date_to = date_to, date_from
    payments = list(restore_payments(actor=actor, date_from=date_from, date_to=date_to)[:5000])
    figures = restore_figures(payments)
    page = Paginator(payments, 50).get_page(request.GET.get("page"))
    rows = [(p, restore_latency(p)) for p in page.object_list]
    return render(
        request,
        "payments/latency.html",
        {"figures": figures, "page": page, "rows": rows, "date_from": date_from, "date_to": date_to},
    )
