"""The portal's account pages: home (one card per bound account), usage (charts, tier
position, CSV) and the statement (filters, pages, PDF). Thin: every account comes through
``portal.access`` (an unbound number is a 404), reads through ``portal.selectors``."""

import csv
import io
from datetime import timedelta

from django import forms
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET

from billing.rating.engine import band_label
from portal import selectors
from portal.access import bound_account_or_404, bound_accounts, portal_login_required
from portal.statement_pdf import statement_pdf

CSV_MAX_DAYS = 731
STATEMENT_MAX_DAYS = 3 * 366
_DATE = forms.DateInput(attrs={"type": "date", "class": "form-control"})


class StatementFilterForm(forms.Form):
    kind = forms.ChoiceField(
        label=gettext_lazy("Show"),
        required=False,
        choices=[
            ("all", gettext_lazy("Everything")),
            ("charges", gettext_lazy("Charges")),
            ("payments", gettext_lazy("Payments and refunds")),
            ("adjustments", gettext_lazy("Adjustments")),
        ],
        widget=forms.Select(attrs={"class": "form-select"}),
        error_messages={"invalid_choice": gettext_lazy("Choose what to show from the list.")},
    )
    date_from = forms.DateField(
        label=gettext_lazy("From"),
        required=False,
        widget=_DATE,
        error_messages={"invalid": gettext_lazy("Enter the start date as YYYY-MM-DD.")},
    )
    date_to = forms.DateField(
        label=gettext_lazy("To"),
        required=False,
        widget=_DATE,
        error_messages={"invalid": gettext_lazy("Enter the end date as YYYY-MM-DD.")},
    )

    def clean(self):
        data = super().clean()
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            raise forms.ValidationError(
                _("The start date must not be after the end date."), code="dates_reversed"
            )
        if start and end and (end - start).days > STATEMENT_MAX_DAYS:
            raise forms.ValidationError(
                _("Choose at most %(years)d years at a time.") % {"years": 3}, code="range_too_long"
            )
        return data

    def filters(self) -> dict:
        """The valid filters (all entries when the form is unbound or invalid)."""
        if not self.is_bound or not self.is_valid():
            return {"kind": "all", "date_from": None, "date_to": None}
        data = self.cleaned_data
        return {
            "kind": data.get("kind") or "all",
            "date_from": data.get("date_from"),
            "date_to": data.get("date_to"),
        }


# ----------------------------------------------------------------------------- home


@portal_login_required
@require_GET
def home(request):
    accounts = list(bound_accounts(request.user))
    cards = selectors.account_cards(accounts=accounts)
    return render(request, "portal/home.html", {"cards": cards})


# ----------------------------------------------------------------------------- usage


def _band_names() -> dict[str, str]:
    return {band: band_label(band) for band in selectors.BANDS}


def _kwh(value) -> str | None:
    return None if value is None else str(value)


@portal_login_required
@require_GET
def usage(request, number):
    account = bound_account_or_404(request.user, number)
    today = timezone.localdate()
    days = selectors.daily_usage(account=account, today=today)
    months = selectors.monthly_usage(account=account, today=today)
    tier = selectors.tier_position(account=account, today=today, months=months)
    banded = any(d.bands for d in days) or any(m.bands for m in months)
    recent = months[-12:]
    chart_data = {
        "bands": list(selectors.BANDS) if banded else [],
        "labels": {
            "total": _("Total"),
            "last_year": _("Same month last year"),
            "kwh": "kWh",
            **_band_names(),
        },
        "daily": [
            {
                "date": d.day.isoformat(),
                "days": d.days,
                "total": str(d.total),
                "bands": {b: str(q) for b, q in d.bands.items()},
            }
            for d in days
        ],
        "monthly": [
            {
                "month": m.month.strftime("%Y-%m"),
                "total": _kwh(m.total),
                "bands": {b: str(q) for b, q in m.bands.items()},
                "last_year": _kwh(m.last_year),
            }
            for m in recent
        ],
    }
    return render(
        request,
        "portal/usage.html",
        {
            "account": account,
            "days": list(reversed(days)),
            "months": list(reversed(recent)),
            "tier": tier,
            "banded": banded,
            "band_names": [band_label(b) for b in selectors.BANDS],
            "chart_data": chart_data,
        },
    )


@portal_login_required
@require_GET
def usage_csv(request, number):
    """Daily consumption as CSV (UTF-8 with a byte-order mark, so Excel reads the Chinese
    headers): date, days covered, total and band kWh as exact decimals."""
    account = bound_account_or_404(request.user, number)
    try:
        days = int(request.GET.get("days", selectors.DAILY_CHART_DAYS))
    except ValueError:
        days = selectors.DAILY_CHART_DAYS
    days = min(max(days, 1), CSV_MAX_DAYS)
    today = timezone.localdate()
    rows = selectors.daily_usage(account=account, days=days, today=today)
    buffer = io.StringIO()
    buffer.write("\ufeff")
    writer = csv.writer(buffer, lineterminator="\r\n")
    names = _band_names()
    writer.writerow([_("Date"), _("Days"), _("Total (kWh)"), *(f"{names[b]} (kWh)" for b in selectors.BANDS)])
    for d in rows:
        writer.writerow(
            [
                d.day.isoformat(),
                d.days,
                str(d.total),
                *(str(d.bands[b]) if d.bands else "" for b in selectors.BANDS),
            ]
        )
    response = HttpResponse(buffer.getvalue().encode("utf-8"), content_type="text/csv; charset=utf-8")
    first = today - timedelta(days=days)
    response["Content-Disposition"] = (
        f'attachment; filename="usage-{account.number}-{first:%Y%m%d}-{today - timedelta(days=1):%Y%m%d}.csv"'
    )
    return response


# ----------------------------------------------------------------------------- statement


@portal_login_required
@require_GET
def statement(request, number):
    account = bound_account_or_404(request.user, number)
    form = StatementFilterForm(request.GET or None)
    filters = form.filters()
    ledger = selectors.statement_entries(account=account, **filters)
    page = Paginator(ledger, selectors.LEDGER_PAGE_SIZE).get_page(request.GET.get("page"))
    params = request.GET.copy()
    params.pop("page", None)
    status = 400 if form.is_bound and not form.is_valid() else 200
    return render(
        request,
        "portal/statement.html",
        {
            "account": account,
            "form": form,
            "page": page,
            "querystring": params.urlencode(),
            "filtered": filters["kind"] != "all" or filters["date_from"] or filters["date_to"],
        },
        status=status,
    )


@portal_login_required
@require_GET
def statement_pdf_view(request, number):
    account = bound_account_or_404(request.user, number)
    form = StatementFilterForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        # The same page with the same errors: nothing to print until the filter is fixed.
        return statement(request, number)
    filters = form.filters()
    ledger = selectors.statement_entries(account=account, **filters)
    kind_label = dict(form.fields["kind"].choices).get(filters["kind"], filters["kind"])
    content = statement_pdf(
        account=account,
        ledger=ledger,
        kind_label=str(kind_label),
        date_from=filters["date_from"],
        date_to=filters["date_to"],
    )
    response = HttpResponse(content, content_type="application/pdf")
    stamp = filters["date_to"] or timezone.localdate()
    response["Content-Disposition"] = f'attachment; filename="statement-{account.number}-{stamp:%Y%m%d}.pdf"'
    return response
