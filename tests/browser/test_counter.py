"""The counter in headless Chromium: a clerk opens a shift from the payment page, takes 100 yuan
in cash for 87.50 and reads the change on the receipt page."""

from decimal import Decimal

import pytest
from playwright.sync_api import expect

from payments.models import CashierShift, Payment
from tests.browser.test_staff_pages import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_counter_clerk_takes_cash_and_gives_change(live_server, page, staff, make_customer):
    account = make_customer(name="钱七", settlement_mode="prepaid").accounts.get()
    base = live_server.url
    sign_in(page, base, "counter")

    page.goto(f"{base}/payments/take/{account.number}/")
    expect(page.get_by_test_id("no-shift")).to_be_visible()
    shift_form = page.get_by_test_id("open-shift")
    shift_form.locator("input[name=opening_float]").fill("200.00")
    shift_form.locator("button[type=submit]").click()

    # back on the payment page, now with the form
    expect(page).to_have_url(f"{base}/payments/take/{account.number}/")
    form = page.get_by_test_id("take-form")
    expect(form).to_be_visible()
    form.locator("input[name=amount]").fill("87.50")
    form.locator("input[name=method][value=cash]").check()
    form.locator("input[name=cash_tendered]").fill("100")
    form.locator("input[name=payer]").fill("钱七")
    page.get_by_test_id("pay").click()

    payment = Payment.objects.get(account=account)
    expect(page).to_have_url(f"{base}/payments/receipts/{payment.pk}/")
    expect(page.get_by_test_id("change")).to_contain_text("12.50")  # 100.00 - 87.50
    expect(page.get_by_test_id("receipt")).to_contain_text("捌拾柒元伍角")
    expect(page.get_by_test_id("receipt-pdf")).to_have_attribute(
        "href", f"/payments/receipts/{payment.pk}.pdf"
    )
    assert payment.amount == Decimal("87.50") and payment.change_given == Decimal("12.50")
    assert payment.shift == CashierShift.objects.get(status="open")

    # the printable receipt opens as a PDF in the same session
    pdf = page.request.get(f"{base}/payments/receipts/{payment.pk}.pdf")
    assert pdf.ok and pdf.body().startswith(b"%PDF")
