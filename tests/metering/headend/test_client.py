"""The DL/T 645 head-end adapter on real sockets.

Two peers: the PyPI package ``dlt645``'s threaded TCP meter simulator (an independent
implementation, extended for remote control 0x1C in conftest.py), and a tiny raw asyncio
"evil meter" defined here that misbehaves on purpose. No socket is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest

from metering.headend import dlt645 as codec
from metering.headend.base import HeadEndError, MeterRegisters
from metering.headend.client import Dlt645Adapter, FrameAssembler, parse_endpoint

from .conftest import (
    MAX_DEMAND_KW,
    METER_ADDRESS,
    REGISTER_VALUES,
    REMAINING_BALANCE,
    endpoint_of,
    start_package_meter,
)

LATER = timedelta(minutes=10)


def run(coro):
    return asyncio.run(coro)


def later() -> datetime:
    return datetime.now() + LATER  # naive = the simulator's (and meter's) local clock


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


# --- the evil meter ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def evil_meter(respond):
    """A raw TCP server: ``await respond(request_frame, writer, connection_number)`` decides
    what (if anything) goes back. Records connections and requests."""
    meter = SimpleNamespace(requests=[], connections=0, open=0, max_open=0, closed_by_client=0)

    async def handle(reader, writer):
        meter.connections += 1
        meter.open += 1
        meter.max_open = max(meter.max_open, meter.open)
        number, buffer = meter.connections, b""
        try:
            while chunk := await reader.read(1024):
                buffer += chunk
                while (start := buffer.find(b"\x68")) >= 0 and len(buffer) >= start + 10:
                    end = start + 12 + buffer[start + 9]
                    if len(buffer) < end:
                        break
                    request, buffer = codec.decode(buffer[start:end]), buffer[end:]
                    meter.requests.append((number, request))
                    await respond(request, writer, number)
            meter.closed_by_client += 1
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test's loop is ending
        finally:
            meter.open -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    meter.endpoint = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield meter


def good_reply(request: codec.Frame, *, energy: Decimal = Decimal("1.00"), status: int = 0) -> bytes:
    """What a healthy meter sends back for any request the adapter makes."""
    if request.control == codec.REMOTE_CONTROL:
        return codec.encode(codec.control_reply(request.address))
    di = codec.di_from_bytes(request.data)
    if di == codec.DI_STATUS_WORD_3:
        value = struct.pack("<H", status)
    elif di == codec.DI_MAX_DEMAND:
        value = codec.encode_demand(Decimal("1.2345"), datetime(2026, 11, 1, 8, 15))
    else:
        value = codec.encode_energy(energy)
    return codec.encode(codec.read_reply(request.address, di, value))


async def answer_well(request, writer, number):
    writer.write(good_reply(request))


async def expect_error(coro, kind: str, *fragments: str) -> HeadEndError:
    with pytest.raises(HeadEndError) as info:
        await coro
    error = info.value
    assert error.kind == kind, str(error)
    for fragment in fragments:
        assert fragment in str(error), str(error)
    return error


# --- stream reassembly (pure) -----------------------------------------------------------------


class TestFrameAssembler:
    REPLY = good_reply(codec.read_request(METER_ADDRESS, codec.DI_FORWARD_TOTAL), energy=Decimal("9.99"))

    def test_byte_by_byte_with_preamble(self):
        assembler, frames = FrameAssembler(), []
        for byte in self.REPLY:
            frames += assembler.feed(bytes([byte]))
        assert len(frames) == 1 and frames[0].address == METER_ADDRESS
        assert assembler.garbage == b"" and assembler.pending == b""

    def test_garbage_stray_68_and_two_frames_in_one_read(self):
        noise = b"\x00\x11\x68\x01\x02garbage"  # includes a 68h that starts no frame
        assembler = FrameAssembler()
        frames = assembler.feed(noise + self.REPLY + self.REPLY[:7])
        assert len(frames) == 1 and not isinstance(frames[0], codec.FrameError)
        assert assembler.pending == self.REPLY[4:7]  # the second frame has begun (FE skipped)
        assert assembler.feed(self.REPLY[7:]) == frames
        assert b"garbage" in assembler.garbage

    def test_waits_for_the_length_in_the_l_byte(self):
        assembler = FrameAssembler()
        assert assembler.feed(self.REPLY[:-1]) == []
        assert assembler.expected_length() == 20
        assert len(assembler.feed(self.REPLY[-1:])) == 1

    def test_bad_checksum_is_reported_not_skipped(self):
        bad = bytearray(self.REPLY)
        bad[-2] ^= 0xFF
        (error,) = FrameAssembler().feed(bytes(bad))
        assert isinstance(error, codec.FrameError) and error.reason == "bad_checksum"


def test_parse_endpoint():
    assert parse_endpoint("meter.example:9645") == ("meter.example", 9645)
    assert parse_endpoint("[::1]:10001") == ("::1", 10001)
    for bad in ("127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":80", "host:port"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_endpoint(bad)


# --- against the dlt645 package's simulator ---------------------------------------------------


class TestPackageSimulator:
    def test_reads_energy_registers_as_configured(self, package_meter):
        adapter = Dlt645Adapter()
        registers = adapter.read_registers_sync(
            endpoint_of(package_meter), METER_ADDRESS, include_balance=True, timeout=2
        )
        assert isinstance(registers, MeterRegisters)
        assert registers.address == METER_ADDRESS
        assert registers.forward_total == REGISTER_VALUES[codec.DI_FORWARD_TOTAL] == Decimal("1234.56")
        assert [
            registers.forward_sharp,
            registers.forward_peak,
            registers.forward_flat,
            registers.forward_valley,
        ] == [Decimal("100.01"), Decimal("200.02"), Decimal("300.03"), Decimal("634.50")]
        assert registers.reverse_total == Decimal("12.34")
        assert registers.reactive_total == Decimal("56.78")
        assert registers.max_demand_kw == MAX_DEMAND_KW
        assert registers.remaining_balance == REMAINING_BALANCE
        values = [
            getattr(registers, name) for name in ("forward_total", "max_demand_kw", "remaining_balance")
        ]
        assert all(type(value) is Decimal for value in values)
        assert registers.status.relay_open is False and registers.status.raw_status_word == 0
        assert registers.missing == []
        assert registers.read_at.tzinfo is not None

    def test_register_the_meter_lacks_is_listed_as_missing(self, package_fleet):
        meter = package_fleet[0]  # configured without remaining balance: the package answers D1 02
        registers = Dlt645Adapter().read_registers_sync(
            endpoint_of(meter), "410000000001", include_balance=True, timeout=2
        )
        assert registers.remaining_balance is None
        assert registers.missing == ["remaining_balance"]
        assert registers.forward_total == Decimal("1235.56")

    def test_reads_status_word_3(self, package_meter):
        package_meter.relay_open = package_meter.keep_power = True
        status = Dlt645Adapter().read_status_sync(endpoint_of(package_meter), METER_ADDRESS, timeout=2)
        assert status.relay_open and status.keep_power and not status.alarm
        assert status.raw_status_word == codec.STATUS3_RELAY_OPEN | codec.STATUS3_KEEP_POWER

    def test_trip_is_confirmed_by_reading_status_back_then_close(self, package_meter):
        adapter, endpoint = Dlt645Adapter(), endpoint_of(package_meter)

        async def scenario():
            await adapter.control(endpoint, METER_ADDRESS, "trip", valid_until=later(), timeout=2)
            tripped = await adapter.read_status(endpoint, METER_ADDRESS, timeout=2)
            await adapter.control(endpoint, METER_ADDRESS, "close", valid_until=later(), timeout=2)
            closed = await adapter.read_status(endpoint, METER_ADDRESS, timeout=2)
            return tripped, closed

        tripped, closed = adapter.run_sync(scenario())
        assert tripped.relay_open is True
        assert tripped.raw_status_word & codec.STATUS3_RELAY_OPEN
        assert tripped.raw_status_word & codec.STATUS3_RELAY_COMMAND_OPEN
        assert closed.relay_open is False and closed.raw_status_word == 0
        assert package_meter.controls_received == [0x1A, 0x1C]  # each sent exactly once

    def test_close_allowed_alarm_and_keep_power(self, package_meter):
        adapter, endpoint = Dlt645Adapter(), endpoint_of(package_meter)

        async def send(action):
            await adapter.control(endpoint, METER_ADDRESS, action, valid_until=later(), timeout=2)
            return await adapter.read_status(endpoint, METER_ADDRESS, timeout=2)

        async def scenario():
            await send("trip")
            allowed = await send("close-allowed")  # the customer must close it by hand
            alarm_on = await send("alarm_on")
            alarm_off = await send("alarm-off")
            return allowed, alarm_on, alarm_off

        allowed, alarm_on, alarm_off = adapter.run_sync(scenario())
        assert allowed.relay_open and not allowed.raw_status_word & codec.STATUS3_RELAY_COMMAND_OPEN
        assert alarm_on.alarm and not alarm_off.alarm

    def test_keep_power_blocks_a_trip(self, package_meter):
        adapter, endpoint = Dlt645Adapter(), endpoint_of(package_meter)
        adapter.control_sync(endpoint, METER_ADDRESS, "keep-power-on", valid_until=later(), timeout=2)
        assert adapter.read_status_sync(endpoint, METER_ADDRESS).keep_power is True

        async def refused_trip():
            await expect_error(
                adapter.control(endpoint, METER_ADDRESS, "trip", valid_until=later(), timeout=2),
                "refused",
                f"meter {METER_ADDRESS} at {endpoint} refused remote control trip (1Ah)",
                "other error (error byte 01h)",
            )

        run(refused_trip())
        assert adapter.read_status_sync(endpoint, METER_ADDRESS).relay_open is False
        adapter.control_sync(endpoint, METER_ADDRESS, "keep-power-off", valid_until=later(), timeout=2)
        adapter.control_sync(endpoint, METER_ADDRESS, "trip", valid_until=later(), timeout=2)
        assert adapter.read_status_sync(endpoint, METER_ADDRESS).relay_open is True

    def test_wrong_password_is_refused(self, package_meter):
        adapter = Dlt645Adapter(password=bytes.fromhex("02112233"))
        error = run(
            expect_error(
                adapter.control(
                    endpoint_of(package_meter), METER_ADDRESS, "trip", valid_until=later(), timeout=2
                ),
                "refused",
                "password error or unauthorised (error byte 04h)",
            )
        )
        assert error.address == METER_ADDRESS and not package_meter.relay_open

    def test_aware_deadline_is_converted_to_the_meters_clock(self, package_meter):
        # The meter's clock reads 2026-06-01 12:00 local (Asia/Shanghai, UTC+8) = 04:00 UTC.
        package_meter.time = datetime(2026, 6, 1, 12, 0)
        adapter, endpoint = Dlt645Adapter(meter_timezone="Asia/Shanghai"), endpoint_of(package_meter)
        try:
            run(
                expect_error(
                    adapter.control(
                        endpoint, METER_ADDRESS, "trip", valid_until=datetime(2026, 6, 1, 3, 59, tzinfo=UTC)
                    ),
                    "refused",
                )
            )
            adapter.control_sync(
                endpoint, METER_ADDRESS, "trip", valid_until=datetime(2026, 6, 1, 4, 5, tzinfo=UTC)
            )
            assert package_meter.relay_open
        finally:
            package_meter.time = None

    def test_wrong_address(self, package_meter):
        """A real meter stays silent for a frame addressed to another meter, so the head-end
        sees a timeout; our 0x1C extension behaves like that. The package's read path does
        not: it answers D1 01 ("other error") and echoes the address we asked for (memo S1).
        On the wire that reply *is* a refusal from the addressed meter, and the adapter must
        not second-guess the wire, so it reports kind="refused" with the meter's text."""
        adapter, endpoint, stranger = Dlt645Adapter(), endpoint_of(package_meter), "000000000001"

        async def scenario():
            await expect_error(
                adapter.read_registers(endpoint, stranger, timeout=0.5),
                "refused",
                f"meter {stranger} at {endpoint} refused read forward_total (00010000): other error",
            )
            await expect_error(
                adapter.control(endpoint, stranger, "trip", valid_until=later(), timeout=0.5),
                "timeout",
                f"meter {stranger} at {endpoint}: no reply to remote control trip (1Ah) within 0.5 s",
            )

        run(scenario())
        assert package_meter.controls_received == [] and not package_meter.relay_open

    def test_pools_are_per_event_loop_and_closed_with_it(self):
        connects, disconnects = [], []
        meter = start_package_meter(
            "123400000001", on_connect=connects.append, on_disconnect=disconnects.append
        )
        try:
            adapter, endpoint = Dlt645Adapter(), endpoint_of(meter)
            # the collection service calls asyncio.run(adapter.read_many(...)) directly
            first = asyncio.run(
                adapter.read_many([(endpoint, "123400000001", True)], concurrency=2, timeout=2)
            )
            second = adapter.read_registers_sync(endpoint, "123400000001", timeout=2)  # a new loop
            assert first[0].forward_total == second.forward_total == Decimal("1234.56")
            deadline = time.monotonic() + 5
            while len(disconnects) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(connects) == len(disconnects) == 2  # one connection per loop, each closed
            assert not adapter._loops  # nothing kept for loops that are gone
        finally:
            meter.stop()


# --- against the evil meter ---------------------------------------------------------------------


class TestEvilMeter:
    adapter = Dlt645Adapter(max_connections_per_endpoint=2)

    def test_wrong_checksum(self):
        async def respond(request, writer, number):
            bad = bytearray(good_reply(request))
            bad[-2] = (bad[-2] + 1) & 0xFF
            writer.write(bytes(bad))

        async def scenario():
            async with evil_meter(respond) as meter:
                await expect_error(
                    self.adapter.read_status(meter.endpoint, METER_ADDRESS, timeout=1),
                    "bad_frame",
                    "bad frame (bad_checksum) in reply to read status (04000503): checksum mismatch",
                )

        run(scenario())

    def test_truncated_frame_then_silence(self):
        async def respond(request, writer, number):
            writer.write(good_reply(request)[:13])  # FE FE FE FE + 9 bytes of the frame

        async def scenario():
            async with evil_meter(respond) as meter:
                await expect_error(
                    self.adapter.read_status(meter.endpoint, METER_ADDRESS, timeout=0.3),
                    "bad_frame",
                    "bad frame (truncated): got 9 bytes of a frame header",
                    "then nothing for 0.3 s",
                )

        run(scenario())

    def test_truncated_frame_then_close(self):
        async def respond(request, writer, number):
            writer.write(good_reply(request)[:16])
            await writer.drain()
            writer.close()

        async def scenario():
            async with evil_meter(respond) as meter:
                await expect_error(
                    self.adapter.read_status(meter.endpoint, METER_ADDRESS, timeout=1),
                    "bad_frame",
                    "bad frame (truncated): the connection closed after 12 bytes of a 18-byte frame",
                )

        run(scenario())

    def test_garbage(self):
        async def respond(request, writer, number):
            writer.write(b"\xfe\xfeHTTP/1.1 400 Bad Request\r\n")

        async def scenario():
            async with evil_meter(respond) as meter:
                await expect_error(
                    self.adapter.read_status(meter.endpoint, METER_ADDRESS, timeout=0.3),
                    "bad_frame",
                    "bad frame (no_frame): 26 bytes without a DL/T 645 frame",
                    "48 54 54 50",
                )

        run(scenario())

    def test_garbage_preamble_split_reads_and_extra_bytes_are_handled(self):
        async def respond(request, writer, number):
            reply = good_reply(request, energy=Decimal("4321.09"))
            for chunk in (b"\x00\x13noise", reply[:3], reply[3:11], reply[11:], b"\x16\x00trailing"):
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.01)

        async def scenario():
            async with evil_meter(respond) as meter:
                registers = await self.adapter.read_registers(meter.endpoint, METER_ADDRESS, timeout=1)
                return registers, meter.connections

        registers, connections = run(scenario())
        assert registers.forward_total == Decimal("4321.09") and registers.max_demand_kw == Decimal("1.2345")
        assert registers.missing == [] and connections == 1  # nine exchanges on one connection

    def test_reply_for_another_meter(self):
        async def respond(request, writer, number):
            other = codec.Frame("000000000099", request.control, request.data)
            writer.write(good_reply(other))

        async def scenario():
            async with evil_meter(respond) as meter:
                await expect_error(
                    self.adapter.read_status(meter.endpoint, METER_ADDRESS, timeout=1),
                    "mismatch",
                    "reply to read status (04000503) came from meter 000000000099",
                )

        run(scenario())

    def test_reply_for_another_data_identifier_or_function(self):
        async def respond(request, writer, number):
            if number == 1:
                writer.write(good_reply(codec.read_request(request.address, codec.DI_REVERSE_TOTAL)))
            else:
                writer.write(codec.encode(codec.Frame(request.address, 0x93, bytes(6))))

        async def scenario():
            async with evil_meter(respond) as meter:
                await expect_error(
                    self.adapter.read_registers(meter.endpoint, METER_ADDRESS, timeout=1),
                    "mismatch",
                    "carries data identifier 00020000, not 00010000",
                )
                await expect_error(
                    self.adapter.read_status(meter.endpoint, METER_ADDRESS, timeout=1),
                    "mismatch",
                    "has control code 93h, expected 91h",
                )

        run(scenario())

    def test_error_replies(self):
        no_data = {codec.DI_REACTIVE_TOTAL, codec.DI_MAX_DEMAND}

        async def respond(request, writer, number):
            di = codec.di_from_bytes(request.data)
            if number == 1 and di in no_data:
                writer.write(codec.encode(codec.error_reply(request.address, codec.READ_DATA, 0x02)))
            elif number == 2 and di == codec.DI_FORWARD_TOTAL:
                writer.write(codec.encode(codec.error_reply(request.address, codec.READ_DATA, 0x02)))
            elif number == 3:
                writer.write(codec.encode(codec.error_reply(request.address, request.function, 0x04)))
            else:
                writer.write(good_reply(request))

        async def scenario():
            async with evil_meter(respond) as meter:
                partial = await self.adapter.read_registers(meter.endpoint, METER_ADDRESS, timeout=1)
                assert meter.connections == 1  # refusals leave the connection in use
                # this meter's script goes by connection number: start a new one for each act
                await self.adapter.aclose()
                await expect_error(
                    self.adapter.read_registers(meter.endpoint, METER_ADDRESS, timeout=1),
                    "refused",
                    "refused read forward_total (00010000): no data requested (error byte 02h)",
                )
                await self.adapter.aclose()
                await expect_error(
                    self.adapter.control(
                        meter.endpoint, METER_ADDRESS, "trip", valid_until=later(), timeout=1
                    ),
                    "refused",
                    "refused remote control trip (1Ah): password error or unauthorised",
                )
                return partial

        partial = run(scenario())
        assert partial.missing == ["reactive_total", "max_demand_kw"]
        assert partial.reactive_total is None and partial.max_demand_kw is None
        assert partial.forward_total == Decimal("1.00") and partial.status is not None

    def test_signed_and_non_bcd_values(self):
        async def respond(request, writer, number):
            di = codec.di_from_bytes(request.data)
            if di == codec.DI_REACTIVE_TOTAL:  # -12.34 kvarh: sign in the top bit
                writer.write(
                    codec.encode(codec.read_reply(request.address, di, bytes.fromhex("34 12 00 80")))
                )
            elif di == codec.DI_FORWARD_TOTAL and number == 2:
                writer.write(
                    codec.encode(codec.read_reply(request.address, di, bytes.fromhex("7A 00 00 00")))
                )
            else:
                writer.write(good_reply(request))

        async def scenario():
            async with evil_meter(respond) as meter:
                signed = await self.adapter.read_registers(meter.endpoint, METER_ADDRESS, timeout=1)
                await self.adapter.aclose()
                await expect_error(
                    self.adapter.read_registers(meter.endpoint, METER_ADDRESS, timeout=1),
                    "bad_frame",
                    "bad frame (bad_bcd) in reply to read forward_total (00010000): not BCD: 7a 00 00 00",
                )
                return signed

        assert run(scenario()).reactive_total == Decimal("-12.34")

    def test_timeout_on_any_frame_fails_the_read(self):
        async def respond(request, writer, number):
            if codec.di_from_bytes(request.data) != codec.DI_FORWARD_FLAT:
                writer.write(good_reply(request))

        async def scenario():
            async with evil_meter(respond) as meter:
                await expect_error(
                    self.adapter.read_registers(meter.endpoint, METER_ADDRESS, timeout=0.2),
                    "timeout",
                    f"meter {METER_ADDRESS} at {meter.endpoint}: "
                    "no reply to read forward_flat (00010300) within 0.2 s",
                )

        run(scenario())

    def test_late_reply_is_never_taken_as_the_next_answer(self):
        """The first request is answered 0.6 s late, after the adapter gave up at 0.3 s. If the
        connection were reused, the next request would read that late 1.00 kWh."""
        served = 0

        async def respond(request, writer, number):
            nonlocal served
            served += 1
            if served == 1:
                await asyncio.sleep(0.6)
            writer.write(good_reply(request, energy=Decimal(served)))

        async def scenario():
            async with evil_meter(respond) as meter:
                await expect_error(
                    self.adapter.read_registers(meter.endpoint, METER_ADDRESS, timeout=0.3), "timeout"
                )
                registers = await self.adapter.read_registers(meter.endpoint, METER_ADDRESS, timeout=1)
                await asyncio.sleep(0.5)  # the late reply has gone out by now
                return registers, meter

        registers, meter = run(scenario())
        assert registers.forward_total == Decimal("2.00")  # not the late 1.00
        assert meter.connections == 2  # the timed-out connection was discarded ...
        assert meter.closed_by_client == 1  # ... and closed by the adapter

    def test_unsolicited_frames_between_requests_are_dropped(self):
        """A duplicated acknowledgement of the trip arrives after the trip completed; the next
        command (which this meter refuses) must not take it as its own acknowledgement."""

        async def respond(request, writer, number):
            if codec.parse_control_request(request)[0] == "trip":
                writer.write(good_reply(request))
                await asyncio.sleep(0.05)
                writer.write(good_reply(request))  # the duplicate
            else:
                writer.write(codec.encode(codec.error_reply(request.address, request.function, 0x01)))

        async def scenario():
            async with evil_meter(respond) as meter:
                await self.adapter.control(
                    meter.endpoint, METER_ADDRESS, "trip", valid_until=later(), timeout=1
                )
                await asyncio.sleep(0.2)
                await expect_error(
                    self.adapter.control(
                        meter.endpoint, METER_ADDRESS, "close", valid_until=later(), timeout=1
                    ),
                    "refused",
                    "refused remote control close (1Ch)",
                )
                return meter.connections

        assert run(scenario()) == 1

    def test_control_is_never_resent(self):
        async def respond(request, writer, number):
            pass  # executes the command, never answers

        async def scenario():
            async with evil_meter(respond) as meter:
                await expect_error(
                    self.adapter.control(
                        meter.endpoint, METER_ADDRESS, "trip", valid_until=later(), timeout=0.2
                    ),
                    "timeout",
                    "no reply to remote control trip (1Ah) within 0.2 s",
                )
                await asyncio.sleep(0.5)
                return meter.requests

        requests = run(scenario())
        assert len(requests) == 1 and requests[0][1].control == codec.REMOTE_CONTROL

    def test_connection_reset_closed_and_refused(self):
        async def reset(request, writer, number):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST

        async def hang_up(request, writer, number):
            writer.close()

        async def scenario():
            async with evil_meter(reset) as meter:
                await expect_error(
                    self.adapter.read_status(meter.endpoint, METER_ADDRESS, timeout=1),
                    "connection",
                    "connection reset while waiting for the reply to read status",
                )
            async with evil_meter(hang_up) as meter:
                await expect_error(
                    self.adapter.read_status(meter.endpoint, METER_ADDRESS, timeout=1),
                    "connection",
                    "the connection was closed before the meter replied to read status",
                )
            endpoint = closed_port()
            error = await expect_error(
                self.adapter.read_registers(endpoint, METER_ADDRESS, timeout=1),
                "connection",
                f"cannot connect to {endpoint}: connection refused",
            )
            assert (error.endpoint, error.address) == (endpoint, METER_ADDRESS)

        run(scenario())

    def test_silence(self):
        async def scenario():
            async with evil_meter(lambda *args: asyncio.sleep(0)) as meter:
                await expect_error(
                    self.adapter.read_status(meter.endpoint, METER_ADDRESS, timeout=0.2),
                    "timeout",
                    f"meter {METER_ADDRESS} at {meter.endpoint}: "
                    "no reply to read status (04000503) within 0.2 s",
                )

        run(scenario())

    def test_invalid_arguments(self):
        async def scenario():
            with pytest.raises(ValueError, match="12 decimal digits"):
                await self.adapter.read_status("127.0.0.1:1", "12345")
            with pytest.raises(ValueError, match="HOST:PORT"):
                await self.adapter.read_status("localhost", METER_ADDRESS)
            with pytest.raises(ValueError, match="unknown remote-control action 'explode'"):
                await self.adapter.control("127.0.0.1:1", METER_ADDRESS, "explode", valid_until=later())

        run(scenario())


# --- read_many --------------------------------------------------------------------------------


def test_read_many_with_bounded_concurrency(package_meter, package_fleet):
    """60 meters behind one slow concentrator (the evil meter, 10 ms a frame), five package
    simulators, a closed port and a malformed row, read in one batch."""
    per_endpoint, concurrency = 3, 5
    adapter = Dlt645Adapter(max_connections_per_endpoint=per_endpoint)
    in_flight = SimpleNamespace(now=0, peak=0)

    async def concentrator(request, writer, number):
        in_flight.now += 1
        in_flight.peak = max(in_flight.peak, in_flight.now)
        await asyncio.sleep(0.01)
        in_flight.now -= 1
        writer.write(good_reply(request, energy=Decimal(int(request.address[-4:]))))

    async def scenario():
        async with evil_meter(concentrator) as meter:
            dead = closed_port()
            # (target, what to expect): kWh for the concentrator's meters, or a marker
            plan = [((meter.endpoint, f"90000000{i:04d}", False), Decimal(i)) for i in range(60)]
            plan.insert(7, ((endpoint_of(package_meter), METER_ADDRESS, True), "package"))
            plan.insert(20, ((dead, "123456789012", False), "connection refused"))
            plan.insert(30, (("nonsense", METER_ADDRESS, False), "HOST:PORT"))
            for i, sim in enumerate(package_fleet, start=1):
                plan.insert(10 * i + 1, ((endpoint_of(sim), f"4100000000{i:02d}", True), i))
            targets = [target for target, _ in plan]
            started = time.monotonic()
            results = await adapter.read_many(targets, concurrency=concurrency, timeout=2)
            return plan, results, time.monotonic() - started, meter

    plan, results, elapsed, meter = run(scenario())
    assert len(results) == len(plan) == 67
    for ((_endpoint, address, _balance), expected), result in zip(plan, results, strict=True):
        if isinstance(expected, str) and expected != "package":
            assert isinstance(result, HeadEndError) and result.kind == "connection", result
            assert expected in str(result) and result.address == address
            continue
        assert isinstance(result, MeterRegisters), result
        assert result.address == address  # order preserved
        if isinstance(expected, Decimal):
            assert result.forward_total == expected and result.missing == []
        elif expected == "package":
            assert result.remaining_balance == REMAINING_BALANCE
        else:  # fleet meter i: registers configured +i, balance only on even ones
            assert result.forward_total == Decimal("1234.56") + expected
            if expected % 2:
                assert result.missing == ["remaining_balance"]
            else:
                assert result.remaining_balance == Decimal(expected)
    # the concentrator never saw more connections or requests than its pool allows ...
    assert meter.max_open <= per_endpoint and in_flight.peak <= per_endpoint
    assert in_flight.peak == per_endpoint  # ... and was kept busy
    # 60 meters x 9 frames x 10 ms = 5.4 s one at a time; three connections share it
    assert elapsed < 60 * 9 * 0.01 * 0.6


def test_read_many_overall_concurrency_bound():
    adapter = Dlt645Adapter(max_connections_per_endpoint=4)
    gauge = SimpleNamespace(now=0, peak=0)
    lock = threading.Lock()

    async def meter_behaviour(request, writer, number):
        with lock:
            gauge.now += 1
            gauge.peak = max(gauge.peak, gauge.now)
        await asyncio.sleep(0.01)
        with lock:
            gauge.now -= 1
        writer.write(good_reply(request))

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            meters = [await stack.enter_async_context(evil_meter(meter_behaviour)) for _ in range(4)]
            targets = [(m.endpoint, f"8000000000{i:02d}", False) for i in range(10) for m in meters]
            return await adapter.read_many(targets, concurrency=6, timeout=2)

    results = run(scenario())
    assert all(isinstance(r, MeterRegisters) for r in results)
    assert gauge.peak == 6  # four endpoints x four connections available, six reads allowed
