"""DL/T 645-2007 head-end adapter over TCP (stdlib asyncio only).

How a request travels:

* Each event loop has its own connection pools (``asyncio.run`` makes a new loop per call,
  and asyncio objects cannot cross loops), one pool per endpoint ``HOST:PORT`` with at most
  ``max_connections_per_endpoint`` connections. DL/T 645 is half-duplex: a connection carries
  one request at a time, so concurrency comes from several connections and several endpoints.
* The bytes a meter sends are cut into frames by ``FrameAssembler``: FE wake-up bytes and
  garbage before 68h are skipped, a frame is complete when the length in its L byte has
  arrived, split reads are joined and extra bytes are kept for the next frame.
* Every exchange has a timeout. After a timeout, a bad frame or a reply that does not match,
  the connection is closed and never reused, so a late reply can never be taken as the
  answer to the next request. Anything a meter sent while no request was outstanding is
  thrown away before the next request is written.
* A reply must come from the addressed meter and answer the request's function (and, for
  reads, carry the requested data identifier); otherwise ``HeadEndError(kind="mismatch")``.
  An error reply (control bit 6) becomes ``kind="refused"`` with the meter's error text.
* Nothing is ever sent twice: the adapter does not retry. Whether to retry a read or a
  remote-control command is the caller's decision (a resent trip could execute twice).

The pools of a loop are closed when the loop's leftover tasks are cancelled (``asyncio.run``
does that before closing the loop) or by ``await adapter.aclose()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeVar
from zoneinfo import ZoneInfo

import structlog

from metering.headend import dlt645 as codec
from metering.headend.base import HeadEndError, MeterRegisters, RelayStatus

logger = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_PASSWORD = b"\x02\x00\x00\x00"  # PA=02 (level 2), P0P1P2 = 000000
DEFAULT_OPERATOR = b"\x00\x00\x00\x00"
ERROR_NO_DATA = 0x02  # error-byte bit: "no data requested"
SIGN_BIT = 0x80  # top bit of the most significant byte of a signed BCD value


# --- stream reassembly ----------------------------------------------------------------------


class FrameAssembler:
    """Cuts a byte stream into DL/T 645 frames.

    ``feed(data)`` returns the frames completed by ``data``, each a ``codec.Frame`` or a
    ``codec.FrameError`` for a frame-shaped chunk that did not decode (bad checksum, bad end
    byte, non-BCD address...). Pure: no I/O, so it is tested byte by byte.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.garbage = bytearray()  # bytes skipped that were neither FE nor part of a frame

    def reset(self) -> None:
        self._buffer.clear()
        self.garbage.clear()

    @property
    def pending(self) -> bytes:
        """Bytes of a frame that has started (68h seen) but is not complete yet."""
        return bytes(self._buffer)

    def expected_length(self) -> int | None:
        """Full length of the pending frame, if its header has arrived."""
        return codec.frame_length_needed(bytes(self._buffer))

    def _skip(self, count: int) -> None:
        self.garbage += bytes(b for b in self._buffer[:count] if b != 0xFE)
        del self._buffer[:count]

    def feed(self, data: bytes) -> list[codec.Frame | codec.FrameError]:
        self._buffer += data
        out: list[codec.Frame | codec.FrameError] = []
        while self._buffer:
            start = self._buffer.find(codec.START)
            if start < 0:
                self._skip(len(self._buffer))
                break
            self._skip(start)
            if len(self._buffer) < 8:
                break
            if self._buffer[7] != codec.START:
                self._skip(1)  # a stray 68h in the noise: look for the next one
                continue
            if len(self._buffer) < 10:
                break
            length = self._buffer[9]
            if length > codec.MAX_DATA_LENGTH:
                out.append(
                    codec.FrameError("bad_length", f"data length {length} exceeds {codec.MAX_DATA_LENGTH}")
                )
                self._skip(1)
                continue
            needed = 12 + length
            if len(self._buffer) < needed:
                break
            raw = bytes(self._buffer[:needed])
            del self._buffer[:needed]
            try:
                out.append(codec.decode(raw))
            except codec.FrameError as exc:
                out.append(exc)
        return out


# --- one TCP connection ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Closed:
    """The connection ended; ``exc`` is the OS error, None for an orderly close (EOF)."""

    exc: BaseException | None


class _LinkProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.assembler = FrameAssembler()
        self.received: deque[codec.Frame | codec.FrameError] = deque()
        self.closed: _Closed | None = None
        self._waiter: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received.extend(self.assembler.feed(data))
        self._wake()

    def eof_received(self) -> bool:
        self.closed = self.closed or _Closed(None)
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed is None or (exc is not None and self.closed.exc is None):
            self.closed = _Closed(exc)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_item(self) -> codec.Frame | codec.FrameError | _Closed:
        while not self.received:
            if self.closed is not None:
                return self.closed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.received.popleft()


class _Link:
    def __init__(self, transport: asyncio.Transport, protocol: _LinkProtocol) -> None:
        self.transport = transport
        self.protocol = protocol
        self.broken = False
        self.idle_since = time.monotonic()

    @property
    def usable(self) -> bool:
        return not self.broken and self.protocol.closed is None and not self.transport.is_closing()

    async def exchange(self, wire: bytes) -> codec.Frame | codec.FrameError | _Closed:
        stale = len(self.protocol.received) + len(self.protocol.assembler.pending)
        if stale:
            logger.warning("headend_stale_bytes_dropped", frames_or_bytes=stale)
        self.protocol.received.clear()
        self.protocol.assembler.reset()
        self.transport.write(wire)
        return await self.protocol.next_item()

    def close(self) -> None:
        self.broken = True
        if not self.transport.is_closing():
            self.transport.close()


class _EndpointPool:
    def __init__(self, endpoint: str, max_connections: int) -> None:
        self.endpoint = endpoint
        self.host, self.port = parse_endpoint(endpoint)
        self.slots = asyncio.Semaphore(max_connections)
        self.idle: list[_Link] = []
        self.closed = False

    async def _connect(self, timeout: float, address: str) -> _Link:
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(_LinkProtocol, self.host, self.port), timeout
            )
        except TimeoutError:
            raise HeadEndError(
                "timeout",
                f"could not connect to {self.endpoint} within {timeout:g} s",
                endpoint=self.endpoint,
                address=address,
            ) from None
        except ConnectionRefusedError:
            raise HeadEndError(
                "connection",
                f"cannot connect to {self.endpoint}: connection refused",
                endpoint=self.endpoint,
                address=address,
            ) from None
        except OSError as exc:
            raise HeadEndError(
                "connection",
                f"cannot connect to {self.endpoint}: {exc.strerror or exc}",
                endpoint=self.endpoint,
                address=address,
            ) from None
        return _Link(transport, protocol)

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float, address: str) -> AsyncIterator[_Link]:
        async with self.slots:
            link = None
            while self.idle:
                candidate = self.idle.pop()
                if candidate.usable:
                    link = candidate
                    break
                candidate.close()
            if link is None:
                link = await self._connect(timeout, address)
            try:
                yield link
            except BaseException as exc:
                # a HeadEndError has already said whether the link is still sound (a clean
                # refusal leaves it usable); anything else (cancellation, a bug) may have left
                # a request outstanding
                if not isinstance(exc, HeadEndError):
                    link.broken = True
                raise
            finally:
                if link.usable and not self.closed:
                    link.idle_since = time.monotonic()
                    self.idle.append(link)
                else:
                    link.close()

    def close_idle(self, older_than: float = 0.0) -> None:
        now = time.monotonic()
        keep = []
        for link in self.idle:
            if link.usable and now - link.idle_since < older_than:
                keep.append(link)
            else:
                link.close()
        self.idle = keep


class _LoopPools:
    """The pools of one event loop, and a janitor task that closes idle connections and,
    when the loop's leftover tasks are cancelled (``asyncio.run`` does so before closing the
    loop), closes them all."""

    def __init__(self, adapter: Dlt645Adapter, loop: asyncio.AbstractEventLoop) -> None:
        self.adapter = adapter
        self.loop = loop
        self.pools: dict[str, _EndpointPool] = {}
        self.janitor = loop.create_task(self._janitor(), name="dlt645-headend-pool-janitor")

    def pool(self, endpoint: str) -> _EndpointPool:
        pool = self.pools.get(endpoint)
        if pool is None:
            pool = self.pools[endpoint] = _EndpointPool(endpoint, self.adapter.max_connections_per_endpoint)
        return pool

    async def _janitor(self) -> None:
        try:
            while True:
                await asyncio.sleep(max(self.adapter.idle_timeout / 2, 0.05))
                for pool in self.pools.values():
                    pool.close_idle(older_than=self.adapter.idle_timeout)
        finally:
            self.close()

    def close(self) -> None:
        for pool in self.pools.values():
            pool.closed = True
            pool.close_idle()
        self.pools.clear()
        with self.adapter._loops_lock:
            if self.adapter._loops.get(self.loop) is self:
                del self.adapter._loops[self.loop]


# --- helpers ------------------------------------------------------------------------------


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (IPv6 as ``"[::1]:PORT"``) → (host, port); ValueError if malformed."""
    host, sep, port = (endpoint or "").rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint must be HOST:PORT, got {endpoint!r}")
    return host, int(port)


def check_address(address: str) -> str:
    if not isinstance(address, str) or len(address) != 12 or not address.isdigit():
        raise ValueError(f"meter address must be 12 decimal digits, got {address!r}")
    return address


def _decimal(raw: bytes, places: int, *, signed: bool = False) -> Decimal:
    """Little-endian BCD → Decimal with ``places`` decimals (exact, never float). A signed
    value (combined energies) carries its sign in the top bit of the last byte."""
    negative = signed and bool(raw[-1] & SIGN_BIT)
    if negative:
        raw = raw[:-1] + bytes([raw[-1] & ~SIGN_BIT & 0xFF])
    value = Decimal(codec.bcd_decode(raw)).scaleb(-places)
    return -value if negative else value


@dataclass(frozen=True)
class _Register:
    name: str
    di: int
    size: int  # value bytes after the DI
    kind: str  # energy | signed_energy | demand | status | money


STATUS = _Register("status", codec.DI_STATUS_WORD_3, 2, "status")
REGISTERS = (
    _Register("forward_total", codec.DI_FORWARD_TOTAL, 4, "energy"),
    _Register("forward_sharp", codec.DI_FORWARD_SHARP, 4, "energy"),
    _Register("forward_peak", codec.DI_FORWARD_PEAK, 4, "energy"),
    _Register("forward_flat", codec.DI_FORWARD_FLAT, 4, "energy"),
    _Register("forward_valley", codec.DI_FORWARD_VALLEY, 4, "energy"),
    _Register("reverse_total", codec.DI_REVERSE_TOTAL, 4, "energy"),
    # combined reactive 1 is a signed register (DL/T 645-2007: top bit = sign)
    _Register("reactive_total", codec.DI_REACTIVE_TOTAL, 4, "signed_energy"),
    # XX.XXXX kW followed by the time of the maximum (YYMMDDhhmm), which we do not keep
    _Register("max_demand_kw", codec.DI_MAX_DEMAND, 3, "demand"),
    STATUS,
)
BALANCE = _Register("remaining_balance", codec.DI_REMAINING_BALANCE, 4, "money")
REQUIRED = {"forward_total"}


def relay_status_from_word(word: int) -> RelayStatus:
    return RelayStatus(
        relay_open=bool(word & codec.STATUS3_RELAY_OPEN),
        keep_power=bool(word & codec.STATUS3_KEEP_POWER),
        alarm=bool(word & codec.STATUS3_PRETRIP_ALARM),
        raw_status_word=word,
    )


def _decode_value(register: _Register, value: bytes) -> Decimal | RelayStatus:
    if register.kind == "status":
        return relay_status_from_word(int.from_bytes(value[:2], "little"))
    if register.kind == "demand":
        return _decimal(value[:3], 4)
    return _decimal(value[:4], 2, signed=register.kind == "signed_energy")


# --- the adapter --------------------------------------------------------------------------


class Dlt645Adapter:
    """``ProtocolAdapter`` for DL/T 645-2007 meters reached over TCP (directly, through a
    transparent concentrator/DTU, or the fleet simulator).

    ``timeout`` arguments bound each exchange (connect, and each request/reply), not a whole
    multi-frame read; waiting for a free pool connection is not counted.
    """

    protocol = "dlt645-2007"

    def __init__(
        self,
        *,
        max_connections_per_endpoint: int = 4,
        idle_timeout: float = 60.0,
        password: bytes = DEFAULT_PASSWORD,
        operator_code: bytes = DEFAULT_OPERATOR,
        meter_timezone: str = "Asia/Shanghai",
    ) -> None:
        if max_connections_per_endpoint < 1:
            raise ValueError("max_connections_per_endpoint must be at least 1")
        if len(password) != 4 or len(operator_code) != 4:
            raise ValueError("password (PA P0 P1 P2) and operator code (C0..C3) are 4 bytes each")
        self.max_connections_per_endpoint = max_connections_per_endpoint
        self.idle_timeout = idle_timeout
        self.password = bytes(password)
        self.operator_code = bytes(operator_code)
        self.meter_timezone = ZoneInfo(meter_timezone)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPools] = (
            weakref.WeakKeyDictionary()
        )
        self._loops_lock = threading.Lock()

    # -- pools ---------------------------------------------------------------------------

    def _pools(self) -> _LoopPools:
        loop = asyncio.get_running_loop()
        with self._loops_lock:  # one adapter may serve loops in several threads
            pools = self._loops.get(loop)
            if pools is None:
                # a loop closed without cancelling its tasks never ran its janitor: forget it
                for gone in [other for other in self._loops if other.is_closed()]:
                    del self._loops[gone]
                pools = self._loops[loop] = _LoopPools(self, loop)
        return pools

    @contextlib.asynccontextmanager
    async def _connection(self, endpoint: str, address: str, timeout: float) -> AsyncIterator[_Link]:
        check_address(address)
        pool = self._pools().pool(endpoint)  # ValueError for a malformed endpoint
        async with pool.connection(timeout, address) as link:
            yield link

    async def aclose(self) -> None:
        """Close this loop's connections (the next call opens new ones)."""
        with self._loops_lock:
            pools = self._loops.get(asyncio.get_running_loop())
        if pools is not None:
            pools.janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pools.janitor
            await asyncio.sleep(0)  # let the transports finish closing

    # -- one exchange --------------------------------------------------------------------

    async def _transact(
        self, link: _Link, endpoint: str, request: codec.Frame, *, what: str, timeout: float
    ) -> codec.Frame:
        """Send ``request`` and return the matching reply (a normal or an error reply)."""
        address = request.address

        def error(kind: str, message: str) -> HeadEndError:
            link.broken = True  # the stream is in an unknown state: never reuse it
            return HeadEndError(
                kind, f"meter {address} at {endpoint}: {message}", endpoint=endpoint, address=address
            )

        try:
            item = await asyncio.wait_for(link.exchange(codec.encode(request)), timeout)
        except TimeoutError:
            link.broken = True
            raise self._silence_error(link, endpoint, address, what, timeout) from None
        except BaseException:
            link.broken = True
            raise
        if isinstance(item, _Closed):
            got = link.protocol.assembler.pending
            if got:
                needed = link.protocol.assembler.expected_length()
                of = f" of a {needed}-byte frame" if needed else ""
                raise error(
                    "bad_frame",
                    f"bad frame (truncated): the connection closed after {len(got)} bytes{of} "
                    f"in reply to {what}: {got.hex(' ')}",
                )
            if item.exc is not None:
                reason = "reset" if isinstance(item.exc, ConnectionResetError) else str(item.exc)
                raise error("connection", f"connection {reason} while waiting for the reply to {what}")
            raise error("connection", f"the connection was closed before the meter replied to {what}")
        if isinstance(item, codec.FrameError):
            raise error("bad_frame", f"bad frame ({item.reason}) in reply to {what}: {item}")
        reply = item
        if reply.address != request.address:
            raise error("mismatch", f"reply to {what} came from meter {reply.address}")
        if not reply.is_reply or reply.function != request.function:
            raise error(
                "mismatch",
                f"reply to {what} has control code {reply.control:02X}h, "
                f"expected {request.control | codec.REPLY_FLAG:02X}h",
            )
        if request.control == codec.READ_DATA and not reply.is_error:
            asked = codec.di_from_bytes(request.data)
            if len(reply.data) < 4:
                raise error("bad_frame", f"bad frame (bad_length): reply to {what} has no data identifier")
            got_di = codec.di_from_bytes(reply.data)
            if got_di != asked:
                raise error(
                    "mismatch", f"reply to {what} carries data identifier {got_di:08X}, not {asked:08X}"
                )
        return reply

    @staticmethod
    def _silence_error(link: _Link, endpoint: str, address: str, what: str, timeout: float) -> HeadEndError:
        assembler = link.protocol.assembler
        pending = assembler.pending
        where = f"meter {address} at {endpoint}"
        if pending:
            needed = assembler.expected_length()
            of = f" of a {needed}-byte frame" if needed else " of a frame header"
            return HeadEndError(
                "bad_frame",
                f"{where}: bad frame (truncated): got {len(pending)} bytes{of} in reply to {what}, "
                f"then nothing for {timeout:g} s: {pending.hex(' ')}",
                endpoint=endpoint,
                address=address,
            )
        if assembler.garbage:
            garbage = bytes(assembler.garbage)
            shown = garbage[:32].hex(" ") + (" ..." if len(garbage) > 32 else "")
            return HeadEndError(
                "bad_frame",
                f"{where}: bad frame (no_frame): {len(garbage)} bytes without a DL/T 645 frame in reply "
                f"to {what} within {timeout:g} s: {shown}",
                endpoint=endpoint,
                address=address,
            )
        return HeadEndError(
            "timeout", f"{where}: no reply to {what} within {timeout:g} s", endpoint=endpoint, address=address
        )

    @staticmethod
    def _refusal(reply: codec.Frame, endpoint: str, what: str) -> tuple[int, HeadEndError]:
        error_byte = reply.data[0] if reply.data else 0
        text = codec.describe_error(error_byte) if reply.data else "no error byte given"
        return error_byte, HeadEndError(
            "refused",
            f"meter {reply.address} at {endpoint} refused {what}: {text} (error byte {error_byte:02X}h)",
            endpoint=endpoint,
            address=reply.address,
        )

    async def _read(self, link: _Link, endpoint: str, address: str, register: _Register, timeout: float):
        """The register's value, or the refusal (error byte, HeadEndError) if the meter refused."""
        what = f"read {register.name} ({register.di:08X})"
        reply = await self._transact(
            link, endpoint, codec.read_request(address, register.di), what=what, timeout=timeout
        )
        if reply.is_error:
            return self._refusal(reply, endpoint, what)
        value = reply.data[4:]
        if len(value) < register.size:
            link.broken = True
            raise HeadEndError(
                "bad_frame",
                f"meter {address} at {endpoint}: bad frame (bad_length): reply to {what} has "
                f"{len(value)} value bytes, {register.size} expected",
                endpoint=endpoint,
                address=address,
            )
        try:
            return _decode_value(register, value)
        except codec.FrameError as exc:
            raise HeadEndError(
                "bad_frame",
                f"meter {address} at {endpoint}: bad frame ({exc.reason}) in reply to {what}: {exc}",
                endpoint=endpoint,
                address=address,
            ) from None

    # -- ProtocolAdapter -----------------------------------------------------------------

    async def read_registers(
        self, endpoint: str, address: str, *, include_balance: bool = False, timeout: float = 3.0
    ) -> MeterRegisters:
        """Read total, the four TOU rates, reverse, reactive, maximum demand and status word 3
        (and the remaining balance) over one connection, one frame after another. Registers
        the meter refuses with "no data requested" are listed in ``missing``; any other
        refusal, a timeout or a bad frame fails the whole read."""
        plan = REGISTERS + ((BALANCE,) if include_balance else ())
        values: dict[str, Decimal | RelayStatus] = {}
        missing: list[str] = []
        async with self._connection(endpoint, address, timeout) as link:
            for register in plan:
                answer = await self._read(link, endpoint, address, register, timeout)
                if isinstance(answer, tuple):
                    error_byte, refusal = answer
                    if error_byte & ERROR_NO_DATA and register.name not in REQUIRED:
                        missing.append(register.name)
                        continue
                    raise refusal
                values[register.name] = answer
        return MeterRegisters(address=address, read_at=datetime.now(UTC), missing=missing, **values)

    async def read_status(self, endpoint: str, address: str, *, timeout: float = 3.0) -> RelayStatus:
        async with self._connection(endpoint, address, timeout) as link:
            answer = await self._read(link, endpoint, address, STATUS, timeout)
        if isinstance(answer, tuple):
            raise answer[1]
        return answer

    async def control(
        self, endpoint: str, address: str, action: str, *, valid_until: datetime, timeout: float = 3.0
    ) -> None:
        """Send one remote-control command (0x1C) and return when the meter acknowledged it
        (9Ch); raise ``HeadEndError(kind="refused")`` if it answered with an error. Sent once:
        after a timeout the command's fate is unknown and the caller decides what to do.

        ``action``: trip, close, close_allowed, alarm_on, alarm_off, keep_power_on,
        keep_power_off (hyphens accepted). An aware ``valid_until`` is converted to the meter's
        clock (``meter_timezone``); a naive one is taken as meter time.
        """
        name = action.replace("-", "_")
        if name not in codec.CONTROL_CODES:
            raise ValueError(
                f"unknown remote-control action {action!r}; one of {', '.join(codec.CONTROL_CODES)}"
            )
        check_address(address)
        request = codec.control_request(
            address,
            name,
            valid_until=self._meter_time(valid_until),
            password=self.password,
            operator=self.operator_code,
        )
        what = f"remote control {name.replace('_', '-')} ({codec.CONTROL_CODES[name]:02X}h)"
        async with self._connection(endpoint, address, timeout) as link:
            reply = await self._transact(link, endpoint, request, what=what, timeout=timeout)
        if reply.is_error:
            raise self._refusal(reply, endpoint, what)[1]
        logger.info("headend_control_acknowledged", endpoint=endpoint, address=address, action=name)

    def _meter_time(self, moment: datetime) -> datetime:
        if moment.tzinfo is None:
            return moment
        return moment.astimezone(self.meter_timezone).replace(tzinfo=None)

    # -- batch collection ----------------------------------------------------------------

    async def read_many(
        self,
        targets: list[tuple[str, str, bool]],
        *,
        concurrency: int,
        timeout: float,
    ) -> list[MeterRegisters | HeadEndError]:
        """Read ``(endpoint, address, include_balance)`` targets with at most ``concurrency``
        meter reads in flight overall and at most ``max_connections_per_endpoint`` per
        endpoint. Results are in the order of ``targets``; a failed meter's place holds its
        ``HeadEndError``."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        results: list[MeterRegisters | HeadEndError | None] = [None] * len(targets)
        by_endpoint: dict[str, deque[int]] = {}
        for index, (endpoint, address, _balance) in enumerate(targets):
            try:
                parse_endpoint(endpoint)
                check_address(address)
            except ValueError as exc:  # one bad row must not sink the batch
                results[index] = HeadEndError("connection", str(exc), endpoint=endpoint, address=address)
                continue
            by_endpoint.setdefault(endpoint, deque()).append(index)
        in_flight = asyncio.Semaphore(concurrency)

        async def worker(queue: deque[int]) -> None:
            # one worker per pool slot: an endpoint's backlog never blocks another endpoint
            while queue:
                index = queue.popleft()
                endpoint, address, include_balance = targets[index]
                async with in_flight:
                    try:
                        results[index] = await self.read_registers(
                            endpoint, address, include_balance=include_balance, timeout=timeout
                        )
                    except HeadEndError as exc:
                        results[index] = exc

        workers = [
            worker(queue)
            for queue in by_endpoint.values()
            for _ in range(min(len(queue), self.max_connections_per_endpoint, concurrency))
        ]
        await asyncio.gather(*workers)
        return results  # type: ignore[return-value]

    # -- sync facade (Celery tasks, management commands) ----------------------------------

    def run_sync(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` on a fresh event loop (``asyncio.run``) and close its connections.
        Safe in a Celery prefork worker; not from inside a running event loop."""

        async def main() -> T:
            try:
                return await coro
            finally:
                await self.aclose()

        return asyncio.run(main())

    def read_registers_sync(
        self, endpoint: str, address: str, *, include_balance: bool = False, timeout: float = 3.0
    ) -> MeterRegisters:
        return self.run_sync(
            self.read_registers(endpoint, address, include_balance=include_balance, timeout=timeout)
        )

    def read_status_sync(self, endpoint: str, address: str, *, timeout: float = 3.0) -> RelayStatus:
        return self.run_sync(self.read_status(endpoint, address, timeout=timeout))

    def control_sync(
        self, endpoint: str, address: str, action: str, *, valid_until: datetime, timeout: float = 3.0
    ) -> None:
        return self.run_sync(
            self.control(endpoint, address, action, valid_until=valid_until, timeout=timeout)
        )

    def read_many_sync(
        self, targets: Iterable[tuple[str, str, bool]], *, concurrency: int, timeout: float
    ) -> list[MeterRegisters | HeadEndError]:
        return self.run_sync(self.read_many(list(targets), concurrency=concurrency, timeout=timeout))
