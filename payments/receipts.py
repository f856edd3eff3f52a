"""Counter receipts: the amount in Chinese capital numerals (大写金额) and the receipt as a PDF.

The PDF uses reportlab's built-in CID font STSong-Light (Adobe's Song for simplified
Chinese, resolved by the PDF reader), so no font file ships with the project.

大写金额 follows the People's Bank 《支付结算办法》 (附件一, 正确填写票据和结算凭证的基本规定):
壹贰叁肆伍陆柒捌玖 with 拾佰仟万亿; a leading 1 in the tens is written 壹拾; a run of zeros
inside the number (also across the 元 boundary: 壹仟陆佰捌拾元零叁角贰分) is written as one 零,
except that a 零 between a written 万 (亿) and a 仟 is left out (壹拾万柒仟元); nothing before 角 or
分 when there are no yuan; 整 after 元 when there are no jiao or fen, and not after 角 or 分.
"""

from __future__ import annotations

import io
from decimal import Decimal

from django.utils import timezone
from django.utils.translation import gettext as _

from core.money import quantize_yuan, to_decimal
from payments.models import Payment

_DIGITS = "零壹贰叁肆伍陆柒捌玖"
_PLACES = ("", "拾", "佰", "仟")
_SECTIONS = {4: "万", 8: "亿"}
_LIMIT = Decimal("1000000000000")  # 万亿 and above are not written (MONEY has 12 integer digits)


def amount_in_chinese(value) -> str:
    """``Decimal("123.45")`` -> ``"壹佰贰拾叁元肆角伍分"``; ``0`` -> ``"零元整"``; negatives get 负."""
    amount = to_decimal(value)
    if amount != quantize_yuan(amount):
        raise ValueError(f"not an amount in fen: {value!r}")
    if amount < 0:
        return "负" + amount_in_chinese(-amount)
    if amount >= _LIMIT:
        raise ValueError(f"amount too large for 大写: {value!r}")
    fen_total = int(amount * 100)
    yuan, rest = divmod(fen_total, 100)
    jiao, fen = divmod(rest, 10)
    if fen_total == 0:
        return "零元整"

    parts: list[str] = []
    zero_pending = False
    if yuan:
        digits = str(yuan)
        section_has_digit = False
        above_had_digit = False  # the section just above (万 or 亿) wrote a digit
        for i, ch in enumerate(digits):
            place = len(digits) - 1 - i
            d = int(ch)
            if d == 0:
                zero_pending = True
            else:
                # 万位 (or 亿位) is 0 but 千位 is not: the rules let the 零 go, as in the
                # official example 壹拾万柒仟元零伍角叁分 (107,000.53)
                if zero_pending and not (place % 4 == 3 and above_had_digit):
                    parts.append("零")
                zero_pending = False
                parts.append(_DIGITS[d] + _PLACES[place % 4])
                section_has_digit = True
            if place in _SECTIONS:
                if section_has_digit:
                    parts.append(_SECTIONS[place])
                above_had_digit = section_has_digit
                section_has_digit = False
        parts.append("元")
    for d, unit in ((jiao, "角"), (fen, "分")):
        if d == 0:
            zero_pending = bool(parts)
            continue
        if zero_pending:
            parts.append("零")
            zero_pending = False
        parts.append(_DIGITS[d] + unit)
    if jiao == 0 and fen == 0:
        parts.append("整")
    return "".join(parts)


def _font() -> str:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    name = "STSong-Light"
    if name not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(name))
    return name


def receipt_lines(payment: Payment, *, balance_after: Decimal) -> list[tuple[str, str]]:
    """The receipt's label/value pairs, in print order (the page and the PDF show the same)."""
    received = timezone.localtime(payment.received_at)
    customer = payment.account.customer
    lines = [
        (_("Receipt number"), payment.external_id),
        (_("Date and time"), received.strftime("%Y-%m-%d %H:%M:%S")),
        (_("Service hall"), payment.hall.name if payment.hall else "—"),
        (_("Cashier"), payment.cashier.get_username() if payment.cashier else "—"),
        (_("Customer"), f"{customer.name} ({customer.number})"),
        (_("Account number"), payment.account.number),
        (_("Amount"), f"¥{payment.amount:,.2f}"),
        (_("Amount in words (大写)"), "人民币" + amount_in_chinese(payment.amount)),
        (_("Method"), payment.get_method_display()),
    ]
    if payment.cash_tendered is not None:
        lines.append((_("Cash tendered"), f"¥{payment.cash_tendered:,.2f}"))
        lines.append((_("Change given"), f"¥{payment.change_given or 0:,.2f}"))
    if payment.payer:
        lines.append((_("Payer"), payment.payer))
    lines.append((_("Balance after payment"), f"¥{balance_after:,.2f}"))
    return lines


def receipt_pdf(payment: Payment, *, balance_after: Decimal, title: str = "") -> bytes:
    """One receipt page (100 x 150 mm) with the payment's lines; returns the PDF bytes."""
    from reportlab.lib.units import mm
    from reportlab.pdfgen import canvas

    font = _font()
    width, height = 100 * mm, 150 * mm
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=(width, height))
    pdf.setTitle(f"{payment.external_id}")
    pdf.setFont(font, 13)
    pdf.drawCentredString(width / 2, height - 14 * mm, title or _("Electricity payment receipt"))
    pdf.setFont(font, 8)
    pdf.drawCentredString(width / 2, height - 19 * mm, "收费凭证  Kilowatt")  # STSong-Light has no middle dot
    y = height - 28 * mm
    for label, value in receipt_lines(payment, balance_after=balance_after):
        pdf.setFont(font, 8)
        pdf.drawString(8 * mm, y, label)
        pdf.setFont(font, 9)
        # the amount in words can be long: give it its own line
        if len(value) > 22:
            y -= 4.5 * mm
            pdf.drawString(12 * mm, y, value)
        else:
            pdf.drawString(42 * mm, y, value)
        y -= 6.5 * mm
    if payment.restore_command_id:
        pdf.setFont(font, 9)
        pdf.drawString(8 * mm, y - 2 * mm, _("Power is being restored."))
    pdf.setFont(font, 7)
    pdf.drawString(
        8 * mm,
        8 * mm,
        _("Keep this receipt. Printed %(at)s") % {"at": f"{timezone.localtime():%Y-%m-%d %H:%M}"},
    )
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()
