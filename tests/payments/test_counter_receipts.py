"""大写金额 (amounts in Chinese capital numerals) and the receipt PDF."""

import io
from decimal import Decimal

import pytest
from pypdf import PdfReader

from payments.receipts import amount_in_chinese, receipt_pdf
from payments.services.counter import balance_after, counter_payment, receipt_number_issue, shift_open

# Hand-written per 《支付结算办法》 附件一; the ones marked "official" are the examples printed
# in that text (for 107,000.53 it allows 壹拾万柒仟元零伍角叁分, which we write).
CASES = [
    ("0", "零元整"),
    ("0.05", "伍分"),
    ("0.50", "伍角"),
    ("1", "壹元整"),
    ("10", "壹拾元整"),  # a leading 1 in the tens is written 壹拾
    ("15", "壹拾伍元整"),  # official: ¥15.00 人民币壹拾伍元整
    ("87.50", "捌拾柒元伍角"),
    ("100", "壹佰元整"),
    ("100.05", "壹佰元零伍分"),
    ("123.45", "壹佰贰拾叁元肆角伍分"),
    ("325.04", "叁佰贰拾伍元零肆分"),  # official
    ("1409.50", "壹仟肆佰零玖元伍角"),  # official
    ("1680.32", "壹仟陆佰捌拾元零叁角贰分"),  # official
    ("6007.14", "陆仟零柒元壹角肆分"),  # official
    ("107000.53", "壹拾万柒仟元零伍角叁分"),  # official
    ("10000", "壹万元整"),
    ("100100", "壹拾万零壹佰元整"),
    ("100010000", "壹亿零壹万元整"),
    ("100000001", "壹亿零壹元整"),
    ("100001000", "壹亿零壹仟元整"),  # the whole 万 section is zero: 零 kept
    ("999999999999.99", "玖仟玖佰玖拾玖亿玖仟玖佰玖拾玖万玖仟玖佰玖拾玖元玖角玖分"),
    ("-5", "负伍元整"),
]


@pytest.mark.parametrize(("amount", "words"), CASES)
def test_amount_in_chinese(amount, words):
    assert amount_in_chinese(Decimal(amount)) == words


@pytest.mark.parametrize("bad", ["1.005", "1000000000000"])
def test_amount_in_chinese_refuses_fractions_of_fen_and_huge_amounts(bad):
    with pytest.raises(ValueError):
        amount_in_chinese(Decimal(bad))


@pytest.mark.django_db
@pytest.mark.usefixtures("english", "fast_password_hashing")
def test_the_receipt_pdf_carries_the_payment_in_chinese(actors, flat_tariff, make_prepaid):
    account = make_prepaid(flat_tariff, name="李四")[0]
    counter = actors["counter"]
    shift_open(actor=counter, opening_float="0")
    ref = receipt_number_issue(actor=counter)
    payment = counter_payment(
        actor=counter,
        account_number=account.number,
        amount="123.45",
        method="cash",
        cash_tendered="200",
        payer="李四",
        request_id=ref,
    ).payment
    pdf = receipt_pdf(payment, balance_after=balance_after(payment))
    assert pdf.startswith(b"%PDF")
    text = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    assert "人民币壹佰贰拾叁元肆角伍分" in text
    assert ref in text and account.number in text and "李四" in text and "青溪城关营业厅" in text
    assert "¥123.45" in text and "¥200.00" in text and "¥76.55" in text  # change 200.00 - 123.45
