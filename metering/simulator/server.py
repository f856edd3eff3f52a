"""An asyncio DL/T 645-2007 TCP server for a simulated meter fleet.

Each listening port plays one concentrator/gateway (``fleet.gateways``): a request carries
the meter address, the meter behind that port with that address answers, and an unknown
address gets silence, as on a real bus. Frames may be preceded by FE wake-up bytes, split
across TCP reads or packed several to a read; bytes before a 0x68 are dropped; a frame with
a bad checksum, end byte or length gets no answer and the connection stays open. Many
connections per port are served concurrently. Replies carry an FE FE FE FE preamble.

Functions
    0x11 read data: forward active total 00010000 and rates 1-4 00010100..00010400, the
         block 0001FF00 (total + 4 rates, 20 bytes: one frame instead of five), reverse total
         00020000, combined reactive 00030000, maximum demand and its time 01010000, status
         words 04000501 (zero), 04000503 and 04000507 (events), date/week 04000101, time
         04000102, communication address 04000401, power-loss count 03110000, cover-open
         count 03300D00, and for local cost-control meters remaining balance 00900200 and
         overdraft 00900201. Anything else (or the balance DIs on a meter without local cost
         control) → error reply 0xD1 with 0x02 "no data requested".
    0x1C remote control: trip, close, close_allowed (closes too), alarm on/off, keep-power
         on/off → 0x9C, or 0xDC with 0x01 (validity deadline passed by the meter's clock, or a
         malformed command) / 0x04 (trip while keep-power is set; close while a local meter
         has no credit). Every 0x1C that reaches a meter is counted (``Fleet.control_count``).
    0x13 read address → 0x93 with the address; to the wildcard address AA..AA only when the
         port serves a single meter (on a shared bus the answers would collide).
    0x08 broadcast time (to 999999999999) → sets the clocks of the port's meters, no reply.

Latency: ``fleet.latency_ms`` (mean, ±50% jitter) delays each reply with ``loop.call_at``,
never blocking other connections; replies on one connection keep their request order.

Speed: the hot path works on raw bytes: meters are looked up by their 6 wire-address bytes,
DIs by their 4 offset bytes, values are written straight as offset BCD, and the reply
header and its checksum part are precomputed per meter.

In-process use::

    async with SimulatorServer(fleet, host="127.0.0.1", port=0) as server:
        server.ports, server.endpoint_for(address)

    handle = run_in_thread(fleet)      # for synchronous tests
    handle.ports; handle.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from metering.headend import dlt645

from .fleet import (
    FLAT,
    PEAK,
    REACTIVE,
    REGISTER_WRAP_HUNDREDTHS,
    REVERSE,
    SHARP,
    TOTAL,
    VALLEY,
    WRAPS,
    Fleet,
    SimMeter,
    epoch_to_local,
)

PREAMBLE = dlt645.PREAMBLE
START = dlt645.START
END = dlt645.END
MAX_DATA = dlt645.MAX_DATA_LENGTH
BROADCAST_WIRE = b"\x99" * 6
WILDCARD_WIRE = b"\xaa" * 6

_ADD33 = bytes((b + 0x33) & 0xFF for b in range(256))
_SUB33 = bytes((b - 0x33) & 0xFF for b in range(256))
# BCD of 0..99 with the +0x33 offset already applied.
_BCD33 = [((i // 10) << 4 | i % 10) + 0x33 & 0xFF for i in range(100)]
_LENGTH = [bytes((n,)) for n in range(256)]

# Extra DIs the simulator answers besides those named in dlt645.py.
DI_FORWARD_BLOCK = 0x0001FF00  # total + rates 1-4, 20 bytes
DI_OVERDRAFT = 0x00900201  # current overdraft amount (local cost control)
DI_STATUS_WORD_1 = 0x04000501
DI_STATUS_WORD_7 = 0x04000507  # combined-phase faults: bit 5 power loss, bit 9 cover open
DI_COMM_ADDRESS = 0x04000401
DI_POWER_LOSS_COUNT = 0x03110000
DI_COVER_OPEN_COUNT = 0x03300D00


def _di33(di: int) -> bytes:
    return dlt645.di_bytes(di).translate(_ADD33)


def _energy33(acc_kws, wrap: int = REGISTER_WRAP_HUNDREDTHS) -> bytes:
    h = int(acc_kws * 100 // 3600) % wrap
    return bytes((_BCD33[h % 100], _BCD33[h // 100 % 100], _BCD33[h // 10000 % 100], _BCD33[h // 1000000]))


def _bcd33(value: int, size: int) -> bytes:
    out = bytearray(size)
    for i in range(size):
        value, digit_pair = divmod(value, 100)
        out[i] = _BCD33[digit_pair]
    return bytes(out)


def _word33(word: int) -> bytes:
    return bytes(((word & 0xFF) + 0x33 & 0xFF, (word >> 8) + 0x33 & 0xFF))


def _energy_reader(index: int) -> Callable[[Fleet, SimMeter], bytes]:
    wrap = WRAPS[index]

    def read(fleet: Fleet, m: SimMeter) -> bytes:
        return _energy33(m.acc[index], wrap)

    return read


def _read_forward_block(fleet: Fleet, m: SimMeter) -> bytes:
    acc = m.acc
    return b"".join(_energy33(acc[i]) for i in (TOTAL, SHARP, PEAK, FLAT, VALLEY))


def _read_max_demand(fleet: Fleet, m: SimMeter) -> bytes:
    at = time.gmtime(m.md_at + 8 * 3600)
    stamp = (((at.tm_year % 100 * 100 + at.tm_mon) * 100 + at.tm_mday) * 100 + at.tm_hour) * 100 + at.tm_min
    return _bcd33(int(m.md_kw * 10000), 3) + _bcd33(stamp, 5)


def _read_status_3(fleet: Fleet, m: SimMeter) -> bytes:
    return _word33(fleet.status_word_3(m))


def _read_status_7(fleet: Fleet, m: SimMeter) -> bytes:
    return _word33(fleet.status_word_7(m))


def _read_status_1(fleet: Fleet, m: SimMeter) -> bytes:
    return _word33(0)


def _read_balance(fleet: Fleet, m: SimMeter) -> bytes | None:
    if not m.local:
        return None
    return _bcd33(int(fleet._remaining(m) * 100), 4)


def _read_overdraft(fleet: Fleet, m: SimMeter) -> bytes | None:
    if not m.local:
        return None
    return _bcd33(int(fleet._overdraft(m) * 100), 4)


def _read_date_week(fleet: Fleet, m: SimMeter) -> bytes:
    at = epoch_to_local(fleet.rtc(m))
    week = (at.weekday() + 1) % 7  # 0 = Sunday
    return bytes((_BCD33[week], _BCD33[at.day], _BCD33[at.month], _BCD33[at.year % 100]))


def _read_time(fleet: Fleet, m: SimMeter) -> bytes:
    at = epoch_to_local(fleet.rtc(m))
    return bytes((_BCD33[at.second], _BCD33[at.minute], _BCD33[at.hour]))


def _read_address(fleet: Fleet, m: SimMeter) -> bytes:
    return m.wire.translate(_ADD33)


def _read_power_loss_count(fleet: Fleet, m: SimMeter) -> bytes:
    return _bcd33(m.power_loss_count, 3)


def _read_cover_open_count(fleet: Fleet, m: SimMeter) -> bytes:
    return _bcd33(m.cover_open_count, 3)


# DI (as its 4 bytes on the wire, +0x33 applied) → value reader (returns offset bytes, or
# None for "no data requested").
READERS: dict[bytes, Callable[[Fleet, SimMeter], bytes | None]] = {
    _di33(dlt645.DI_FORWARD_TOTAL): _energy_reader(TOTAL),
    _di33(dlt645.DI_FORWARD_SHARP): _energy_reader(SHARP),
    _di33(dlt645.DI_FORWARD_PEAK): _energy_reader(PEAK),
    _di33(dlt645.DI_FORWARD_FLAT): _energy_reader(FLAT),
    _di33(dlt645.DI_FORWARD_VALLEY): _energy_reader(VALLEY),
    _di33(DI_FORWARD_BLOCK): _read_forward_block,
    _di33(dlt645.DI_REVERSE_TOTAL): _energy_reader(REVERSE),
    _di33(dlt645.DI_REACTIVE_TOTAL): _energy_reader(REACTIVE),
    _di33(dlt645.DI_MAX_DEMAND): _read_max_demand,
    _di33(dlt645.DI_STATUS_WORD_3): _read_status_3,
    _di33(DI_STATUS_WORD_1): _read_status_1,
    _di33(DI_STATUS_WORD_7): _read_status_7,
    _di33(dlt645.DI_REMAINING_BALANCE): _read_balance,
    _di33(DI_OVERDRAFT): _read_overdraft,
    _di33(dlt645.DI_DATE_WEEK): _read_date_week,
    _di33(dlt645.DI_TIME): _read_time,
    _di33(DI_COMM_ADDRESS): _read_address,
    _di33(DI_POWER_LOSS_COUNT): _read_power_loss_count,
    _di33(DI_COVER_OPEN_COUNT): _read_cover_open_count,
}
SUPPORTED_DIS = sorted(int.from_bytes(di.translate(_SUB33), "little") for di in READERS)


def _next_valid_frame(data: bytes, pos: int) -> int:
    """Where the first complete, valid frame at or after ``pos`` starts, or -1."""
    size = len(data)
    while True:
        start = data.find(b"\x68", pos)
        if start < 0 or size - start < 12:
            return -1
        end = start + 12 + data[start + 9]
        if (
            data[start + 7] == START
            and end <= size
            and data[end - 1] == END
            and sum(data[start : end - 2]) & 0xFF == data[end - 2]
        ):
            return start
        pos = start + 1


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _GatewayProtocol(asyncio.Protocol):
    """One TCP connection to one gateway port."""

    __slots__ = (
        "server",
        "fleet",
        "meters",
        "buf",
        "transport",
        "session_meter",
        "session_failed",
        "last_due",
    )

    def __init__(self, server: SimulatorServer, meters: dict[bytes, SimMeter]):
        self.server = server
        self.fleet = server.fleet
        self.meters = meters
        self.buf = bytearray()
        self.transport = None
        self.session_meter = None
        self.session_failed = False
        self.last_due = 0.0

    def connection_made(self, transport):
        self.transport = transport
        self.server._connections.add(self)
        self.server.stats["connections"] += 1

    def connection_lost(self, exc):
        self.server._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.buf:  # the rest of a frame split across reads
            data = bytes(self.buf) + data
            self.buf.clear()
        replies: list[bytes] = []
        delay = 0.0
        fleet = self.fleet
        meters = self.meters
        stats = self.server.stats
        frames = 0
        size = len(data)
        pos = 0
        with fleet.lock:
            now = fleet.clock.now()
            while True:
                start = data.find(b"\x68", pos)
                if start < 0:
                    pos = size  # garbage (or FE preambles) with no frame start
                    break
                pos = start
                if size - start < 10:
                    break
                length = data[start + 9]
                if data[start + 7] != START or length > MAX_DATA:
                    pos = start + 1  # not a frame header: resynchronise on the next 0x68
                    continue
                end = start + 12 + length
                if end > size:
                    # Incomplete, or a stray 68h in noise that looks like a header: if a
                    # whole valid frame starts further on, the noise loses.
                    later = _next_valid_frame(data, start + 1)
                    if later < 0:
                        break
                    pos = later
                    continue
                if data[end - 1] != END or sum(data[start : end - 2]) & 0xFF != data[end - 2]:
                    stats["malformed"] += 1
                    pos = start + 1
                    continue
                pos = end
                frames += 1
                m = meters.get(data[start + 1 : start + 7])
                if m is None or data[start + 8] != 0x11 or length < 4:
                    answered = len(replies)
                    self._handle(data[start:end], m, replies)
                    if fleet.latency_ms and m is not None and len(replies) > answered:
                        delay = max(delay, fleet.latency_seconds(m, m.requests))
                    continue
                # The hot path: 0x11 read of a known meter, inline.
                m.requests += 1
                if m.offline:
                    stats["silent"] += 1
                    continue
                if fleet.failure_mode == "session":
                    if m is not self.session_meter:
                        self.session_meter = m
                        self.session_failed = fleet.read_fails(m, m.requests)
                    if self.session_failed:
                        stats["silent"] += 1
                        continue
                elif fleet.read_fails(m, m.requests):
                    stats["silent"] += 1
                    continue
                di33 = data[start + 10 : start + 14]
                reader = READERS.get(di33)
                value = None
                if reader is not None:
                    if now > m.t:
                        fleet._advance(m, now)
                    value = reader(fleet, m)
                if value is None:
                    replies.append(self._reply(m, 0xD1, b"\x35"))  # 0x02 no data requested
                else:
                    payload = di33 + value
                    n = len(payload)
                    checksum = (m.head_sum + 0x91 + n + sum(payload)) & 0xFF
                    replies.append(
                        b"".join((m.reply_head, b"\x91", _LENGTH[n], payload, bytes((checksum, END))))
                    )
                if fleet.latency_ms:
                    delay = max(delay, fleet.latency_seconds(m, m.requests))
        if pos < size:
            self.buf += data[pos:]  # an incomplete frame (at most 211 bytes) from its 0x68
        stats["frames"] += frames
        if not replies:
            return
        stats["replies"] += len(replies)
        out = b"".join(replies)
        if not delay:
            self.transport.write(out)
            return
        # Replies to the frames of one read go out together after the longest of their
        # latencies, and never before the replies to earlier reads on this connection.
        loop = asyncio.get_running_loop()
        due = max(loop.time() + delay, self.last_due + 1e-6)
        self.last_due = due
        loop.call_at(due, self._write_later, out)

    def _write_later(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)

    def _handle(self, frame: bytes, m: SimMeter | None, replies: list) -> None:
        """Everything but the hot path: other functions, unknown addresses, short reads."""
        control = frame[8]
        wire = frame[1:7]
        if m is None:
            if control == dlt645.BROADCAST_TIME and wire == BROADCAST_WIRE:
                self._broadcast_time(frame, self.meters.values())
            elif control == dlt645.READ_ADDRESS and wire == WILDCARD_WIRE and len(self.meters) == 1:
                self._read_address(next(iter(self.meters.values())), replies)
            else:
                self.server.stats["unknown_address"] += 1
            return
        if control == dlt645.READ_DATA:  # shorter than a DI
            m.requests += 1
            replies.append(self._reply(m, 0xD1, b"\x34"))  # 0x01 other error
        elif control == dlt645.READ_ADDRESS:
            self._read_address(m, replies)
        elif control == dlt645.REMOTE_CONTROL:
            self._control(m, frame, replies)
        elif control == dlt645.BROADCAST_TIME:
            self._broadcast_time(frame, (m,))
        else:
            self.server.stats["unsupported"] += 1

    def _read_address(self, m: SimMeter, replies: list) -> None:
        m.requests += 1
        if m.offline or self.fleet.read_fails(m, m.requests):
            self.server.stats["silent"] += 1
            return
        replies.append(self._reply(m, 0x93, m.wire.translate(_ADD33)))

    def _control(self, m: SimMeter, frame: bytes, replies: list) -> None:
        fleet = self.fleet
        m.requests += 1
        if m.offline or fleet.control_fails(m, m.requests):
            self.server.stats["silent"] += 1
            return
        # Control frames roll on their own (control_failure_rate); they neither start nor end
        # a read session.
        data = frame[10 : 10 + frame[9]].translate(_SUB33)
        try:
            action, valid_until = dlt645.parse_control_request(
                dlt645.Frame(address=m.address, control=dlt645.REMOTE_CONTROL, data=data)
            )
        except dlt645.FrameError:
            action, valid_until = None, None
        error = fleet.execute_control(m, action, valid_until)
        if error is None:
            replies.append(self._reply(m, 0x9C, b""))
        else:
            replies.append(self._reply(m, 0xDC, bytes(((error + 0x33) & 0xFF,))))

    def _broadcast_time(self, frame: bytes, meters) -> None:
        data = frame[10 : 10 + frame[9]].translate(_SUB33)
        if len(data) != 6:
            return
        try:
            ss, mm, hh, dd, mo, yy = (int(f"{b:02X}") for b in data)
            at = datetime(2000 + yy, mo, dd, hh, mm, ss)
        except ValueError:
            return
        self.fleet.set_clock_from_broadcast(list(meters), at)
        self.server.stats["time_broadcasts"] += 1

    @staticmethod
    def _reply(m: SimMeter, control: int, data33: bytes) -> bytes:
        n = len(data33)
        checksum = (m.head_sum + control + n + sum(data33)) & 0xFF
        return b"".join((m.reply_head, bytes((control, n)), data33, bytes((checksum, END))))


class SimulatorServer:
    """Serves ``fleet`` on one port per gateway.

    Ports: ``ports`` (one per gateway, in ``fleet.gateways`` order) if given; else
    ``port`` + gateway index (``port=0``: every gateway on an ephemeral port); else each
    gateway's own ``port`` (from its terminal's endpoint), ephemeral if it has none.
    Binding to a non-loopback host needs ``allow_external=True``.
    """

    def __init__(
        self,
        fleet: Fleet,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        ports: list[int] | None = None,
        allow_external: bool = False,
    ):
        if not allow_external and not is_loopback(host):
            raise ValueError(f"refusing to listen on {host!r}: not a loopback address (allow_external=True)")
        if ports is not None and len(ports) != len(fleet.gateways):
            raise ValueError(
                f"{len(fleet.gateways)} gateways need {len(fleet.gateways)} ports, got {len(ports)}"
            )
        self.fleet = fleet
        self.host = host
        if ports is not None:
            self._wanted = list(ports)
        elif port is not None:
            self._wanted = [port + i if port else 0 for i in range(len(fleet.gateways))]
        else:
            self._wanted = [gw.port or 0 for gw in fleet.gateways]
        self.ports: list[int] = []
        self.stats: Counter = Counter()
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[_GatewayProtocol] = set()

    async def start(self) -> SimulatorServer:
        loop = asyncio.get_running_loop()
        try:
            for gateway, wanted in zip(self.fleet.gateways, self._wanted, strict=True):
                server = await loop.create_server(
                    lambda gw=gateway: _GatewayProtocol(self, gw.meters),
                    self.host,
                    wanted,
                    reuse_address=True,
                    backlog=1024,
                )
                self._servers.append(server)
                self.ports.append(server.sockets[0].getsockname()[1])
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    async def __aenter__(self) -> SimulatorServer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def endpoints(self) -> list[str]:
        return [f"{self.host}:{p}" for p in self.ports]

    def endpoint_for(self, address: str) -> str:
        """HOST:PORT of the gateway that answers for this meter."""
        return self.endpoints[self.fleet.meter(address).gateway]

    def endpoint_map(self) -> dict[str, str]:
        endpoints = self.endpoints
        return {m.address: endpoints[m.gateway] for m in self.fleet.meters}


class SimulatorThread:
    """A SimulatorServer on its own event loop in a daemon thread (``run_in_thread``)."""

    def __init__(self, fleet: Fleet, **server_kwargs):
        self.fleet = fleet
        self._server_kwargs = server_kwargs
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.server: SimulatorServer | None = None
        self._thread = threading.Thread(target=self._run, name="meter-simulator", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.server = await SimulatorServer(self.fleet, **self._server_kwargs).start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.stop()

    def start(self, timeout: float = 10.0) -> SimulatorThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the meter simulator did not start")
        if self._error is not None:
            raise self._error
        return self

    @property
    def ports(self) -> list[int]:
        return self.server.ports

    @property
    def endpoints(self) -> list[str]:
        return self.server.endpoints

    @property
    def stats(self) -> Counter:
        return self.server.stats

    def endpoint_for(self, address: str) -> str:
        return self.server.endpoint_for(address)

    def endpoint_map(self) -> dict[str, str]:
        return self.server.endpoint_map()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> SimulatorThread:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def run_in_thread(
    fleet: Fleet,
    *,
    host: str = "127.0.0.1",
    port: int | None = 0,
    ports: list[int] | None = None,
    allow_external: bool = False,
) -> SimulatorThread:
    """Start the simulator in a background thread; returns once it listens. The handle has
    ``.ports``, ``.endpoints``, ``.endpoint_for(address)``, ``.stats`` and ``.stop()`` (and
    works as a context manager)."""
    return SimulatorThread(
        fleet, host=host, port=port if ports is None else None, ports=ports, allow_external=allow_external
    ).start()
