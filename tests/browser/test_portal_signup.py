"""The portal's whole first visit in headless Chromium: a new customer signs up with the
one-time code sent through the outbox, finds the account tripped on the home page, pays
online through the simulated gateway and sees "power restored" once the simulated meter's
relay closes; and the usage page really draws its charts (checked in the page's ECharts
instances, not in the HTML).

The trip is set up with the real parts (tests/e2e.py: DL/T 645 simulator, real Celery
worker) in a thread of its own, as in test_portal_money.py."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from core.models import Notification
from metering.models import CommandAction, CommandStatus, MeterInstallation, RemoteCommand
from payments.models import GatewayOrder, Payment
from portal.models import AccountBinding, PortalProfile
from tests.billing.services.conftest import flat_tariff, ingest, make_prepaid, policy  # noqa: F401
from tests.browser.test_portal_money import in_own_thread, sign_in
from tests.e2e import fleet_of_one, tripped_on_simulator
from tests.portal.conftest import make_portal_user  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("english"),
]
ADDRESS = "930000000071"
PHONE = {"width": 390, "height": 844}
PASSWORD = "Lantern-river-2026"


def national(phone: str) -> str:
    """The 11 national digits of a stored phone (+86… or bare)."""
    digits = re.sub(r"\D", "", phone)
    return digits[-11:]


def code_sent_to(phone: str) -> str:
    note = Notification.objects.filter(topic="one_time_code", channel="sms").order_by("-id").first()
    assert note is not None, "no one-time code was queued"
    assert national(note.recipient) == national(phone)
    return re.search(r"(?<!\d)(\d{6})(?!\d)", note.body).group(1)


@pytest.mark.celery_worker
def test_a_new_customer_signs_up_sees_the_trip_pays_online_and_sees_power_restored(
    live_server, page, make_customer
):
    base = live_server.url
    fleet = fleet_of_one(ADDRESS)
    customer = make_customer(name="吴九")
    with in_own_thread(lambda: tripped_on_simulator(fleet, ADDRESS, customer)) as run:
        account = run.service_point.account
        page.set_viewport_size(PHONE)

        # step 1: customer number, the ID document's last 4 characters, the registered phone
        page.goto(f"{base}/portal/signup/")
        page.get_by_test_id("customer-number").fill(customer.number)
        page.get_by_test_id("id-last4").fill(customer.id_number_masked[-4:])
        page.get_by_test_id("signup-phone").fill(national(customer.mobile_phone))
        page.get_by_test_id("signup-submit").click()

        # step 2: the code that went out through the outbox, and a password
        expect(page.get_by_test_id("signup-verify-form")).to_be_visible()
        page.get_by_test_id("code-input").fill(code_sent_to(customer.mobile_phone))
        page.fill("#id_password1", PASSWORD)
        page.fill("#id_password2", PASSWORD)
        page.get_by_test_id("signup-verify-submit").click()

        # home: the account is bound to the new sign-in and shown cut off
        expect(page).to_have_url(f"{base}/portal/")
        profile = PortalProfile.objects.get(mobile_phone=national(customer.mobile_phone))
        assert list(
            AccountBinding.objects.filter(user=profile.user).values_list("account_id", flat=True)
        ) == [account.pk]
        card = page.get_by_test_id("account-card")
        expect(card).to_have_count(1)
        expect(card.get_by_test_id("state")).to_have_attribute("data-state", "tripped")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

        # pay 200.00 online from the card
        card.locator(f"a[href='/portal/accounts/{account.number}/pay/']").click()
        expect(page.get_by_test_id("supply-state")).to_have_attribute("data-state", "tripped")
        page.locator("label[for=id_quick_2]").click()  # the third quick amount: 200.00
        page.get_by_test_id("pay-submit").click()
        expect(page.get_by_test_id("sim-cashier")).to_be_visible()
        page.get_by_test_id("pay").click()

        # the order page follows the payment until the meter confirms the close
        order = GatewayOrder.objects.get()
        expect(page).to_have_url(f"{base}/portal/orders/{order.order_no}/")
        restore = page.get_by_test_id("restore-status")
        expect(restore).to_have_attribute("data-status", "restored", timeout=60_000)
        payment = Payment.objects.get(channel="online", external_id=order.order_no)
        assert payment.amount == Decimal("200.00")
        close = RemoteCommand.objects.get(pk=payment.restore_command_id)
        assert close.action == CommandAction.CLOSE and close.status == CommandStatus.CONFIRMED
        assert fleet.registers(ADDRESS)["relay_open"] is False

        # and home no longer says cut off
        page.goto(f"{base}/portal/")
        expect(page.get_by_test_id("account-card").get_by_test_id("state")).not_to_have_attribute(
            "data-state", "tripped"
        )


def test_the_usage_page_draws_its_charts(live_server, page, flat_tariff, make_prepaid, make_portal_user):  # noqa: F811
    base = live_server.url
    account, meter = make_prepaid(flat_tariff)
    MeterInstallation.objects.filter(meter=meter).update(installed_at=timezone.now() - timedelta(days=30))
    today = timezone.localdate()
    # freezes on the last 8 days, 3.25 kWh apart: 7 days of use of 3.25 kWh each
    for n in range(8):
        ingest(meter, today - timedelta(days=7 - n), Decimal("100.00") + Decimal("3.25") * n)
    page.set_viewport_size(PHONE)
    sign_in(page, base, make_portal_user(account))

    page.goto(f"{base}/portal/accounts/{account.number}/usage/")
    daily = page.get_by_test_id("daily-chart")
    monthly = page.get_by_test_id("monthly-chart")
    expect(daily).to_have_attribute("data-rendered", "1")
    expect(monthly).to_have_attribute("data-rendered", "1")
    # ECharts drew a canvas in each container, sized to the phone's width
    for chart in (daily, monthly):
        box = chart.locator("canvas").first.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 100
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    # what the daily chart holds: seven days of 3.25 kWh (the series data, from the instance)
    values = page.evaluate(
        """() => {
            const chart = echarts.getInstanceByDom(document.querySelector('[data-testid=daily-chart]'));
            const data = chart.getOption().series.map(s => s.data).flat();
            return data.filter(v => v !== null && v !== undefined);
        }"""
    )
    nonzero = [Decimal(str(v)) for v in values if v]
    assert nonzero == [Decimal("3.25")] * 7
