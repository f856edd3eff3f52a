"""The running parts end to end, shared by the billing and payments tests: a prepaid customer
on a remote cost-control meter served by the simulated fleet over DL/T 645 TCP, nearly out of
money and already warned; a real Celery worker; a collection run whose reading is rated by
the worker and trips the meter (confirmed by read-back on the simulated relay)."""

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from billing.models import (
    AccountBilling,
    AccountTariff,
    CostControlPolicy,
    CostControlState,
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
from tests.celery_worker import celery_worker, wait_until


def fleet_of_one(address: str) -> Fleet:
    """One meter at 1000.00 kWh at yesterday's midnight, answering every frame."""
    midnight = timezone.make_aware(datetime.combine(timezone.localdate() - timedelta(days=1), time.min))
    return Fleet.from_specs(
        [MeterSpec(address=address, registers={"forward_total": Decimal("1000.00")}, registers_at=midnight)],
        seed=11,
        failure_rate=0.0,
        clock_drift_share=0.0,
        event_share=0.0,
        pv_share=0.0,
        low_balance_share=0.0,
    )


@dataclass
class Tripped:
    service_point: object
    meter: Meter
    worker: object  # the Celery worker process


@contextmanager
def tripped_on_simulator(fleet: Fleet, address: str, customer):
    """Set the customer up, start the simulator and a worker, collect, and wait for the trip
    to be confirmed; yields while the simulator and worker still run."""
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
    sp = customer.service_points.get()
    AccountTariff.objects.create(account=sp.account, tariff=tariff, effective_from="2020-01-01")
    with run_in_thread(fleet) as simulator:
        terminal = Terminal.objects.create(
            address="TE2E", endpoint=simulator.endpoint_for(address), transformer_area=sp.transformer_area
        )
        meter = Meter.objects.create(
            asset_number="ASE2E",
            comm_address=address,
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
            assert fleet.registers(address)["relay_open"] is True
            yield Tripped(service_point=sp, meter=meter, worker=proc)
