"""End to end on real parts: a simulated meter read over DL/T 645 TCP, the reading stored,
rated by a real Celery worker (through metering's hook, not an import), the policy trips the
meter (the worker dispatches the command and the simulated relay opens), and a payment
closes it again, once."""

from decimal import Decimal

import pytest

from billing.models import AccountBilling, CostControlState, PolicyAction, PolicyDecision
from billing.services.accounts import payment_apply
from metering.models import CommandAction, CommandStatus, RemoteCommand
from tests.celery_worker import wait_until
from tests.e2e import fleet_of_one, tripped_on_simulator

ADDRESS = "930000000001"
pytestmark = [
    pytest.mark.usefixtures("fast_password_hashing", "english"),
    pytest.mark.celery_worker,
    pytest.mark.django_db(transaction=True),
]


def test_a_reading_trips_the_simulated_meter_and_a_payment_closes_it(make_customer):
    fleet = fleet_of_one(ADDRESS)
    with tripped_on_simulator(fleet, ADDRESS, make_customer()) as run:
        sp, meter = run.service_point, run.meter
        state = AccountBilling.objects.get(pk=sp.account_id)
        assert state.state == CostControlState.TRIPPED
        # at least 100 kWh since the 900 kWh cursor, at 0.60 yuan
        assert state.balance <= Decimal("3.00") - Decimal("60.00")

        payment_apply(account_id=sp.account_id, amount="200.00", idempotency_key="pay-1", source_ref="pay-1")
        # the same payment delivered twice
        payment_apply(account_id=sp.account_id, amount="200.00", idempotency_key="pay-1", source_ref="pay-1")
        closed = wait_until(
            lambda: RemoteCommand.objects.filter(
                meter=meter, action=CommandAction.CLOSE, status=CommandStatus.CONFIRMED
            ).exists(),
            timeout=60,
        )
        assert closed
    assert fleet.registers(ADDRESS)["relay_open"] is False
    assert RemoteCommand.objects.filter(meter=meter, action=CommandAction.CLOSE).count() == 1
    assert fleet.control_count(ADDRESS, "close") == 1
    trip = PolicyDecision.objects.get(account=sp.account, action=PolicyAction.TRIP)
    assert trip.trigger == "rating" and trip.command.status == CommandStatus.CONFIRMED
    assert PolicyDecision.objects.filter(account=sp.account, action=PolicyAction.CLOSE).count() == 1
