"""Fixtures for the remote-command tests (tests/metering/conftest.py belongs to the reading
tests): a small simulated fleet served on a loopback port, meters in the database that
point at it, and a recorder for dispatch scheduling.

Import them into a test module with ``from tests.metering.command_fixtures import *``.
"""

import socket
from decimal import Decimal

import pytest

from metering.models import CostControlMode, Meter, MeterStatus, Terminal
from metering.simulator.fleet import Fleet, MeterSpec
from metering.simulator.server import run_in_thread

REMOTE_A = "930000000001"
REMOTE_B = "930000000002"
LOCAL_EMPTY = "930000000003"  # local cost control, balance used up, tripped itself
KEEP_POWER = "930000000004"  # keep-power (保电) set in the meter
NOT_IN_FLEET = "930000000099"  # nobody answers for this address

__all__ = [
    "KEEP_POWER",
    "LOCAL_EMPTY",
    "NOT_IN_FLEET",
    "REMOTE_A",
    "REMOTE_B",
    "closed_endpoint",
    "fleet",
    "make_meter",
    "scheduled",
    "simulator",
]


@pytest.fixture
def fleet():
    """Four meters that answer every frame (no read failures, no clock drift)."""
    specs = [
        MeterSpec(address=REMOTE_A),
        MeterSpec(address=REMOTE_B),
        MeterSpec(
            address=LOCAL_EMPTY,
            cost_control_mode="local",
            remaining_balance=Decimal("0"),
            relay_open=True,
        ),
        MeterSpec(address=KEEP_POWER, keep_power=True),
    ]
    return Fleet.from_specs(
        specs,
        seed=7,
        failure_rate=0.0,
        clock_drift_share=0.0,
        event_share=0.0,
        pv_share=0.0,
        low_balance_share=0.0,
    )


@pytest.fixture
def simulator(fleet):
    """The fleet on a loopback port in a thread of the test process (real TCP)."""
    with run_in_thread(fleet) as handle:
        yield handle


@pytest.fixture
def closed_endpoint():
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def make_meter(areas):
    """An installed meter in a 青溪 (QX) transformer area, reached through a terminal at
    ``endpoint`` (or through METERING_DEFAULT_ENDPOINT when ``endpoint`` is None)."""

    def make(address, *, endpoint=None, area_key="qx_s1", **fields):
        area = areas[area_key]
        terminal = None
        if endpoint is not None:
            terminal = Terminal.objects.create(
                address=f"T{address}", endpoint=endpoint, transformer_area=area
            )
        values = {
            "asset_number": f"AS{address}",
            "comm_address": address,
            "manufacturer": "威胜",
            "model": "DDZY102",
            "status": MeterStatus.INSTALLED,
            "cost_control_mode": CostControlMode.REMOTE,
            "transformer_area": area,
            "terminal": terminal,
        }
        values.update(fields)
        return Meter.objects.create(**values)

    return make


@pytest.fixture
def scheduled(monkeypatch):
    """Dispatch scheduling as (command id, at) calls instead of messages to the broker."""
    calls = []
    monkeypatch.setattr(
        "metering.services.commands._schedule_dispatch",
        lambda command_id, *, at=None: calls.append((command_id, at)),
    )
    return calls
