"""End to end on the running parts (issue 5): a tripped prepaid customer pays online through
the simulated gateway, the signed notification posts the payment, the policy sends one close,
a real Celery worker dispatches it to the simulated meter over DL/T 645 TCP, the relay
closes, and the time from payment to confirmed close is recorded and shown."""

import pytest
from django.test import Client
from django.urls import reverse

from billing.models import PolicyAction, PolicyDecision
from metering.models import CommandStatus, RemoteCommand
from payments.models import GatewayOrder, Payment
from payments.services.latency import restore_latency
from payments.services.online import online_order_create
from tests.celery_worker import wait_until
from tests.e2e import fleet_of_one, tripped_on_simulator

ADDRESS = "930000000002"
pytestmark = [
    pytest.mark.usefixtures("fast_password_hashing", "english"),
    pytest.mark.celery_worker,
    pytest.mark.django_db(transaction=True),
]


def test_a_tripped_customer_pays_online_and_the_simulated_meter_closes(make_customer, staff):
    fleet = fleet_of_one(ADDRESS)
    with tripped_on_simulator(fleet, ADDRESS, make_customer()) as run:
        order, pay_url = online_order_create(account_number=run.service_point.account.number, amount="200.00")
        cashier = Client()
        assert cashier.get(pay_url).status_code == 200
        cashier.post(pay_url, {"action": "pay"})  # the gateway notifies us, signed
        order.refresh_from_db()
        assert order.status == GatewayOrder.Status.PAID
        payment = Payment.objects.get(channel="online", external_id=order.order_no)
        assert payment.restore_command_id is not None
        closed = wait_until(
            lambda: RemoteCommand.objects.filter(
                pk=payment.restore_command_id, status=CommandStatus.CONFIRMED
            ).exists(),
            timeout=60,
        )
        assert closed
    assert fleet.registers(ADDRESS)["relay_open"] is False
    assert fleet.control_count(ADDRESS, "close") == 1
    assert PolicyDecision.objects.filter(account=order.account, action=PolicyAction.CLOSE).count() == 1
    # the time from payment to the confirmed close is recorded and shown
    seconds = restore_latency(Payment.objects.select_related("restore_command").get(pk=payment.pk))
    assert seconds is not None and 0 <= seconds < 60
    staff_client = Client()
    staff_client.force_login(staff["auditor"])
    html = staff_client.get(reverse("payments:restore-latency")).content.decode()
    assert 'data-testid="restored-count">1<' in html and order.account.number in html
