"""The customer's statement as a PDF (A4, the entries newest first with the running balance),
made like the counter receipt (``payments.receipts``): reportlab with the built-in CID font
STSong-Light, so Chinese prints without a font file in the project."""

from __future__ import annotations

import io
from datetime import date

from django.utils import timezone
from django.utils.translation import gettext as _

from billing.selectors import RunningLedger
from core.money import format_yuan
from customers.models import Account

MAX_ROWS = 5000  # a year of daily charges is ~400 rows; beyond this the customer narrows the dates


def _font() -> str:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    name = "STSong-Light"
    if name not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(name))
    return name


def statement_pdf(
    *,
    account: Account,
    ledger: RunningLedger,
    kind_label: str,
    date_from: date | None,
    date_to: date | None,
) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    font = _font()
    total = ledger.count()
    entries = ledger[: min(total, MAX_ROWS)]
    customer = account.customer
    title_style = ParagraphStyle("title", fontName=font, fontSize=14, leading=18)
    text_style = ParagraphStyle("text", fontName=font, fontSize=9, leading=12)
    cell_style = ParagraphStyle("cell", fontName=font, fontSize=8, leading=10)

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=14 * mm,
        rightMargin=14 * mm,
        topMargin=14 * mm,
        bottomMargin=14 * mm,
        title=f"{account.number}",
    )
    period = "{} – {}".format(
        date_from.isoformat() if date_from else _("first entry"),
        date_to.isoformat() if date_to else _("today"),
    )
    story = [
        Paragraph(_("Account statement"), title_style),
        Spacer(1, 3 * mm),
        Paragraph(f"{_('Customer')}: {customer.name} ({customer.number})", text_style),
        Paragraph(f"{_('Account number')}: {account.number}", text_style),
        Paragraph(f"{_('Period')}: {period}; {_('Show')}: {kind_label}", text_style),
        Paragraph(
            _("Printed %(at)s; %(n)d entries.")
            % {"at": f"{timezone.localtime():%Y-%m-%d %H:%M}", "n": total},
            text_style,
        ),
        Spacer(1, 4 * mm),
    ]
    header = [_("Date"), _("Kind"), _("Description"), "kWh", _("Amount"), _("Balance after")]
    rows = [header]
    for e in entries:
        rows.append(
            [
                e.business_date.isoformat(),
                e.get_kind_display(),
                Paragraph(e.description, cell_style),
                "" if e.kwh is None else str(e.kwh),
                format_yuan(e.amount),
                format_yuan(e.running_balance),
            ]
        )
    if len(rows) == 1:
        rows.append(["", "", _("No entries."), "", "", ""])
    table = Table(rows, colWidths=[22 * mm, 22 * mm, 66 * mm, 18 * mm, 24 * mm, 28 * mm], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, -1), font),
                ("FONTSIZE", (0, 0), (-1, -1), 8),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e9ecef")),
                ("ALIGN", (3, 0), (-1, -1), "RIGHT"),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                ("LINEBELOW", (0, 1), (-1, -1), 0.2, colors.HexColor("#ced4da")),
            ]
        )
    )
    story.append(table)
    if total > MAX_ROWS:
        story.append(Spacer(1, 3 * mm))
        story.append(
            Paragraph(
                _("Only the newest %(n)d entries are printed; choose a shorter period for the rest.")
                % {"n": MAX_ROWS},
                text_style,
            )
        )
    doc.build(story)
    return buffer.getvalue()
