"""The meter-fleet simulator over real loopback sockets.

Requests are built with our codec (metering/headend/dlt645.py) and, for one request/reply
pair, written out by hand from the standard: address low byte first, data bytes +33h,
CS = sum of the bytes from the first 68h through the data, mod 256.

Most fleets here run on a frozen clock (speed 0) starting at START, so answers are exact and
time moves only when a test calls ``fleet.advance``.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from metering.headend import dlt645
from metering.simulator import Fleet, MeterSpec, SimulatorServer, run_in_thread
from metering.simulator.fleet import STATUS7_COVER_OPEN, STATUS7_POWER_LOSS, epoch_to_local

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = datetime(2025, 7, 15, 10, 0, tzinfo=SHANGHAI)  # a summer Tuesday, peak period
START_LOCAL = START.replace(tzinfo=None)

HAND_ADDRESS = "123456789012"
REMOTE = "000000000101"
LOCAL = "000000000102"
PROTECTED = "000000000103"
NEAR_WRAP = "000000000104"


def deadline(fleet: Fleet, minutes: int = 10) -> datetime:
    """A remote-control validity deadline ``minutes`` ahead of the meters' (frozen) clock."""
    return epoch_to_local(fleet.clock.wall()) + timedelta(minutes=minutes)


def run(test):
    """Run an async test body on a fresh event loop (no pytest-asyncio needed)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper


def frozen_fleet(*specs: MeterSpec, **options) -> Fleet:
    options.setdefault("failure_rate", 0.0)
    options.setdefault("clock_drift_share", 0.0)
    options.setdefault("event_share", 0.0)
    return Fleet.from_specs(specs, seed=11, start=START, speed=0, **options)


def standard_fleet(**options) -> Fleet:
    return frozen_fleet(
        MeterSpec(HAND_ADDRESS, registers={"forward_total": Decimal("12345.67")}),
        MeterSpec(REMOTE, category="commercial", capacity_kva=Decimal("50")),
        MeterSpec(
            LOCAL,
            cost_control_mode="local",
            remaining_balance=Decimal("1.00"),
            unit_price=Decimal("0.5000"),
            capacity_kva=Decimal("8"),
        ),
        MeterSpec(PROTECTED),
        MeterSpec(NEAR_WRAP, registers={"forward_total": Decimal("999999.50")}),
        **options,
    )


class Link:
    """One TCP connection to the simulator, reading whole frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fleet: Fleet | None):
        self.reader, self.writer = reader, writer
        self.fleet = fleet
        self.buffer = bytearray()

    @classmethod
    async def open(cls, port: int, fleet: Fleet | None = None) -> Link:
        return cls(*await asyncio.open_connection("127.0.0.1", port), fleet)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def raw_frame(self, timeout: float = 2.0) -> bytes:
        """The next frame's bytes from its 68h (the FE preamble is dropped)."""
        async with asyncio.timeout(timeout):
            while True:
                start = self.buffer.find(0x68)
                if start >= 0 and len(self.buffer) >= start + 10:
                    end = start + 12 + self.buffer[start + 9]
                    if len(self.buffer) >= end:
                        assert set(self.buffer[:start]) <= {0xFE}, "only FE may precede a reply"
                        frame = bytes(self.buffer[start:end])
                        del self.buffer[:end]
                        return frame
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise EOFError("connection closed")
                self.buffer += chunk

    async def frame(self, timeout: float = 2.0) -> dlt645.Frame:
        return dlt645.decode(await self.raw_frame(timeout))

    async def ask(self, request: dlt645.Frame, timeout: float = 2.0) -> dlt645.Frame:
        await self.send(dlt645.encode(request))
        return await self.frame(timeout)

    async def read(self, address: str, di: int) -> dlt645.Frame:
        reply = await self.ask(dlt645.read_request(address, di))
        assert reply.address == address
        return reply

    async def control(self, address: str, action: str, valid_until: datetime | None = None) -> dlt645.Frame:
        valid_until = valid_until or deadline(self.fleet)
        return await self.ask(dlt645.control_request(address, action, valid_until=valid_until))

    async def silent(self, wait: float = 0.3) -> bool:
        """True if nothing arrives within ``wait`` seconds."""
        if self.buffer:
            return False
        try:
            async with asyncio.timeout(wait):
                chunk = await self.reader.read(65536)
        except TimeoutError:
            return True
        self.buffer += chunk
        return False

    async def replies_until_quiet(self, quiet: float = 0.5) -> list[bytes]:
        frames = []
        while True:
            try:
                frames.append(await self.raw_frame(timeout=quiet))
            except TimeoutError:
                return frames

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def energy(reply: dlt645.Frame) -> Decimal:
    assert reply.control == 0x91, f"expected a read reply, got {reply.control:02X}h"
    return dlt645.decode_energy(reply.data[4:8])


def status_word(reply: dlt645.Frame) -> int:
    assert reply.control == 0x91
    return int.from_bytes(reply.data[4:6], "little")


# --- bytes on the wire ----------------------------------------------------------------------


@run
async def test_read_total_energy_hand_checked_bytes():
    # Request for meter 123456789012, DI 00 01 00 00 (forward active total):
    #   address on the wire low byte first: 12 90 78 56 34 12
    #   DI0..DI3 = 00 00 01 00, +33h each: 33 33 34 33
    #   CS = 68+12+90+78+56+34+12+68 (= 646) + 11 + 04 + 33+33+34+33 (= 205) = 872 = 368h → 68h
    request = bytes.fromhex("68 12 90 78 56 34 12 68 11 04 33 33 34 33 68 16")
    assert request == dlt645.encode(
        dlt645.read_request(HAND_ADDRESS, dlt645.DI_FORWARD_TOTAL), preamble=False
    )
    # Reply, register 12345.67 kWh: BCD 01 23 45 67 low byte first 67 45 23 01, +33h:
    # 9A 78 56 34. CS = 646 + 91 + 08 + 205 + (9A+78+56+34 = 412) = 1416 = 588h → 88h.
    expected = bytes.fromhex("FE FE FE FE 68 12 90 78 56 34 12 68 91 08 33 33 34 33 9A 78 56 34 88 16")
    async with SimulatorServer(standard_fleet(), port=0) as server:
        link = await Link.open(server.ports[0], server.fleet)
        await link.send(request)
        async with asyncio.timeout(2):
            raw = await link.reader.readexactly(len(expected))
        assert raw == expected
        assert energy(dlt645.decode(raw)) == Decimal("12345.67")
        await link.close()


@run
async def test_read_total_energy_with_the_codec_matches_the_fleet():
    fleet = standard_fleet()
    async with SimulatorServer(fleet, port=0) as server:
        link = await Link.open(server.ports[0], server.fleet)
        for address in (REMOTE, LOCAL, PROTECTED):
            reply = await link.read(address, dlt645.DI_FORWARD_TOTAL)
            assert energy(reply) == fleet.registers(address)["forward_total"]
        rates = [
            energy(await link.read(REMOTE, di))
            for di in (
                dlt645.DI_FORWARD_SHARP,
                dlt645.DI_FORWARD_PEAK,
                dlt645.DI_FORWARD_FLAT,
                dlt645.DI_FORWARD_VALLEY,
            )
        ]
        total = energy(await link.read(REMOTE, dlt645.DI_FORWARD_TOTAL))
        assert sum(rates) == total  # initial split: the rates add up to the total
        reactive = energy(await link.read(REMOTE, dlt645.DI_REACTIVE_TOTAL))
        assert Decimal("0.25") * total < reactive < Decimal("0.7") * total  # pf 0.85-0.95
        demand = await link.read(REMOTE, dlt645.DI_MAX_DEMAND)
        assert dlt645.decode_demand(demand.data[4:7]) == fleet.registers(REMOTE)["max_demand_kw"] > 0
        stamp = dlt645.bcd_decode(demand.data[7:12])  # YYMMDDhhmm, this month
        assert str(stamp).startswith("2507")
        await link.close()


@run
async def test_fe_preambles_split_frames_and_several_frames_in_one_write():
    async with SimulatorServer(standard_fleet(), port=0) as server:
        link = await Link.open(server.ports[0], server.fleet)
        request = dlt645.encode(dlt645.read_request(HAND_ADDRESS, dlt645.DI_FORWARD_TOTAL))
        assert request.startswith(b"\xfe\xfe\xfe\xfe")
        for byte in request:  # one byte per TCP write
            await link.send(bytes([byte]))
            await asyncio.sleep(0.002)
        assert energy(await link.frame()) == Decimal("12345.67")
        # Three frames in one write, the last one cut in two.
        frames = [
            dlt645.encode(dlt645.read_request(HAND_ADDRESS, dlt645.DI_FORWARD_TOTAL), preamble=False),
            dlt645.encode(dlt645.read_request(REMOTE, dlt645.DI_STATUS_WORD_3)),
            dlt645.encode(dlt645.read_request(LOCAL, dlt645.DI_REMAINING_BALANCE)),
        ]
        stream = b"".join(frames)
        await link.send(stream[:-5])
        await asyncio.sleep(0.05)
        await link.send(stream[-5:])
        first, second, third = [await link.frame() for _ in range(3)]
        assert (first.address, second.address, third.address) == (HAND_ADDRESS, REMOTE, LOCAL)
        assert dlt645.decode_energy(third.data[4:8]) == Decimal("1.00")  # the balance, yuan
        await link.close()


@run
async def test_garbage_is_dropped_and_a_malformed_frame_gets_no_answer():
    async with SimulatorServer(standard_fleet(), port=0) as server:
        link = await Link.open(server.ports[0], server.fleet)
        good = dlt645.encode(dlt645.read_request(HAND_ADDRESS, dlt645.DI_FORWARD_TOTAL))
        await link.send(b"\x00\x12garbage\xff\x68\x01\x02" + good)  # a stray 68h among the noise
        assert energy(await link.frame()) == Decimal("12345.67")

        bad_checksum = bytearray(good)
        bad_checksum[-2] ^= 0xFF
        await link.send(bytes(bad_checksum))
        assert await link.silent()
        bad_end = bytearray(good)
        bad_end[-1] = 0x17
        await link.send(bytes(bad_end))
        assert await link.silent()
        # The connection is still good.
        assert energy(await link.ask(dlt645.read_request(HAND_ADDRESS, dlt645.DI_FORWARD_TOTAL))) == Decimal(
            "12345.67"
        )
        assert server.stats["malformed"] >= 2
        await link.close()


@run
async def test_unknown_address_is_silent_and_unknown_di_is_refused():
    async with SimulatorServer(standard_fleet(), port=0) as server:
        link = await Link.open(server.ports[0], server.fleet)
        await link.send(dlt645.encode(dlt645.read_request("999888777666", dlt645.DI_FORWARD_TOTAL)))
        assert await link.silent()

        reply = await link.ask(dlt645.read_request(REMOTE, 0x02010100))  # voltage: not simulated
        assert (reply.control, reply.data) == (0xD1, b"\x02")  # error reply, "no data requested"
        await link.send(dlt645.encode(dlt645.read_request(REMOTE, 0x02010100)))
        raw = await link.raw_frame()
        assert raw[8:11] == bytes([0xD1, 0x01, 0x35])  # on the wire: 02h + 33h
        # The remaining balance exists only on local cost-control meters.
        reply = await link.ask(dlt645.read_request(REMOTE, dlt645.DI_REMAINING_BALANCE))
        assert (reply.control, reply.data) == (0xD1, b"\x02")
        await link.close()


# --- relays ----------------------------------------------------------------------------------


@run
async def test_trip_opens_the_relay_and_energy_stops_until_close():
    fleet = standard_fleet()
    async with SimulatorServer(fleet, port=0) as server:
        link = await Link.open(server.ports[0], fleet)
        before = energy(await link.read(REMOTE, dlt645.DI_FORWARD_TOTAL))
        fleet.advance(3600)
        running = energy(await link.read(REMOTE, dlt645.DI_FORWARD_TOTAL))
        assert running > before

        reply = await link.control(REMOTE, "trip")
        assert (reply.control, reply.data) == (0x9C, b"")
        word = status_word(await link.read(REMOTE, dlt645.DI_STATUS_WORD_3))
        assert word & dlt645.STATUS3_RELAY_OPEN and word & dlt645.STATUS3_RELAY_COMMAND_OPEN
        fleet.advance(6 * 3600)
        assert energy(await link.read(REMOTE, dlt645.DI_FORWARD_TOTAL)) == running  # nothing accrues

        reply = await link.control(REMOTE, "close")
        assert reply.control == 0x9C
        assert not status_word(await link.read(REMOTE, dlt645.DI_STATUS_WORD_3)) & dlt645.STATUS3_RELAY_OPEN
        fleet.advance(3600)
        assert energy(await link.read(REMOTE, dlt645.DI_FORWARD_TOTAL)) > running

        # close_allowed closes too (the simulator does not wait for the customer's button).
        await link.control(REMOTE, "trip")
        assert (await link.control(REMOTE, "close_allowed")).control == 0x9C
        assert not fleet.registers(REMOTE)["relay_open"]

        assert fleet.control_count(REMOTE, "trip") == 2
        assert fleet.control_count(REMOTE, "close") == 1
        assert fleet.control_count(REMOTE) == 4
        await link.close()


@run
async def test_keep_power_blocks_trip_and_alarm_shows_in_status_word():
    fleet = standard_fleet()
    async with SimulatorServer(fleet, port=0) as server:
        link = await Link.open(server.ports[0], server.fleet)
        assert (await link.control(PROTECTED, "keep_power_on")).control == 0x9C
        reply = await link.control(PROTECTED, "trip")
        assert (reply.control, reply.data) == (0xDC, b"\x04")  # refused
        word = status_word(await link.read(PROTECTED, dlt645.DI_STATUS_WORD_3))
        assert word & dlt645.STATUS3_KEEP_POWER
        assert not word & dlt645.STATUS3_RELAY_OPEN

        assert (await link.control(PROTECTED, "alarm_on")).control == 0x9C
        assert status_word(await link.read(PROTECTED, dlt645.DI_STATUS_WORD_3)) & dlt645.STATUS3_PRETRIP_ALARM
        assert (await link.control(PROTECTED, "alarm_off")).control == 0x9C

        assert (await link.control(PROTECTED, "keep_power_off")).control == 0x9C
        assert (await link.control(PROTECTED, "trip")).control == 0x9C
        word = status_word(await link.read(PROTECTED, dlt645.DI_STATUS_WORD_3))
        assert word & dlt645.STATUS3_RELAY_OPEN
        assert not word & (dlt645.STATUS3_KEEP_POWER | dlt645.STATUS3_PRETRIP_ALARM)
        assert fleet.control_count(PROTECTED, "trip") == 2  # the refused one arrived too
        await link.close()


@run
async def test_expired_validity_deadline_is_refused():
    fleet = standard_fleet()
    async with SimulatorServer(fleet, port=0) as server:
        link = await Link.open(server.ports[0], server.fleet)
        reply = await link.control(REMOTE, "trip", valid_until=START_LOCAL - timedelta(minutes=1))
        assert (reply.control, reply.data) == (0xDC, b"\x01")
        assert not fleet.registers(REMOTE)["relay_open"]
        assert fleet.control_count(REMOTE, "trip") == 1
        await link.close()


@run
async def test_local_meter_trips_itself_at_zero_and_refuses_close_until_topped_up():
    fleet = standard_fleet()
    async with SimulatorServer(fleet, port=0) as server:
        link = await Link.open(server.ports[0], server.fleet)
        start_total = energy(await link.read(LOCAL, dlt645.DI_FORWARD_TOTAL))
        word = status_word(await link.read(LOCAL, dlt645.DI_STATUS_WORD_3))
        assert word & (0b11 << 8) == 0b10 << 8  # money-type prepaid meter

        fleet.advance(3 * 86400)  # 1.00 yuan at 0.50 yuan/kWh lasts 2 kWh: well under 3 days
        word = status_word(await link.read(LOCAL, dlt645.DI_STATUS_WORD_3))
        assert word & dlt645.STATUS3_RELAY_OPEN
        balance = await link.read(LOCAL, dlt645.DI_REMAINING_BALANCE)
        assert dlt645.decode_energy(balance.data[4:8]) == Decimal("0.00")
        used = energy(await link.read(LOCAL, dlt645.DI_FORWARD_TOTAL)) - start_total
        assert Decimal("1.99") <= used <= Decimal("2.01")  # 2 kWh, truncated to the hundredth
        assert fleet.registers(LOCAL)["self_tripped"]

        reply = await link.control(LOCAL, "close")
        assert (reply.control, reply.data) == (0xDC, b"\x04")  # no credit
        assert fleet.top_up(LOCAL, "10.00") == Decimal("10.00")
        assert (await link.control(LOCAL, "close")).control == 0x9C
        assert not status_word(await link.read(LOCAL, dlt645.DI_STATUS_WORD_3)) & dlt645.STATUS3_RELAY_OPEN

        fleet.advance(3600)  # power again: energy accrues and the balance goes down
        assert energy(await link.read(LOCAL, dlt645.DI_FORWARD_TOTAL)) > start_total + used
        balance = await link.read(LOCAL, dlt645.DI_REMAINING_BALANCE)
        assert Decimal("0") < dlt645.decode_energy(balance.data[4:8]) < Decimal("10.00")
        await link.close()


def test_local_meter_with_keep_power_runs_into_overdraft_then_trips_when_released():
    fleet = standard_fleet()
    meter = fleet.meter(LOCAL)
    meter.keep_power = True
    fleet.advance(3 * 86400)
    values = fleet.registers(LOCAL)
    assert not values["relay_open"]
    assert values["remaining_balance"] == Decimal("0.00") and values["overdraft"] > 0
    fleet.execute_control(meter, "keep_power_off", deadline(fleet))
    assert fleet.registers(LOCAL)["relay_open"]


# --- registers, clock, events --------------------------------------------------------------


@run
async def test_register_wraps_at_one_million():
    fleet = standard_fleet()
    async with SimulatorServer(fleet, port=0) as server:
        link = await Link.open(server.ports[0], server.fleet)
        assert energy(await link.read(NEAR_WRAP, dlt645.DI_FORWARD_TOTAL)) == Decimal("999999.50")
        fleet.advance(86400)
        wrapped = energy(await link.read(NEAR_WRAP, dlt645.DI_FORWARD_TOTAL))
        assert Decimal("0") < wrapped < Decimal("100")
        assert wrapped == fleet.registers(NEAR_WRAP)["forward_total"]
        await link.close()


def test_registers_do_not_depend_on_how_often_a_meter_is_read():
    every_minute, once = standard_fleet(), standard_fleet()
    for _ in range(24 * 60):
        every_minute.advance(60)
        every_minute.registers(REMOTE)
    once.advance(24 * 3600)
    assert every_minute.registers(REMOTE) == once.registers(REMOTE)


@run
async def test_clock_drift_time_broadcast_and_read_address():
    fleet = Fleet.generate(
        5, seed=4, start=START, speed=0, failure_rate=0.0, clock_drift_share=1.0, event_share=0.0
    )
    async with SimulatorServer(fleet, port=0) as server:
        link = await Link.open(server.ports[0], server.fleet)
        for m in fleet.meters:
            reply = await link.read(m.address, dlt645.DI_TIME)
            ss, mm, hh = (int(f"{b:02X}") for b in reply.data[4:7])
            shown = START_LOCAL.replace(hour=hh, minute=mm, second=ss)
            drift = (shown - START_LOCAL).total_seconds()
            assert 120 <= abs(drift) <= 900 and drift == m.drift
        date_week = (await link.read(fleet.meters[0].address, dlt645.DI_DATE_WEEK)).data[4:8]
        shown_day = epoch_to_local(int(START.timestamp()) + fleet.meters[0].drift)
        assert date_week[1:] == bytes.fromhex(shown_day.strftime("%d%m%y"))
        assert date_week[0] == 2  # 2025-07-15 is a Tuesday (0 = Sunday)

        # 0x08 broadcast time to 999999999999: ssmmhhDDMMYY, no reply; clocks now agree.
        data = bytes.fromhex(START_LOCAL.strftime("%S%M%H%d%m%y"))
        await link.send(dlt645.encode(dlt645.Frame(dlt645.BROADCAST_ADDRESS, dlt645.BROADCAST_TIME, data)))
        assert await link.silent()
        for m in fleet.meters:
            reply = await link.read(m.address, dlt645.DI_TIME)
            assert reply.data[4:7] == bytes.fromhex(START_LOCAL.strftime("%S%M%H"))

        # 0x13 read address to one meter.
        reply = await link.ask(dlt645.Frame(fleet.meters[2].address, dlt645.READ_ADDRESS, b""))
        assert (reply.control, dlt645.address_from_wire(reply.data)) == (0x93, fleet.meters[2].address)
        await link.close()


@run
async def test_read_address_with_wildcard_on_a_single_meter_port():
    fleet = frozen_fleet(MeterSpec(HAND_ADDRESS))
    async with SimulatorServer(fleet, port=0) as server:
        link = await Link.open(server.ports[0], server.fleet)
        body = bytes.fromhex("68 AA AA AA AA AA AA 68 13 00")
        await link.send(body + bytes([sum(body) & 0xFF, 0x16]))
        reply = await link.frame()
        assert reply.control == 0x93 and dlt645.address_from_wire(reply.data) == HAND_ADDRESS
        await link.close()


@run
async def test_event_flags_in_status_word_7_and_event_counts():
    fleet = Fleet.generate(20, seed=5, start=START, speed=0, failure_rate=0.0, event_share=1.0)
    async with SimulatorServer(fleet, port=0) as server:
        link = await Link.open(server.ports[0], server.fleet)
        kinds = set()
        for m in fleet.meters:
            word = status_word(await link.read(m.address, 0x04000507))
            assert word in (STATUS7_POWER_LOSS, STATUS7_COVER_OPEN)
            kinds.add(word)
            count_di = 0x03300D00 if word == STATUS7_COVER_OPEN else 0x03110000
            count = dlt645.bcd_decode((await link.read(m.address, count_di)).data[4:7])
            assert count >= 1
        assert kinds == {STATUS7_POWER_LOSS, STATUS7_COVER_OPEN}
        address = fleet.meters[0].address
        fleet.set_events(address, cover_open=False, power_loss=False)
        assert status_word(await link.read(address, 0x04000507)) == 0
        await link.close()


# --- failures and determinism ---------------------------------------------------------------


async def _answered(fleet: Fleet, requests: list[dlt645.Frame]) -> list[bytes]:
    """Send all requests in one go on one connection; the replies that came back."""
    async with SimulatorServer(fleet, port=0) as server:
        link = await Link.open(server.ports[0], server.fleet)
        await link.send(b"".join(dlt645.encode(r) for r in requests))
        replies = await link.replies_until_quiet()
        await link.close()
    return replies


@run
async def test_failure_rate_is_about_twenty_percent_and_deterministic():
    def fleet():
        return Fleet.generate(1000, seed=7, start=START, speed=0, failure_mode="request")  # default rate 0.2

    requests = [dlt645.read_request(a, dlt645.DI_FORWARD_TOTAL) for a in fleet().addresses]
    first = await _answered(fleet(), requests)
    silent = len(requests) - len(first)
    # Binomial(1000, 0.2): mean 200, sd 12.6; ±4.5 sd.
    assert 143 <= silent <= 257, silent
    print(f"\n{silent} of 1000 reads unanswered (failure rate 0.20)")
    again = await _answered(fleet(), requests)
    assert again == first  # same seed, same requests: the same meters answer, byte for byte
    other_seed = Fleet.generate(1000, seed=8, start=START, speed=0, failure_mode="request")
    assert await _answered(other_seed, requests) != first


@run
async def test_session_failures_silence_a_whole_collection_attempt():
    fleet = Fleet.generate(1000, seed=9, start=START, speed=0)  # session mode, rate 0.2
    dis = (dlt645.DI_FORWARD_TOTAL, dlt645.DI_FORWARD_PEAK, dlt645.DI_STATUS_WORD_3)
    requests = [dlt645.read_request(a, di) for a in fleet.addresses for di in dis]
    replies = await _answered(fleet, requests)
    per_meter: dict[str, int] = {}
    for raw in replies:
        address = dlt645.decode(raw).address
        per_meter[address] = per_meter.get(address, 0) + 1
    assert set(per_meter.values()) == {3}  # all or nothing per meter
    silent = 1000 - len(per_meter)
    assert 143 <= silent <= 257, silent
    # A later attempt (a new session) is a new roll: most of the silent meters answer now.
    missed = [a for a in fleet.addresses if a not in per_meter]
    retry = await _answered(fleet, [dlt645.read_request(a, dlt645.DI_FORWARD_TOTAL) for a in missed])
    assert len(retry) > len(missed) // 2


@run
async def test_same_seed_same_answers_byte_for_byte():
    def fleet(seed):
        return Fleet.generate(200, seed=seed, start=START, speed=0, local_share=0.3, clock_drift_share=0.2)

    dis = (
        dlt645.DI_FORWARD_TOTAL,
        dlt645.DI_FORWARD_VALLEY,
        dlt645.DI_REACTIVE_TOTAL,
        dlt645.DI_MAX_DEMAND,
        dlt645.DI_STATUS_WORD_3,
        dlt645.DI_REMAINING_BALANCE,
        dlt645.DI_TIME,
    )
    requests = [dlt645.read_request(a, di) for a in fleet(3).addresses for di in dis]
    one, two = fleet(3), fleet(3)
    assert await _answered(one, requests) == await _answered(two, requests)
    one.advance(5 * 3600)
    two.advance(5 * 3600)
    assert await _answered(one, requests) == await _answered(two, requests)
    assert [m.address for m in fleet(3).meters] == [m.address for m in one.meters]
    assert await _answered(fleet(4), requests) != await _answered(fleet(3), requests)


# --- the in-process and thread APIs -----------------------------------------------------------


def test_run_in_thread_serves_synchronous_clients_and_stops():
    fleet = standard_fleet()
    handle = run_in_thread(fleet)
    try:
        port = handle.ports[0]
        assert handle.endpoint_for(REMOTE) == f"127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(dlt645.encode(dlt645.read_request(HAND_ADDRESS, dlt645.DI_FORWARD_TOTAL)))
            raw = b""
            while len(raw) < 24:
                raw += sock.recv(64)
        assert energy(dlt645.decode(raw)) == Decimal("12345.67")
        assert fleet.top_up(LOCAL, "5") == Decimal("6.00")  # from this thread, under the lock
    finally:
        handle.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


@run
async def test_gateways_listen_on_their_own_ports_and_answer_only_for_their_meters():
    fleet = Fleet.generate(40, seed=2, start=START, speed=0, failure_rate=0.0, gateways=4)
    async with SimulatorServer(fleet, port=0) as server:
        assert len(set(server.ports)) == 4
        first, last = fleet.meters[0].address, fleet.meters[-1].address
        link = await Link.open(int(server.endpoint_for(first).rsplit(":", 1)[1]), fleet)
        assert energy(await link.read(first, dlt645.DI_FORWARD_TOTAL)) > 0
        await link.send(dlt645.encode(dlt645.read_request(last, dlt645.DI_FORWARD_TOTAL)))
        assert await link.silent()  # that meter is behind another gateway
        await link.close()


def test_refuses_to_listen_beyond_loopback():
    fleet = standard_fleet()
    every_interface = "0.0.0.0"  # noqa: S104 - the address being refused
    with pytest.raises(ValueError, match="loopback"):
        SimulatorServer(fleet, host=every_interface)
    with pytest.raises(ValueError, match="loopback"):
        run_in_thread(fleet, host="192.0.2.1")
    with pytest.raises(CommandError, match="loopback"):
        call_command("meter_simulator", "--host", every_interface, "--meters", "1")


@run
async def test_latency_delays_replies_without_blocking_other_connections():
    fleet = frozen_fleet(MeterSpec(HAND_ADDRESS), MeterSpec(REMOTE), latency_ms=200)
    async with SimulatorServer(fleet, port=0) as server:
        links = [await Link.open(server.ports[0], server.fleet) for _ in range(5)]
        started = time.perf_counter()
        replies = await asyncio.gather(*(link.read(REMOTE, dlt645.DI_FORWARD_TOTAL) for link in links))
        elapsed = time.perf_counter() - started
        assert all(r.control == 0x91 for r in replies)
        assert 0.1 <= elapsed < 0.9  # 100-300 ms each, concurrently, not 5 × in a row
        for link in links:
            await link.close()


# --- scale --------------------------------------------------------------------------------------


@run
async def test_ten_thousand_meters_over_fifty_connections():
    built = time.perf_counter()
    fleet = Fleet.generate(10_000, seed=1, failure_rate=0.0)
    build_seconds = time.perf_counter() - built
    addresses = fleet.addresses
    answered = 0

    async with SimulatorServer(fleet, port=0) as server:
        port = server.ports[0]

        async def reader(share: list[str]) -> None:
            nonlocal answered
            link = await Link.open(port)
            for address in share:
                reply = await link.read(address, dlt645.DI_FORWARD_TOTAL)
                assert reply.control == 0x91
                answered += 1
            await link.close()

        started = time.perf_counter()
        await asyncio.gather(*(reader(addresses[i::50]) for i in range(50)))
        elapsed = time.perf_counter() - started
    print(
        f"\n10,000 meters built in {build_seconds:.1f} s; 10,000 total-energy reads over 50 "
        f"connections in {elapsed:.2f} s = {answered / elapsed:,.0f} reads/s"
    )
    assert answered == 10_000
    assert elapsed < 60


# --- from the database -------------------------------------------------------------------------


@pytest.mark.django_db
def test_specs_from_db_continue_from_the_latest_stored_reading(
    install_meter, service_point, make_customer, today
):
    from metering.management.commands.meter_simulator import specs_from_db
    from metering.models import ReadingSource, Terminal
    from metering.services.readings import readings_ingest
    from tests.metering.conftest import local_midnight, reading

    terminal = Terminal.objects.create(address="T0000001", endpoint="127.0.0.1:9650")
    installed = local_midnight(today - timedelta(days=30))
    remote = install_meter(
        service_point, installed_at=installed, initial_total=Decimal("10"), terminal=terminal
    )
    shop = make_customer(category="commercial", contracted_capacity_kva=Decimal("60"))
    local = install_meter(
        shop.service_points.get(),
        installed_at=installed,
        initial_total=Decimal("5"),
        cost_control_mode="local",
        relay_state="open",
        keep_power=True,
    )
    day1, day2 = today - timedelta(days=3), today - timedelta(days=1)
    batch = readings_ingest(
        source=ReadingSource.COLLECTED,
        external_id="sim-test-1",
        readings=[
            reading(remote, day1, Decimal("100.00")),
            reading(remote, day2, Decimal("120.00"), forward_valley=Decimal("50.00")),
            reading(local, day2, Decimal("40.00"), remaining_balance=Decimal("33.30")),
        ],
    )
    assert batch.accepted == 3, batch.rejections

    specs, hosts = specs_from_db(default_port=9645)
    by_address = {s.address: s for s in specs}
    spec = by_address[remote.comm_address]
    assert (spec.port, spec.category, spec.cost_control_mode) == (9650, "residential", "remote")
    assert spec.registers["forward_total"] == Decimal("120.00")
    assert spec.registers["forward_valley"] == Decimal("50.00")
    assert spec.daily_kwh == Decimal("10")  # 20 kWh over 2 days
    assert spec.registers_at.date() == day2
    spec = by_address[local.comm_address]
    assert (spec.port, spec.category, spec.cost_control_mode) == (9645, "commercial", "local")
    assert spec.relay_open and spec.keep_power
    assert spec.remaining_balance == Decimal("33.30")
    assert hosts == {"127.0.0.1"}

    fleet = Fleet.from_specs(specs, seed=1, speed=0, failure_rate=0)
    assert fleet.registers(remote.comm_address)["forward_total"] >= Decimal("120.00")
    assert fleet.registers(local.comm_address)["relay_open"]
    assert [g.port for g in fleet.gateways] == [9650, 9645]
