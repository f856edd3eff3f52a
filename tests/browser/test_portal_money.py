"""The portal's money pages in headless Chromium: a tripped customer pays online through the
simulated gateway and watches the order page until the simulated meter's relay closes
("power restored"); a voucher is redeemed on a phone-sized screen; another customer's
account is a 404.

The first test runs the real parts of tests/payments/test_end_to_end.py (the DL/T 645 meter
simulator and a real Celery worker). Its set-up collects a reading with ``asyncio.run``,
which cannot run in this thread while Playwright's event loop is alive, so the set-up runs
in a thread of its own and stays open there until the test is done."""

import threading
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone
from playwright.sync_api import expect

from metering.models import CommandAction, CommandStatus, RemoteCommand
from payments.models import GatewayOrder, Payment
from payments.services.posting import payment_post
from payments.services.vouchers import voucher_batch_issue, voucher_sell
from tests.billing.services.conftest import flat_tariff, make_prepaid, policy  # noqa: F401  (fixtures)
from tests.e2e import fleet_of_one, tripped_on_simulator
from tests.portal.conftest import make_portal_user  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("english"),
]
ADDRESS = "930000000061"
PHONE = {"width": 390, "height": 844}


def sign_in(page, base_url: str, user) -> None:
    """Sign the portal user in by handing Chromium a session made by the test client."""
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie.value, "url": base_url}])


@contextmanager
def in_own_thread(make_context):
    """Enter ``make_context()`` in another thread and stay inside it until this exits."""
    entered, leave = threading.Event(), threading.Event()
    box: dict = {}

    def run():
        try:
            with make_context() as value:
                box["value"] = value
                entered.set()
                leave.wait()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc
        finally:
            entered.set()
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    entered.wait(timeout=180)
    try:
        if "error" in box:
            raise box["error"]
        assert "value" in box, "the set-up did not finish in time"
        yield box["value"]
    finally:
        leave.set()
        thread.join(timeout=60)
    if "error" in box:
        raise box["error"]


@pytest.mark.celery_worker
def test_a_tripped_customer_pays_online_and_sees_power_restored(
    live_server,
    page,
    make_customer,
    make_portal_user,  # noqa: F811
):
    base = live_server.url
    fleet = fleet_of_one(ADDRESS)
    customer = make_customer(name="周八")
    with in_own_thread(lambda: tripped_on_simulator(fleet, ADDRESS, customer)) as run:
        account = run.service_point.account
        sign_in(page, base, make_portal_user(account))

        page.goto(f"{base}/portal/accounts/{account.number}/pay/")
        expect(page.get_by_test_id("supply-state")).to_have_attribute("data-state", "tripped")
        expect(page.get_by_test_id("tripped-hint")).to_be_visible()
        page.locator("label[for=id_quick_2]").click()  # the third quick amount: 200.00
        expect(page.get_by_test_id("quick-200.00")).to_be_checked()
        page.get_by_test_id("pay-submit").click()

        # the simulated gateway's cashier page
        expect(page.get_by_test_id("sim-cashier")).to_be_visible()
        expect(page.get_by_test_id("amount")).to_contain_text("200.00")
        page.get_by_test_id("pay").click()

        # back on the portal's order page: paid; it keeps asking until the meter confirms
        order = GatewayOrder.objects.get()
        expect(page).to_have_url(f"{base}/portal/orders/{order.order_no}/")
        expect(page.get_by_test_id("order")).to_have_attribute("data-status", "paid")
        restore = page.get_by_test_id("restore-status")
        expect(restore).to_have_attribute("data-status", "restored", timeout=60_000)
        expect(restore).to_contain_text("⚡")
        payment = Payment.objects.get(channel="online", external_id=order.order_no)
        close = RemoteCommand.objects.get(pk=payment.restore_command_id)
        assert close.action == CommandAction.CLOSE and close.status == CommandStatus.CONFIRMED
        assert fleet.registers(ADDRESS)["relay_open"] is False
        # 3.00 left before the trip; what the reading charged is the ledger's business, but the
        # payment of 200.00 is on the order page and in the payments list
        expect(page.get_by_test_id("order-amount")).to_contain_text("200.00")
        page.goto(f"{base}/portal/accounts/{account.number}/payments/")
        expect(page.get_by_test_id("payment").first.get_by_test_id("restore-status")).to_have_attribute(
            "data-status", "restored"
        )
        expect(page.get_by_test_id("supply-state")).not_to_have_attribute("data-state", "tripped")


def test_a_voucher_is_redeemed_on_a_phone_and_the_balance_grows_by_its_face_value(
    live_server,
    page,
    flat_tariff,  # noqa: F811
    make_prepaid,  # noqa: F811
    make_portal_user,  # noqa: F811
    actors,
):
    base = live_server.url
    account, _meter = make_prepaid(flat_tariff)
    payment_post(
        channel="counter", external_id="b1", account_number=account.number, amount="12.30", method="cash"
    )
    _batch, [(serial, pin)] = voucher_batch_issue(
        actor=actors["manager"],
        face_value="50.00",
        quantity=1,
        expires_on=timezone.localdate() + timedelta(days=30),
    )
    voucher_sell(actor=actors["counter"], serial=serial)
    page.set_viewport_size(PHONE)
    sign_in(page, base, make_portal_user(account))

    page.goto(f"{base}/portal/accounts/{account.number}/voucher/")
    expect(page.get_by_test_id("balance")).to_have_attribute("data-balance", "12.30")
    # a phone-sized screen: nothing sticks out sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    form = page.get_by_test_id("voucher-form")
    form.get_by_test_id("field-serial").fill(serial)
    form.get_by_test_id("field-pin").fill(pin[:-1] + str((int(pin[-1]) + 1) % 10))  # a wrong PIN first
    page.get_by_test_id("voucher-submit").click()
    expect(page.get_by_test_id("form-errors")).to_be_visible()
    expect(form.get_by_test_id("field-pin")).to_have_value("")  # never echoed back
    expect(form.get_by_test_id("field-serial")).to_have_value(serial)

    form.get_by_test_id("field-pin").fill(pin)
    page.get_by_test_id("voucher-submit").click()
    expect(page.get_by_test_id("voucher-redeemed")).to_be_visible()
    # 12.30 + 50.00 = 62.30
    expect(page.get_by_test_id("balance")).to_have_attribute("data-balance", "62.30")
    expect(page.get_by_test_id("new-balance")).to_contain_text("62.30")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert Payment.objects.get(channel="voucher").amount == Decimal("50.00")


def test_another_customers_account_url_is_404(
    live_server,
    page,
    flat_tariff,  # noqa: F811
    make_prepaid,  # noqa: F811
    make_portal_user,  # noqa: F811
):
    base = live_server.url
    mine, _ = make_prepaid(flat_tariff)
    theirs, _ = make_prepaid(flat_tariff, name="李四")
    sign_in(page, base, make_portal_user(mine))
    assert page.goto(f"{base}/portal/accounts/{mine.number}/pay/").status == 200
    for path in ("pay", "voucher", "payments"):
        response = page.goto(f"{base}/portal/accounts/{theirs.number}/{path}/")
        assert response.status == 404, path
    expect(page.get_by_test_id("balance")).to_have_count(0)
    assert "李四" not in page.content()  # nothing about the other customer
