"""The PyPI package ``dlt645`` (3.2.0) as an independent DL/T 645 peer for head-end tests.

Its threaded TCP meter simulator answers reads from its own data map; we extend it (as
researched in the dlt645 memo, section 2) with remote control 0x1C and a live status
word 3, because the package has neither. Quirks handled here:

* The package treats address strings as wire-order hex, so meter ``123456789012`` is
  configured with the wire bytes ``12 90 78 56 34 12`` (``bytes.fromhex(addr)[::-1]``).
* Each simulator deep-copies a 20,000-entry registry (seconds each): we build them with a
  slim copy holding only the identifiers the head-end reads, plus remaining balance
  (00 90 02 00), which the package lacks; it is then set through ``set_00`` like any
  energy register.
* Its passwords are wire bytes too, with the level in the first byte: our default
  remote-control password 02 000000 is set with ``set_password("02000000")``.
* Importing the package removes loguru's default handler; its own logging is off by
  default and we keep it off.
"""

from __future__ import annotations

import copy
import struct
import threading
from datetime import datetime
from decimal import Decimal

import dlt645
import dlt645.service.serversvc.server_service as server_service
import pytest
from dlt645 import DLT645Protocol, MeterServerService
from dlt645.model.data.define import DIMap
from dlt645.model.types.data_type import DataItem
from dlt645.model.types.dlt645_type import Demand, ErrorCode

from metering.headend import dlt645 as codec

dlt645.disable_logging()

METER_ADDRESS = "123456789012"
REGISTER_VALUES = {  # what the package meter is configured with (kWh / kvarh)
    codec.DI_FORWARD_TOTAL: Decimal("1234.56"),
    codec.DI_FORWARD_SHARP: Decimal("100.01"),
    codec.DI_FORWARD_PEAK: Decimal("200.02"),
    codec.DI_FORWARD_FLAT: Decimal("300.03"),
    codec.DI_FORWARD_VALLEY: Decimal("634.50"),
    codec.DI_REVERSE_TOTAL: Decimal("12.34"),
    codec.DI_REACTIVE_TOTAL: Decimal("56.78"),
}
MAX_DEMAND_KW = Decimal("7.5")
REMAINING_BALANCE = Decimal("88.88")
SLIM_DIS = [*REGISTER_VALUES, codec.DI_MAX_DEMAND, codec.DI_STATUS_WORD_3]


def wire_address(address: str) -> bytes:
    """Standard wire order (low byte first), the form the package must be given."""
    return bytes.fromhex(address)[::-1]


def slim_data_map(*, with_balance: bool) -> dict:
    data_map = {di: copy.deepcopy(DIMap[di]) for di in SLIM_DIS}
    if with_balance:
        data_map[codec.DI_REMAINING_BALANCE] = DataItem(
            di=codec.DI_REMAINING_BALANCE,
            name="当前剩余金额",
            data_format="XXXXXX.XX",
            value=0,
            unit="元",
            min_value=0,
            max_value=799999.99,
        )
    return data_map


class RemoteControlMeter(MeterServerService):
    """``MeterServerService`` + remote control 0x1C + status word 3 from live relay flags
    (bit 4 relay open, bit 6 last command was trip, bit 7 alarm, bit 12 keep-power). The
    stock path keeps status word 3 as a decimal-digit string and cannot serve hex digits."""

    def __init__(self, server, *args, **kwargs):
        super().__init__(server, *args, **kwargs)
        self._lock = threading.Lock()  # TcpServer runs one thread per connection
        self.controls_received: list[int] = []
        self.reset_relay()

    def reset_relay(self) -> None:
        self.relay_open = False
        self.relay_command_trip = False
        self.alarm = False
        self.keep_power = False

    def status_word_3(self) -> int:
        word = 0
        word |= codec.STATUS3_RELAY_OPEN if self.relay_open else 0
        word |= codec.STATUS3_RELAY_COMMAND_OPEN if self.relay_command_trip else 0
        word |= codec.STATUS3_PRETRIP_ALARM if self.alarm else 0
        word |= codec.STATUS3_KEEP_POWER if self.keep_power else 0
        return word

    def _reply(self, control: int, data: bytes = b"") -> bytearray:
        return DLT645Protocol.build_frame(bytes(self.address), control, data)

    def _error(self, control: int, error: int) -> bytearray:
        return self._reply(control | 0xC0, bytes([error]))

    def handle_request(self, frame):
        mine = bytes(frame.addr) == bytes(self.address)
        if frame.ctrl_code == codec.REMOTE_CONTROL:
            if not mine:
                return None  # a real meter stays silent for another meter's command
            with self._lock:
                self.controls_received.append(frame.data[8] if len(frame.data) > 8 else -1)
                return self._remote_control(frame)
        if (
            frame.ctrl_code == codec.READ_DATA
            and mine
            and bytes(frame.data[:4]) == struct.pack("<I", codec.DI_STATUS_WORD_3)
        ):
            with self._lock:
                return self._reply(0x91, bytes(frame.data[:4]) + struct.pack("<H", self.status_word_3()))
        return super().handle_request(frame)

    def _remote_control(self, frame):
        data = bytes(frame.data)  # the package codec has removed the 0x33 offset
        if len(data) != 16:
            return self._error(frame.ctrl_code, ErrorCode.OtherError)
        if not self.password_manager.check_password(bytearray(data[0:4])):
            return self._error(frame.ctrl_code, ErrorCode.AuthFailed)
        try:
            ss, mm, hh, day, month, year = (int(f"{b:02X}") for b in data[10:16])
            valid_until = datetime(2000 + year, month, day, hh, mm, ss)
        except ValueError:
            return self._error(frame.ctrl_code, ErrorCode.OtherError)
        if valid_until < (self.time or datetime.now()):
            return self._error(frame.ctrl_code, ErrorCode.OtherError)
        action = data[8]
        if action == 0x1A:  # trip
            if self.keep_power:
                return self._error(frame.ctrl_code, ErrorCode.OtherError)
            self.relay_open = self.relay_command_trip = True
        elif action == 0x1B:  # close allowed: the customer closes by hand
            self.relay_command_trip = False
        elif action == 0x1C:  # direct close
            self.relay_open = self.relay_command_trip = False
        elif action in (0x2A, 0x2B):
            self.alarm = action == 0x2A
        elif action in (0x3A, 0x3B):
            self.keep_power = action == 0x3A
        else:
            return self._error(frame.ctrl_code, ErrorCode.OtherError)
        return self._reply(0x9C)


def start_package_meter(
    address: str = METER_ADDRESS,
    *,
    values: dict[int, Decimal] | None = None,
    balance: Decimal | None = REMAINING_BALANCE,
    password: str = "02000000",  # noqa: S107 - level 02, P0P1P2 000000: the adapter's default
    on_connect=None,
    on_disconnect=None,
) -> RemoteControlMeter:
    """A started package simulator for one meter, configured through the package's API."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(server_service, "clone_data_map", lambda: slim_data_map(with_balance=balance is not None))
        meter = RemoteControlMeter.new_tcp_server(
            "127.0.0.1", 0, timeout=2.0, on_connect=on_connect, on_disconnect=on_disconnect
        )
    meter.set_address(wire_address(address))
    assert meter.set_password(password)
    for di, value in (values or REGISTER_VALUES).items():
        assert meter.set_00(di, float(value)), hex(di)
    assert meter.set_01(codec.DI_MAX_DEMAND, Demand(float(MAX_DEMAND_KW), datetime(2026, 11, 1, 10, 45)))
    if balance is not None:
        assert meter.set_00(codec.DI_REMAINING_BALANCE, float(balance))
    assert meter.start()
    return meter


def endpoint_of(meter: RemoteControlMeter) -> str:
    return f"127.0.0.1:{meter.server.port}"


@pytest.fixture(scope="session")
def package_meter_session():
    meter = start_package_meter()
    yield meter
    meter.stop()


@pytest.fixture
def package_meter(package_meter_session):
    """The shared package meter with its relay closed, no alarm, no keep-power."""
    package_meter_session.reset_relay()
    package_meter_session.controls_received.clear()
    return package_meter_session


@pytest.fixture(scope="session")
def package_fleet():
    """Four more package meters, one per server (the package simulates one meter each)."""
    meters = [
        start_package_meter(
            f"4100000000{i:02d}",
            values={di: value + i for di, value in REGISTER_VALUES.items()},
            balance=None if i % 2 else Decimal(i),
        )
        for i in range(1, 5)
    ]
    yield meters
    for meter in meters:
        meter.stop()
