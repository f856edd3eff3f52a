"""Bank agency pages: the list of imported daily files by day and bank (with the import form),
the reconciliation report of one bank and day (page and CSV), and the actions on its items
(post a long item, clear an item with a note). Thin: forms in, services out.

Who: people with BANK_RECONCILE (managers, admins) import and clear; auditors (AUDIT_VIEW)
read the reports. Everyone else gets 403.
"""

import csv
import io
from datetime import date

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from core.exceptions import ApplicationError, PermissionDenied
from core.money import format_yuan
from core.permissions import Actor, Cap, actor_for
from payments.forms_bank import BankFileFilterForm, BankFileImportForm, ItemClearForm, ItemFilterForm
from payments.forms_vouchers import apply_service_errors
from payments.models import BankFile, ReconciliationItem
from payments.services.bank import (
    bank_file_import,
    bank_files,
    bank_reconciliation_report,
    reconciliation_item_clear,
    reconciliation_item_post,
    reconciliation_items,
)

PAGE_SIZE = 50


def _viewer(request) -> Actor:
    actor = actor_for(request.user)
    if actor is None or not (actor.has(Cap.BANK_RECONCILE) or actor.has(Cap.AUDIT_VIEW)):
        raise PermissionDenied()
    return actor


def _file(bank_code: str, business_date: str) -> BankFile:
    try:
        day = date.fromisoformat(business_date)
    except ValueError:
        raise Http404 from None
    return get_object_or_404(
        BankFile.objects.select_related("bank", "imported_by"), bank__code=bank_code, business_date=day
    )


@login_required
@require_http_methods(["GET", "POST"])
def bank_file_list(request):
    actor = _viewer(request)
    can_import = actor.has(Cap.BANK_RECONCILE)
    import_form = None
    if can_import:
        import_form = BankFileImportForm(request.POST or None, request.FILES or None)
    elif request.method == "POST":
        raise PermissionDenied()
    if request.method == "POST" and import_form.is_valid():
        data = import_form.cleaned_data
        upload = data["file"]
        try:
            bank_file = bank_file_import(
                actor=actor,
                bank_code=data["bank"].code,
                business_date=data["business_date"],
                file_name=upload.name,
                content=upload.read(),
            )
        except ApplicationError as exc:
            if exc.status_code == 403:
                raise
            apply_service_errors(import_form, exc)
        else:
            if bank_file.created:
                messages.success(
                    request,
                    _("File imported: %(n)s payments, %(total)s.")
                    % {"n": bank_file.line_count, "total": format_yuan(bank_file.total_amount)},
                )
            else:
                messages.info(request, _("This file was already imported; nothing changed."))
            return redirect("payments:bank-file", bank_file.bank.code, bank_file.business_date.isoformat())
    filters = BankFileFilterForm(request.GET or None)
    criteria = filters.cleaned_data if filters.is_valid() else {}
    files = bank_files(
        bank_code=criteria["bank"].code if criteria.get("bank") else "",
        date_from=criteria.get("date_from"),
        date_to=criteria.get("date_to"),
    )
    page = Paginator(files, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "payments/bank/file_list.html",
        {"page": page, "filters": filters, "import_form": import_form, "querystring": query.urlencode()},
    )


@login_required
def bank_file_report(request, bank_code, business_date):
    actor = _viewer(request)
    bank_file = _file(bank_code, business_date)
    report = bank_reconciliation_report(bank_file=bank_file)
    filters = ItemFilterForm(request.GET or None)
    criteria = filters.cleaned_data if filters.is_valid() else {}
    items = reconciliation_items(
        bank_file=bank_file, kind=criteria.get("kind", ""), open_only=criteria.get("open", False)
    )
    page = Paginator(items, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "payments/bank/report.html",
        {
            "file": bank_file,
            "report": report,
            "open_items": reconciliation_items(bank_file=bank_file, open_only=True)[:PAGE_SIZE],
            "page": page,
            "filters": filters,
            "querystring": query.urlencode(),
            "can_clear": actor.has(Cap.BANK_RECONCILE),
        },
    )


@login_required
def bank_file_csv(request, bank_code, business_date):
    _viewer(request)
    bank_file = _file(bank_code, business_date)
    report = bank_reconciliation_report(bank_file=bank_file)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["bank", "business_date", "file_name", "imported_at"])
    writer.writerow(
        [
            bank_file.bank.code,
            bank_file.business_date.isoformat(),
            bank_file.file_name,
            timezone.localtime(bank_file.imported_at).isoformat(),
        ]
    )
    writer.writerow([])
    writer.writerow(["kind", "count", "file_amount", "posted_amount", "open"])
    for k in report.kinds:
        writer.writerow([k.kind, k.count, f"{k.file_amount:.2f}", f"{k.posted_amount:.2f}", k.open_count])
    writer.writerow(["file_total", report.file_count, f"{report.file_total:.2f}", "", ""])
    writer.writerow(["posted_total", report.posted_count, "", f"{report.posted_total:.2f}", ""])
    writer.writerow(["difference", "", f"{report.difference:.2f}", "", report.open_count])
    writer.writerow([])
    writer.writerow(
        [
            "kind",
            "line",
            "bank_serial",
            "file_account",
            "file_amount",
            "paid_at",
            "payment_id",
            "posted_account",
            "posted_amount",
            "payment_status",
            "note",
            "cleared",
            "cleared_by",
            "cleared_at",
            "clearing_note",
        ]
    )
    for item in reconciliation_items(bank_file=bank_file).iterator(chunk_size=2000):
        line, payment = item.line, item.payment
        writer.writerow(
            [
                item.kind,
                line.line_number if line else "",
                line.bank_serial if line else payment.details.get("bank_serial", ""),
                line.account_number if line else "",
                f"{line.amount:.2f}" if line else "",
                timezone.localtime(line.paid_at if line else payment.received_at).isoformat(),
                payment.pk if payment else "",
                payment.account.number if payment else "",
                f"{payment.amount:.2f}" if payment else "",
                payment.status if payment else "",
                item.note,
                "yes" if item.cleared else "no",
                item.cleared_by.get_username() if item.cleared_by else "",
                timezone.localtime(item.cleared_at).isoformat() if item.cleared_at else "",
                item.clearing_note,
            ]
        )
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="bank-reconciliation-{bank_file.bank.code}-{bank_file.business_date}.csv"'
    )
    return response


def _back_to_report(item_id):
    item = get_object_or_404(ReconciliationItem.objects.select_related("file", "file__bank"), pk=item_id)
    return redirect("payments:bank-file", item.file.bank.code, item.file.business_date.isoformat())


@login_required
@require_POST
def bank_item_post(request, item_id):
    actor = actor_for(request.user)
    try:
        item = reconciliation_item_post(actor=actor, item_id=item_id)
    except ApplicationError as exc:
        if exc.status_code in (403, 404):
            raise
        messages.error(request, str(exc.message))
    else:
        messages.success(request, item.clearing_note)
    return _back_to_report(item_id)


@login_required
@require_POST
def bank_item_clear(request, item_id):
    actor = actor_for(request.user)
    form = ItemClearForm(request.POST)
    note = form.cleaned_data["note"] if form.is_valid() else ""
    try:
        reconciliation_item_clear(actor=actor, item_id=item_id, note=note)
    except ApplicationError as exc:
        if exc.status_code in (403, 404):
            raise
        messages.error(request, str(exc.message))
    else:
        messages.success(request, _("Item cleared."))
    return _back_to_report(item_id)
