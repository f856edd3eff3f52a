"""DL/T 645-2007 frame codec.

Frame: ``68 A0..A5 68 C L DATA CS 16`` — the 6-byte BCD address low byte first on the
wire, every DATA byte offset by +0x33, CS = sum of the bytes from the first 0x68 through
DATA, modulo 256. A sender may precede a frame with FE wake-up bytes.

This module is pure (bytes in, bytes out) and shared by the head-end client and the
meter-fleet simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

START = 0x68
END = 0x16
PREAMBLE = b"\xfe\xfe\xfe\xfe"
BROADCAST_ADDRESS = "999999999999"
MAX_DATA_LENGTH = 200

# Control codes (master → meter); a normal reply sets bit 7, an error reply bits 7 and 6.
READ_DATA = 0x11
READ_ADDRESS = 0x13
BROADCAST_TIME = 0x08
REMOTE_CONTROL = 0x1C
REPLY_FLAG = 0x80
ERROR_FLAG = 0x40

# Data identifiers (DI3 DI2 DI1 DI0 as written in the standard).
DI_FORWARD_TOTAL = 0x00010000
DI_FORWARD_SHARP = 0x00010100
DI_FORWARD_PEAK = 0x00010200
DI_FORWARD_FLAT = 0x00010300
DI_FORWARD_VALLEY = 0x00010400
DI_REVERSE_TOTAL = 0x00020000
DI_REACTIVE_TOTAL = 0x00030000  # combined reactive 1, total
DI_MAX_DEMAND = 0x01010000  # forward active maximum demand and its time
DI_STATUS_WORD_3 = 0x04000503  # meter running status word 3 (relay, keep-power)
DI_REMAINING_BALANCE = 0x00900200  # current remaining amount (local cost control)
DI_DATE_WEEK = 0x04000101
DI_TIME = 0x04000102

ENERGY_DIS = {
    DI_FORWARD_TOTAL: "forward_total",
    DI_FORWARD_SHARP: "forward_sharp",
    DI_FORWARD_PEAK: "forward_peak",
    DI_FORWARD_FLAT: "forward_flat",
    DI_FORWARD_VALLEY: "forward_valley",
    DI_REVERSE_TOTAL: "reverse_total",
    DI_REACTIVE_TOTAL: "reactive_total",
}

# Status word 3 bits.
STATUS3_RELAY_OPEN = 1 << 4  # relay state: 0 = closed (power on), 1 = open (tripped)
STATUS3_RELAY_COMMAND_OPEN = 1 << 6  # last relay command: 0 = close, 1 = trip
STATUS3_PRETRIP_ALARM = 1 << 7
STATUS3_KEEP_POWER = 1 << 12

# Remote-control N1 codes.
CONTROL_CODES = {
    "trip": 0x1A,
    "close_allowed": 0x1B,
    "close": 0x1C,
    "alarm_on": 0x2A,
    "alarm_off": 0x2B,
    "keep_power_on": 0x3A,
    "keep_power_off": 0x3B,
}
CONTROL_ACTIONS = {code: action for action, code in CONTROL_CODES.items()}

# Error byte of an error reply (bit meanings from the standard).
ERROR_BITS = {
    0x01: "other error",
    0x02: "no data requested",
    0x04: "password error or unauthorised",
    0x08: "communication rate cannot be changed",
    0x10: "annual time zones exceeded",
    0x20: "daily time periods exceeded",
    0x40: "tariff count exceeded",
}


class FrameError(ValueError):
    """A frame that cannot be decoded; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Frame:
    address: str  # 12 decimal digits, most significant first (as printed on the meter)
    control: int
    data: bytes  # with the 0x33 offset removed

    @property
    def is_reply(self) -> bool:
        return bool(self.control & REPLY_FLAG)

    @property
    def is_error(self) -> bool:
        return bool(self.control & ERROR_FLAG)

    @property
    def function(self) -> int:
        return self.control & 0x1F


def address_to_wire(address: str) -> bytes:
    if len(address) != 12 or not address.isdigit():
        raise FrameError("bad_address", f"meter address must be 12 decimal digits, got {address!r}")
    return bytes(int(address[i : i + 2], 16) for i in range(10, -1, -2))


def address_from_wire(raw: bytes) -> str:
    text = "".join(f"{b:02X}" for b in reversed(raw))
    if not text.isdigit():
        raise FrameError("bad_address", f"address bytes are not BCD: {raw.hex(' ')}")
    return text


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def encode(frame: Frame, *, preamble: bool = True) -> bytes:
    if len(frame.data) > MAX_DATA_LENGTH:
        raise FrameError("too_long", "data field too long")
    body = bytearray([START])
    body += address_to_wire(frame.address)
    body += bytes([START, frame.control, len(frame.data)])
    body += bytes((b + 0x33) & 0xFF for b in frame.data)
    body.append(checksum(body))
    body.append(END)
    return (PREAMBLE if preamble else b"") + bytes(body)


def frame_length_needed(buffer: bytes) -> int | None:
    """How many bytes (from the first 0x68) the frame at the start of ``buffer`` needs, or
    None if not enough header has arrived yet. ``buffer`` must start at 0x68."""
    if len(buffer) < 10:
        return None
    return 12 + buffer[9]


def decode(raw: bytes) -> Frame:
    """Decode one complete frame (leading FE bytes allowed). Raises FrameError with a
    reason of truncated / bad_start / bad_checksum / bad_end / bad_address / bad_length."""
    start = 0
    while start < len(raw) and raw[start] == 0xFE:
        start += 1
    frame = raw[start:]
    if not frame:
        raise FrameError("truncated", "empty frame")
    if frame[0] != START:
        raise FrameError("bad_start", f"frame does not start with 68h (got {frame[0]:02X}h)")
    if len(frame) < 12:
        raise FrameError("truncated", f"frame truncated: {len(frame)} bytes, at least 12 needed")
    if frame[7] != START:
        raise FrameError("bad_start", f"second start byte is {frame[7]:02X}h, not 68h")
    length = frame[9]
    if length > MAX_DATA_LENGTH:
        raise FrameError("bad_length", f"data length {length} exceeds {MAX_DATA_LENGTH}")
    expected = 12 + length
    if len(frame) < expected:
        raise FrameError("truncated", f"frame truncated: {len(frame)} of {expected} bytes")
    if len(frame) > expected:
        raise FrameError("bad_length", f"{len(frame) - expected} unexpected bytes after the frame")
    if frame[-1] != END:
        raise FrameError("bad_end", f"frame does not end with 16h (got {frame[-1]:02X}h)")
    if checksum(frame[: 10 + length]) != frame[10 + length]:
        raise FrameError(
            "bad_checksum",
            f"checksum mismatch: frame says {frame[10 + length]:02X}h, "
            f"computed {checksum(frame[: 10 + length]):02X}h",
        )
    data = bytes((b - 0x33) & 0xFF for b in frame[10 : 10 + length])
    return Frame(address=address_from_wire(frame[1:7]), control=frame[8], data=data)


# --- data field helpers -------------------------------------------------------------------


def di_bytes(di: int) -> bytes:
    """DI0 first on the wire."""
    return di.to_bytes(4, "little")


def di_from_bytes(raw: bytes) -> int:
    if len(raw) < 4:
        raise FrameError("bad_length", "data identifier needs 4 bytes")
    return int.from_bytes(raw[:4], "little")


def bcd_encode(value: int, size: int) -> bytes:
    """Unsigned integer → ``size`` BCD bytes, low byte first."""
    if value < 0 or value >= 10 ** (2 * size):
        raise ValueError(f"{value} does not fit {size} BCD bytes")
    digits = f"{value:0{2 * size}d}"
    return bytes(int(digits[i : i + 2], 16) for i in range(2 * size - 2, -2, -2))


def bcd_decode(raw: bytes) -> int:
    text = "".join(f"{b:02X}" for b in reversed(raw))
    if not text.isdigit():
        raise FrameError("bad_bcd", f"not BCD: {raw.hex(' ')}")
    return int(text)


def encode_energy(kwh: Decimal) -> bytes:
    """XXXXXX.XX kWh in 4 BCD bytes; the register wraps after 999999.99."""
    hundredths = int((Decimal(kwh) * 100).to_integral_value(rounding=ROUND_HALF_UP)) % 10**8
    return bcd_encode(hundredths, 4)


def decode_energy(raw: bytes) -> Decimal:
    if len(raw) < 4:
        raise FrameError("bad_length", f"an energy value needs 4 bytes, got {len(raw)}")
    return Decimal(bcd_decode(raw[:4])).scaleb(-2)


def encode_balance(yuan: Decimal) -> bytes:
    """XXXXXX.XX yuan in 4 BCD bytes (remaining amount)."""
    return bcd_encode(int((Decimal(yuan) * 100).to_integral_value(rounding=ROUND_HALF_UP)), 4)


def encode_demand(kw: Decimal, at: datetime) -> bytes:
    """XX.XXXX kW (3 bytes) followed by YYMMDDhhmm (5 bytes)."""
    value = bcd_encode(int((Decimal(kw) * 10000).to_integral_value(rounding=ROUND_HALF_UP)), 3)
    stamp = bcd_encode(int(at.strftime("%y%m%d%H%M")), 5)
    return value + stamp


def decode_demand(raw: bytes) -> Decimal:
    if len(raw) < 3:
        raise FrameError("bad_length", f"a demand value needs 3 bytes, got {len(raw)}")
    return Decimal(bcd_decode(raw[:3])).scaleb(-4)


def read_request(address: str, di: int) -> Frame:
    return Frame(address=address, control=READ_DATA, data=di_bytes(di))


def read_reply(address: str, di: int, value: bytes) -> Frame:
    return Frame(address=address, control=READ_DATA | REPLY_FLAG, data=di_bytes(di) + value)


def error_reply(address: str, function: int, error_byte: int) -> Frame:
    return Frame(address=address, control=function | REPLY_FLAG | ERROR_FLAG, data=bytes([error_byte]))


def describe_error(error_byte: int) -> str:
    names = [name for bit, name in ERROR_BITS.items() if error_byte & bit]
    return ", ".join(names) or f"error {error_byte:02X}h"


def control_request(
    address: str,
    action: str,
    *,
    valid_until: datetime,
    password: bytes = b"\x02\x00\x00\x00",
    operator: bytes = b"\x00\x00\x00\x00",
) -> Frame:
    """Remote control 0x1C: PA P0P1P2 (4 bytes) + operator C0..C3 + N1 N2 + N3..N8
    (validity deadline ssmmhhDDMMYY, BCD)."""
    if action not in CONTROL_CODES:
        raise ValueError(f"unknown control action {action!r}")
    deadline = bytes(
        int(f"{v:02d}", 16)
        for v in (
            valid_until.second,
            valid_until.minute,
            valid_until.hour,
            valid_until.day,
            valid_until.month,
            valid_until.year % 100,
        )
    )
    data = password + operator + bytes([CONTROL_CODES[action], 0x00]) + deadline
    return Frame(address=address, control=REMOTE_CONTROL, data=data)


def parse_control_request(frame: Frame) -> tuple[str, datetime]:
    """(action, valid_until) of a 0x1C request; raises FrameError if malformed."""
    if len(frame.data) != 16:
        raise FrameError("bad_length", f"remote control data is 16 bytes, got {len(frame.data)}")
    code = frame.data[8]
    if code not in CONTROL_ACTIONS:
        raise FrameError("bad_control", f"unknown remote-control code {code:02X}h")
    try:
        ss, mm, hh, dd, mo, yy = (int(f"{b:02X}") for b in frame.data[10:16])  # non-BCD → ValueError
        deadline = datetime(2000 + yy, mo, dd, hh, mm, ss)
    except ValueError as exc:
        raise FrameError("bad_deadline", f"invalid validity deadline: {exc}") from None
    return CONTROL_ACTIONS[code], deadline


def control_reply(address: str) -> Frame:
    return Frame(address=address, control=REMOTE_CONTROL | REPLY_FLAG, data=b"")
