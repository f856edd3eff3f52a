"""Bank agency collection (银行代收): real-time postings, the bank's daily file, reconciliation.

A bank collects a payment for the utility and posts it at once through ``bank_payment_post``
(channel "bank", external id ``<bank code>:<bank serial>``), so the customer is credited and a
tripped meter closed without waiting for the day's file. After the day the bank sends one file
of everything it collected (layout in docs/bank-file-format.md); ``bank_file_import`` checks
it line by line, stores it, and reconciles it against the real-time postings:

- MATCHED: a line whose serial was posted, with the same account and amount;
- MISMATCH: a line whose serial was posted with another account or amount (or was reversed);
- LONG (长款): a line the bank collected but nobody posted; it can be posted from the file
  (``reconciliation_item_post``, idempotent) or cleared with a note;
- SHORT (短款): a bank payment of that bank and business day (Asia/Shanghai) posted in real
  time but missing from the file (and not matched by another file of that bank).

Items are fixed when the file is imported; people then clear the open ones with a note
(BANK_RECONCILE, in their org-unit scope), which the audit trail records with before/after.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import structlog
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from core.audit import audit_context
from core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from core.money import ZERO, quantize_yuan
from core.permissions import Actor, Cap, can_see_unit
from customers.models import Account
from payments.models import (
    Bank,
    BankFile,
    BankFileLine,
    Channel,
    Method,
    Payment,
    PaymentStatus,
    ReconciliationItem,
)
from payments.services.posting import PostResult, payment_post

logger = structlog.get_logger(__name__)

SHANGHAI = ZoneInfo("Asia/Shanghai")
HEADER = ("bank_code", "business_date", "serial", "account_number", "amount", "paid_at")
TRAILER = "TOTAL"
MAX_ERRORS = 20  # a file with more errors is reported by its first ones
MAX_FILE_BYTES = 20 * 1024 * 1024
_SERIAL = re.compile(r"^[0-9A-Za-z._\-]{1,40}$")
_AMOUNT = re.compile(r"^[0-9]{1,12}\.[0-9]{2}$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
Kind = ReconciliationItem.Kind


# --- real-time postings --------------------------------------------------------------------


def _bank(bank_code: str) -> Bank:
    bank = Bank.objects.filter(code=(bank_code or "").strip()).first()
    if bank is None:
        raise NotFound(
            _("No agency bank with code %(code)s.") % {"code": bank_code or "—"}, code="unknown_bank"
        )
    return bank


def _serial(serial) -> str:
    serial = str(serial or "").strip()
    if not _SERIAL.match(serial):
        raise ValidationError(
            _("A bank serial is 1 to 40 letters, digits or . _ -"),
            field_errors={"bank_serial": [_("Invalid bank serial.")]},
        )
    return serial


def _aware(value, *, field_name: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            value = None
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            _("The payment time must be an ISO 8601 date and time with its UTC offset."),
            field_errors={field_name: [_("Date and time with offset, e.g. 2026-11-27T10:15:00+08:00.")]},
        )
    return value


def bank_payment_post(
    *, bank_code: str, bank_serial: str, account_number: str, amount, paid_at
) -> PostResult:
    """Post one payment the bank has just collected; a repeated (bank, serial) returns the first
    payment and posts nothing, the same serial with another account or amount is a Conflict."""
    bank = _bank(bank_code)
    serial = _serial(bank_serial)
    paid_at = _aware(paid_at, field_name="paid_at")
    return payment_post(
        channel=Channel.BANK,
        external_id=f"{bank.code}:{serial}",
        account_number=account_number,
        amount=amount,
        method=Method.TRANSFER,
        bank_id=bank.pk,
        received_at=paid_at,
        details={"bank_serial": serial},
    )


# --- the daily file ------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedLine:
    line_number: int
    bank_serial: str
    account_number: str
    amount: Decimal
    paid_at: datetime


@dataclass
class _Errors:
    items: list[tuple[int | None, str]] = field(default_factory=list)

    def add(self, line: int | None, message: str) -> None:
        self.items.append((line, message))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = [
            _("line %(n)s: %(message)s") % {"n": n, "message": m} if n else m
            for n, m in self.items[:MAX_ERRORS]
        ]
        if len(self.items) > MAX_ERRORS:
            shown.append(_("… and %(n)s more errors.") % {"n": len(self.items) - MAX_ERRORS})
        raise ValidationError(
            _("The bank file was rejected: %(first)s") % {"first": shown[0]},
            field_errors={"file": shown},
            code="bad_bank_file",
            extra={"errors": [{"line": n, "message": m} for n, m in self.items]},
        )


def bank_file_parse(content: bytes, *, bank_code: str, business_date: date) -> list[ParsedLine]:
    """The payment lines of a bank file, or a ValidationError listing its faults by line number.

    Checks the layout of docs/bank-file-format.md: the header, six fields a line, the file's
    bank code and business date on every line, serials unique and well formed, amounts
    positive with exactly two decimals, times with an offset, and the trailer's count and sum.
    """
    errors = _Errors()
    if len(content) > MAX_FILE_BYTES:
        errors.add(None, _("The file is larger than %(mb)s MB.") % {"mb": MAX_FILE_BYTES // (1024 * 1024)})
        errors.raise_if_any()
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        errors.add(line, _("the file is not UTF-8 text."))
        errors.raise_if_any()
    rows = [(n, row) for n, row in _numbered_rows(text) if any(cell.strip() for cell in row)]
    if not rows:
        errors.add(None, _("The file is empty."))
        errors.raise_if_any()

    header_line, header = rows[0]
    if tuple(cell.strip() for cell in header) != HEADER:
        errors.add(header_line, _("the header must be %(header)s.") % {"header": ",".join(HEADER)})
        errors.raise_if_any()

    trailer_line, trailer = rows[-1]
    has_trailer = len(rows) > 1 and trailer[0].strip() == TRAILER
    body = rows[1:-1] if has_trailer else rows[1:]
    lines: list[ParsedLine] = []
    serial_lines: dict[str, int] = {}
    for n, row in body:
        cells = [cell.strip() for cell in row]
        if cells[0] == TRAILER:
            errors.add(n, _("the trailer line must be the last line of the file."))
            continue
        if len(cells) != len(HEADER):
            errors.add(n, _("%(got)s fields, expected %(want)s.") % {"got": len(cells), "want": len(HEADER)})
            continue
        code, day, serial, account_number, amount, paid_at = cells
        ok = True
        if code != bank_code:
            errors.add(
                n,
                _("bank code %(code)s is not this file's bank (%(bank)s).")
                % {"code": code, "bank": bank_code},
            )
            ok = False
        if day != business_date.isoformat():
            errors.add(
                n,
                _("business date %(day)s is not this file's date (%(date)s).")
                % {"day": day, "date": business_date.isoformat()},
            )
            ok = False
        if not _SERIAL.match(serial):
            errors.add(n, _("serial %(serial)r is not 1 to 40 letters, digits or . _ -") % {"serial": serial})
            ok = False
        elif serial in serial_lines:
            errors.add(
                n,
                _("duplicate serial %(serial)s (also on line %(first)s).")
                % {"serial": serial, "first": serial_lines[serial]},
            )
            ok = False
        else:
            serial_lines[serial] = n
        if not account_number or len(account_number) > 20:
            errors.add(n, _("the account number is missing or longer than 20 characters."))
            ok = False
        if not _AMOUNT.match(amount) or Decimal(amount) <= 0:
            errors.add(
                n,
                _("bad amount %(amount)r: a positive number with exactly two decimals, e.g. 120.50.")
                % {"amount": amount},
            )
            ok = False
        paid = _parse_time(paid_at)
        if paid is None:
            errors.add(
                n,
                _("bad paid_at %(value)r: ISO 8601 with offset, e.g. 2026-11-27T10:15:00+08:00.")
                % {"value": paid_at},
            )
            ok = False
        if ok:
            lines.append(ParsedLine(n, serial, account_number, Decimal(amount), paid))

    if not has_trailer:
        errors.add(trailer_line, _("the file must end with the trailer line TOTAL,<count>,<sum>."))
    else:
        cells = [cell.strip() for cell in trailer]
        count = sum(1 for _n, row in body if row and row[0].strip() != TRAILER)
        total = quantize_yuan(sum((line.amount for line in lines), ZERO))
        if len(cells) != 3 or not cells[1].isdigit() or not _AMOUNT.match(cells[2]):
            errors.add(
                trailer_line, _("the trailer must be TOTAL,<count>,<sum> with the sum to two decimals.")
            )
        elif int(cells[1]) != count:
            errors.add(
                trailer_line,
                _("the trailer counts %(said)s payments but the file has %(count)s.")
                % {"said": cells[1], "count": count},
            )
        elif not errors.items and Decimal(cells[2]) != total:
            # Only meaningful when every line was read: a rejected line would skew the sum.
            errors.add(
                trailer_line,
                _("the trailer sum %(said)s differs from the sum of the lines, %(total)s.")
                % {"said": cells[2], "total": f"{total:.2f}"},
            )
    errors.raise_if_any()
    return lines


def _numbered_rows(text: str):
    reader = csv.reader(io.StringIO(text))
    start = 1
    for row in reader:
        yield start, row
        start = reader.line_num + 1


def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return None
    return parsed


def local_day_bounds(day: date) -> tuple[datetime, datetime]:
    """The start of ``day`` and of the next day in Asia/Shanghai, the utility's business zone."""
    start = datetime.combine(day, time.min, tzinfo=SHANGHAI)
    return start, start + timedelta(days=1)


def bank_file_import(
    *, actor: Actor, bank_code: str, business_date: date, file_name: str, content: bytes
) -> BankFile:
    """Import and reconcile a bank's file for one business day (BANK_RECONCILE).

    One file per bank and day: the same content again returns the first import (its
    ``created`` attribute is False), different content for a day already imported is a
    Conflict. A file with any faulty line is rejected as a whole (ValidationError listing the
    lines) and nothing is stored.
    """
    if actor is None or not actor.has(Cap.BANK_RECONCILE):
        raise PermissionDenied(_("You are not allowed to import bank files."))
    bank = _bank(bank_code)
    if business_date > timezone.localdate():
        raise ValidationError(
            _("The business date %(date)s is in the future.") % {"date": business_date.isoformat()},
            field_errors={"business_date": [_("Not in the future.")]},
        )
    digest = hashlib.sha256(content).hexdigest()
    existing = _existing_file(bank, business_date, digest)
    if existing is not None:
        return existing
    lines = bank_file_parse(content, bank_code=bank.code, business_date=business_date)
    try:
        with (
            transaction.atomic(),
            audit_context(action="bank_file_import", user=actor.user_id, username=actor.username),
        ):
            bank_file = BankFile.objects.create(
                bank=bank,
                business_date=business_date,
                file_name=(file_name or "")[:200],
                sha256=digest,
                imported_by_id=actor.user_id,
                line_count=len(lines),
                total_amount=quantize_yuan(sum((line.amount for line in lines), ZERO)),
            )
            BankFileLine.objects.bulk_create(
                BankFileLine(
                    file=bank_file,
                    line_number=line.line_number,
                    bank_serial=line.bank_serial,
                    account_number=line.account_number,
                    amount=line.amount,
                    paid_at=line.paid_at,
                )
                for line in lines
            )
            _reconcile(bank_file)
    except IntegrityError:
        # Someone imported a file for this bank and day at the same moment.
        existing = _existing_file(bank, business_date, digest)
        if existing is None:
            raise
        return existing
    bank_file.created = True
    logger.info(
        "bank_file_imported",
        bank=bank.code,
        business_date=business_date.isoformat(),
        lines=len(lines),
        total=str(bank_file.total_amount),
    )
    return bank_file


def _existing_file(bank: Bank, business_date: date, digest: str) -> BankFile | None:
    existing = (
        BankFile.objects.select_related("bank", "imported_by")
        .filter(bank=bank, business_date=business_date)
        .first()
    )
    if existing is None:
        return None
    if existing.sha256 != digest:
        raise Conflict(
            _(
                "A different file for bank %(bank)s on %(date)s was already imported (%(name)s, %(at)s). "
                "A day's file is imported once; ask the bank about the difference."
            )
            % {
                "bank": bank.code,
                "date": business_date.isoformat(),
                "name": existing.file_name,
                "at": timezone.localtime(existing.imported_at).strftime("%Y-%m-%d %H:%M"),
            },
            code="bank_file_conflict",
        )
    existing.created = False
    return existing


def _reconcile(bank_file: BankFile) -> None:
    """Create the items of a freshly stored file (one query per step, none per line)."""
    bank = bank_file.bank
    lines = list(bank_file.lines.all())
    by_reference = {
        p.external_id: p
        for p in Payment.objects.select_related("account").filter(
            channel=Channel.BANK, external_id__in=[f"{bank.code}:{line.bank_serial}" for line in lines]
        )
    }
    items = []
    for line in lines:
        payment = by_reference.get(f"{bank.code}:{line.bank_serial}")
        if payment is None:
            items.append(ReconciliationItem(file=bank_file, kind=Kind.LONG, line=line))
            continue
        differences = []
        if payment.account.number != line.account_number:
            differences.append(
                _("account: file %(file)s, posted %(posted)s")
                % {"file": line.account_number, "posted": payment.account.number}
            )
        if payment.amount != line.amount:
            differences.append(
                _("amount: file %(file)s, posted %(posted)s")
                % {"file": f"{line.amount:.2f}", "posted": f"{payment.amount:.2f}"}
            )
        if payment.status != PaymentStatus.POSTED:
            differences.append(_("the posted payment was reversed"))
        kind = Kind.MISMATCH if differences else Kind.MATCHED
        items.append(
            ReconciliationItem(
                file=bank_file, kind=kind, line=line, payment=payment, note="; ".join(differences)[:300]
            )
        )

    start, end = local_day_bounds(bank_file.business_date)
    matched_elsewhere = ReconciliationItem.objects.filter(
        file__bank=bank, line__isnull=False, payment__isnull=False
    ).values("payment_id")
    in_file = {p.pk for p in by_reference.values()}
    short = (
        Payment.objects.filter(
            channel=Channel.BANK,
            bank=bank,
            status=PaymentStatus.POSTED,
            received_at__gte=start,
            received_at__lt=end,
        )
        .exclude(pk__in=in_file)
        .exclude(pk__in=matched_elsewhere)
        .order_by("received_at", "pk")
    )
    items.extend(ReconciliationItem(file=bank_file, kind=Kind.SHORT, payment=p) for p in short)
    ReconciliationItem.objects.bulk_create(items)


# --- clearing items ------------------------------------------------------------------------


def _locked_item(actor: Actor, item_id: int) -> ReconciliationItem:
    if actor is None or not actor.has(Cap.BANK_RECONCILE):
        raise PermissionDenied(_("You are not allowed to clear reconciliation items."))
    item = (
        ReconciliationItem.objects.select_for_update(of=("self",))
        .select_related("file", "file__bank", "line", "payment", "payment__account__customer__org_unit")
        .filter(pk=item_id)
        .first()
    )
    if item is None:
        raise NotFound(_("No such reconciliation item."))
    accounts = []
    if item.payment is not None:
        accounts.append(item.payment.account)
    if item.line is not None:
        account = (
            Account.objects.select_related("customer__org_unit")
            .filter(number=item.line.account_number)
            .first()
        )
        if account is not None:
            accounts.append(account)
    if not all(can_see_unit(actor, a.customer.org_unit) for a in accounts):
        raise PermissionDenied(_("This item concerns an account outside your area."))
    return item


def reconciliation_item_post(*, actor: Actor, item_id: int) -> ReconciliationItem:
    """Post a LONG item's payment from the bank file (idempotent: if the bank's real-time
    posting arrived meanwhile, that payment is linked) and mark the item cleared."""
    with (
        transaction.atomic(),
        audit_context(
            action="bank_item_post",
            user=actor.user_id if actor else None,
            username=actor.username if actor else "",
        ),
    ):
        item = _locked_item(actor, item_id)
        if item.kind != Kind.LONG:
            raise ValidationError(_("Only a long item (collected by the bank, not posted) can be posted."))
        if item.cleared:
            return item
        line = item.line
        result = bank_payment_post(
            bank_code=item.file.bank.code,
            bank_serial=line.bank_serial,
            account_number=line.account_number,
            amount=line.amount,
            paid_at=line.paid_at,
        )
        item.payment = result.payment
        item.cleared = True
        item.cleared_by_id = actor.user_id
        item.cleared_at = timezone.now()
        item.clearing_note = (
            _("Posted from the bank file as payment %(id)s.")
            if result.created
            else _("Already posted in real time as payment %(id)s.")
        ) % {"id": result.payment.pk}
        item.save(update_fields=["payment", "cleared", "cleared_by", "cleared_at", "clearing_note"])
    logger.info("bank_item_posted", item=item.pk, payment=result.payment.pk, created=result.created)
    return item


def reconciliation_item_clear(*, actor: Actor, item_id: int, note: str) -> ReconciliationItem:
    """Clear a MISMATCH, SHORT or LONG item with a note saying how it was settled (e.g. the
    bank's corrected file, a refund to the payer, a reversal)."""
    note = (note or "").strip()
    if len(note) < 4:
        raise ValidationError(
            _("Say how the difference was settled (at least a few words)."),
            field_errors={"note": [_("Required.")]},
        )
    with (
        transaction.atomic(),
        audit_context(
            action="bank_item_clear",
            user=actor.user_id if actor else None,
            username=actor.username if actor else "",
        ),
    ):
        item = _locked_item(actor, item_id)
        if item.kind == Kind.MATCHED:
            raise ValidationError(_("A matched item needs no clearing."))
        if item.cleared:
            raise Conflict(_("This item was already cleared."), code="already_cleared")
        item.cleared = True
        item.cleared_by_id = actor.user_id
        item.cleared_at = timezone.now()
        item.clearing_note = note[:300]
        item.save(update_fields=["cleared", "cleared_by", "cleared_at", "clearing_note"])
    return item


# --- reading: the report -------------------------------------------------------------------


@dataclass(frozen=True)
class KindTotals:
    kind: str
    label: str
    count: int
    file_amount: Decimal  # sum of the file's lines of this kind
    posted_amount: Decimal  # sum of the (still posted) payments linked to items of this kind
    open_count: int


@dataclass(frozen=True)
class ReconciliationReport:
    file: BankFile
    kinds: list[KindTotals]
    file_count: int
    file_total: Decimal
    posted_count: int
    posted_total: Decimal
    open_count: int

    @property
    def difference(self) -> Decimal:
        """File total minus posted total: what the bank collected and we have not credited."""
        return self.file_total - self.posted_total

    def kind(self, kind: str) -> KindTotals:
        return next(k for k in self.kinds if k.kind == kind)


def bank_reconciliation_report(*, bank_file: BankFile) -> ReconciliationReport:
    posted = Q(payment__status=PaymentStatus.POSTED)
    rows = {
        r["kind"]: r
        for r in bank_file.items.values("kind").annotate(
            n=Count("pk"),
            file_amount=Sum("line__amount"),
            posted_amount=Sum("payment__amount", filter=posted),
            posted_n=Count("payment", filter=posted),
            open_n=Count("pk", filter=Q(cleared=False) & ~Q(kind=Kind.MATCHED)),
        )
    }
    kinds = []
    for value, label in (
        (Kind.MATCHED, _("Matched")),
        (Kind.LONG, _("Long (collected by the bank, not posted)")),
        (Kind.SHORT, _("Short (posted, not in the bank's file)")),
        (Kind.MISMATCH, _("Mismatch (account or amount differs)")),
    ):
        r = rows.get(value, {})
        kinds.append(
            KindTotals(
                kind=value,
                label=label,
                count=r.get("n", 0),
                file_amount=quantize_yuan(r.get("file_amount") or ZERO),
                posted_amount=quantize_yuan(r.get("posted_amount") or ZERO),
                open_count=r.get("open_n", 0),
            )
        )
    return ReconciliationReport(
        file=bank_file,
        kinds=kinds,
        file_count=bank_file.line_count,
        file_total=quantize_yuan(bank_file.total_amount),
        posted_count=sum(r.get("posted_n", 0) for r in rows.values()),
        posted_total=quantize_yuan(sum((k.posted_amount for k in kinds), ZERO)),
        open_count=sum(k.open_count for k in kinds),
    )


def reconciliation_items(*, bank_file: BankFile, kind: str = "", open_only: bool = False) -> QuerySet:
    items = bank_file.items.select_related("line", "payment", "payment__account", "cleared_by").order_by(
        "kind", "line__line_number", "payment__received_at", "pk"
    )
    if kind:
        items = items.filter(kind=kind)
    if open_only:
        items = items.filter(cleared=False).exclude(kind=Kind.MATCHED)
    return items


def bank_files(
    *, bank_code: str = "", date_from: date | None = None, date_to: date | None = None
) -> QuerySet:
    files = BankFile.objects.select_related("bank", "imported_by").annotate(
        open_items=Count("items", filter=Q(items__cleared=False) & ~Q(items__kind=Kind.MATCHED)),
        n_long=Count("items", filter=Q(items__kind=Kind.LONG)),
        n_short=Count("items", filter=Q(items__kind=Kind.SHORT)),
        n_mismatch=Count("items", filter=Q(items__kind=Kind.MISMATCH)),
    )
    if bank_code:
        files = files.filter(bank__code=bank_code)
    if date_from:
        files = files.filter(business_date__gte=date_from)
    if date_to:
        files = files.filter(business_date__lte=date_to)
    return files.order_by("-business_date", "bank__code")
