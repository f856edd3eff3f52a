"""End to end on the running parts (issue 5): a tripped prepaid customer pays online through
the simulated gateway, the signed notification posts the payment, the policy sends one close,
a real Celery worker dispatches it to the simulated meter over DL/T 645 TCP, the relay
closes, and the time from payment to confirmed close is recorded and shown."""

from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.models import (
    AccountBilling,
    AccountTariff,
    CostControlPolicy,
    CostControlState,
    PolicyAction,
    PolicyDecision,
    RatingCursor,
    Tariff,
    TariffVersion,
)
from billing.services.accounts import payment_apply
from metering.models import (
    CommandAction,
    CommandStatus,
    CostControlMode,
    Meter,
    MeterInstallation,
    MeterStatus,
    RemoteCommand,
    Terminal,
)
from metering.services.collection import collection_run
from metering.simulator import Fleet, MeterSpec, run_in_thread
from payments.models import GatewayOrder, Payment
from payments.services.latency import restore_latency
from payments.services.online import online_order_create
from tests.celery_worker import celery_worker, wait_until

ADDRESS = "930000000002"
pytestmark = [
    pytest.mark.usefixtures("fast_password_hashing", "english"),
    pytest.mark.celery_worker,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def fleet():
    midnight = timezone.make_aware(datetime.combine(timezone.localdate() - timedelta(days=1), time.min))
    return Fleet.from_specs(
        [MeterSpec(address=ADDRESS, registers={"forward_total": Decimal("1000.00")}, registers_at=midnight)],
        seed=11,
        failure_rate=0.0,
        clock_drift_share=0.0,
        event_share=0.0,
        pv_share=0.0,
        low_balance_share=0.0,
    )


def test_a_tripped_customer_pays_online_and_the_simulated_meter_closes(fleet, make_customer, staff):
    from config.celery import app

    now = timezone.localtime()
    # Trips allowed now: the night window is put an hour ahead, holidays do not count.
    policy = CostControlPolicy.objects.create(
        code="E2E",
        name="e2e",
        warning1_threshold=Decimal("30"),
        warning2_threshold=Decimal("10"),
        trip_threshold=Decimal("0"),
        close_threshold=Decimal("5"),
        required_warning=2,
        grace_hours=Decimal("1"),
        night_start=(now + timedelta(hours=1)).time().replace(second=0, microsecond=0),
        night_end=(now + timedelta(hours=2)).time().replace(second=0, microsecond=0),
        no_trip_on_holidays=False,
    )
    tariff = Tariff.objects.create(code="E2E-FLAT", name="flat", category="residential")
    TariffVersion.objects.create(tariff=tariff, effective_from="2020-01-01", price_flat=Decimal("0.600000"))
    customer = make_customer()
    sp = customer.service_points.get()
    AccountTariff.objects.create(account=sp.account, tariff=tariff, effective_from="2020-01-01")
    with run_in_thread(fleet) as simulator:
        terminal = Terminal.objects.create(
            address="TE2E", endpoint=simulator.endpoint_for(ADDRESS), transformer_area=sp.transformer_area
        )
        meter = Meter.objects.create(
            asset_number="ASE2E",
            comm_address=ADDRESS,
            manufacturer="威胜",
            model="DDZY102",
            status=MeterStatus.INSTALLED,
            cost_control_mode=CostControlMode.REMOTE,
            transformer_area=sp.transformer_area,
            terminal=terminal,
            service_point=sp,
        )
        MeterInstallation.objects.create(
            meter=meter,
            service_point=sp,
            transformer_area=sp.transformer_area,
            installed_at=timezone.now() - timedelta(days=30),
            initial_registers={"forward_total": "0"},
        )
        # Rated up to 900 kWh yesterday; warned two days ago; 3.00 yuan left.
        RatingCursor.objects.create(
            meter=meter,
            account=sp.account,
            read_date=timezone.localdate() - timedelta(days=1),
            reading_id=0,
            total=Decimal("900.00"),
        )
        AccountBilling.objects.create(
            account=sp.account,
            policy=policy,
            state=CostControlState.WARNING2,
            warning2_at=timezone.now() - timedelta(days=2),
        )
        payment_apply(account_id=sp.account_id, amount="3.00", idempotency_key="open", source_ref="open")

        app.control.purge()  # messages left in this Redis database by earlier runs
        with celery_worker(database_name=connection.settings_dict["NAME"]) as proc:
            result = collection_run()  # reads the meter over TCP and stores the reading
            assert result.accepted == 1
            tripped = wait_until(
                lambda: RemoteCommand.objects.filter(
                    meter=meter, action=CommandAction.TRIP, status=CommandStatus.CONFIRMED
                ).exists(),
                timeout=60,
            )
            assert tripped, proc.stdout.read()[-4000:] if proc.poll() is not None else "no confirmed trip"
            assert fleet.registers(ADDRESS)["relay_open"] is True
            state = AccountBilling.objects.get(pk=sp.account_id)
            assert state.state == CostControlState.TRIPPED
            # at least 100 kWh since the 900 kWh cursor, at 0.60 yuan
            assert state.balance <= Decimal("3.00") - Decimal("60.00")

            order, pay_url = online_order_create(account_number=sp.account.number, amount="200.00")
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
        # the time from payment to the confirmed close is recorded and shown
        payment.refresh_from_db()
        seconds = restore_latency(Payment.objects.select_related("restore_command").get(pk=payment.pk))
        assert seconds is not None and 0 <= seconds < 60
        staff_client = Client()
        staff_client.force_login(staff["auditor"])
        html = staff_client.get(reverse("payments:restore-latency")).content.decode()
        assert 'data-testid="restored-count">1<' in html and order.account.number in html
        trip = PolicyDecision.objects.get(account=sp.account, action=PolicyAction.TRIP)
        assert trip.trigger == "rating"
