"""The account billing page in headless Chromium: from the customer to its ledger with a
running balance, and a manual adjustment that only a second person can approve."""

from decimal import Decimal

import pytest
from django.utils import translation
from playwright.sync_api import expect

from billing.models import AccountBilling, AdjustmentRequest, AdjustmentStatus
from billing.services.ledger import ledger_post
from tests.browser.test_staff_pages import PASSWORD, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def zh(message: str) -> str:
    with translation.override("zh-hans"):
        return translation.gettext(message)


def post(account, kind, amount, key):
    ledger_post(
        account_id=account.pk,
        kind=kind,
        amount=Decimal(amount),
        source="payment" if kind == "payment" else "reading",
        idempotency_key=key,
        description=key,
    )


def test_ledger_running_balance_and_four_eyes_adjustment(live_server, browser, page, staff, make_customer):
    customer = make_customer(name="赵六", settlement_mode="prepaid")
    account = customer.accounts.get()
    post(account, "payment", "100.00", "p1")
    post(account, "energy", "-12.34", "e1")
    post(account, "energy", "-7.66", "e2")
    base = live_server.url

    sign_in(page, base, "manager")
    page.goto(f"{base}/customers/{customer.number}/")
    page.get_by_role("link", name=account.number).click()
    expect(page).to_have_url(f"{base}/billing/accounts/{account.number}/")
    expect(page.get_by_test_id("balance")).to_contain_text("80.00")
    # newest first: 80.00 after the second charge, 87.66 after the first, 100.00 after the payment
    running = page.get_by_test_id("ledger").get_by_test_id("running-balance")
    expect(running).to_have_text(["80.00", "87.66", "100.00"])

    # The manager asks for a 5.00 credit; the page offers no approval of one's own request.
    page.get_by_test_id("adjustment-request").locator("summary").click()
    form = page.get_by_test_id("adjustment-request").locator("form")
    form.locator("input[name=amount]").fill("5.00")
    form.locator("[name=reason]").fill("抄表错误，退还多收电费")
    form.locator("button[type=submit]").click()
    adjustment = AdjustmentRequest.objects.get(account=account)
    expect(page.get_by_test_id("adjustments")).to_contain_text("抄表错误")
    expect(page.get_by_test_id(f"decide-{adjustment.pk}")).to_have_count(0)
    assert AccountBilling.objects.get(pk=account.pk).balance == Decimal("80.00")

    # A second person (the administrator) approves it from the queue.
    other = browser.new_context(locale="zh-CN")
    approver = other.new_page()
    approver.goto(f"{base}/login/")
    approver.locator("#id_username").fill("admin")
    approver.locator("#id_password").fill(PASSWORD)
    approver.locator("form input[type=submit][name=submit]").click()
    approver.goto(f"{base}/billing/adjustments/")
    approver.get_by_test_id(f"decide-{adjustment.pk}").get_by_role("button", name=zh("Approve")).click()
    expect(approver.get_by_test_id("queue")).not_to_contain_text("抄表错误")
    other.close()

    adjustment.refresh_from_db()
    assert adjustment.status == AdjustmentStatus.APPROVED and adjustment.entry is not None
    page.reload()
    expect(page.get_by_test_id("balance")).to_contain_text("85.00")
    expect(page.get_by_test_id("ledger").get_by_test_id("running-balance").first).to_have_text("85.00")
