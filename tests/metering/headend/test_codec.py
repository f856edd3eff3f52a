"""Our DL/T 645-2007 codec against bytes worked out by hand from the standard, and against
an independent implementation (the PyPI package ``dlt645``'s ``DLT645Protocol``)."""

import random
from datetime import datetime
from decimal import Decimal

import pytest
from dlt645 import DLT645Protocol

from metering.headend import dlt645 as codec

from .conftest import wire_address

# Header of every frame to meter 123456789012: 68, the address low byte first, 68.
#   68 12 90 78 56 34 12 68 sums to 0x286 (68+12=7A, +90=10A, +78=182, +56=1D8, +34=20C,
#   +12=21E, +68=286).
HEADER = bytes.fromhex("68 12 90 78 56 34 12 68")


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text)


class TestHandComputedFrames:
    def test_read_total_forward_active_energy(self):
        # DI 00 01 00 00 goes DI0 first (00 00 01 00) and +33h each: 33 33 34 33.
        # CS = 286 + 11 + 04 + 33 + 33 + 34 + 33 = 368h → 68h.
        expected = hexbytes("68 12 90 78 56 34 12 68 11 04 33 33 34 33 68 16")
        frame = codec.read_request("123456789012", codec.DI_FORWARD_TOTAL)
        assert codec.encode(frame, preamble=False) == expected
        assert codec.encode(frame) == hexbytes("FE FE FE FE") + expected

    def test_read_reply_with_energy(self):
        # 1234.56 kWh = BCD 00 12 34 56, low byte first 56 34 12 00, +33h: 89 67 45 33.
        # CS = 286 + 91 + 08 + (33 33 34 33 = CD) + (89 67 45 33 = 1A8) = 554h → 54h.
        raw = hexbytes("FE FE 68 12 90 78 56 34 12 68 91 08 33 33 34 33 89 67 45 33 54 16")
        frame = codec.decode(raw)
        assert frame == codec.Frame("123456789012", 0x91, hexbytes("00 00 01 00 56 34 12 00"))
        assert frame.is_reply and not frame.is_error and frame.function == codec.READ_DATA
        assert codec.decode_energy(frame.data[4:]) == Decimal("1234.56")

    def test_error_reply_no_data_requested(self):
        # D1 = reply (bit 7) + error (bit 6) + function 11; error byte 02 → 35.
        # CS = 286 + D1 + 01 + 35 = 38Dh → 8Dh.
        raw = hexbytes("68 12 90 78 56 34 12 68 D1 01 35 8D 16")
        assert codec.encode(codec.error_reply("123456789012", codec.READ_DATA, 0x02), preamble=False) == raw
        frame = codec.decode(raw)
        assert frame.is_error and codec.describe_error(frame.data[0]) == "no data requested"

    def test_remote_control_trip_layout(self):
        # DATA = PA P0 P1 P2 (02 00 00 00) + C0..C3 (00 00 00 00) + N1 N2 (1A 00)
        #        + N3..N8 = ss mm hh DD MM YY of 2026-11-28 10:30:00 = 00 30 10 28 11 26.
        # +33h: 35 33 33 33 | 33 33 33 33 | 4D 33 | 33 63 43 5B 44 59
        # CS = 286 + 1C + 10 = 2B2; data 35+33*7 = 19A, 4D+33 = 80, 33+63+43+5B+44+59 = 1D1;
        #      2B2 + 19A + 80 + 1D1 = 69Dh → 9Dh.
        expected = hexbytes(
            "68 12 90 78 56 34 12 68 1C 10 35 33 33 33 33 33 33 33 4D 33 33 63 43 5B 44 59 9D 16"
        )
        frame = codec.control_request("123456789012", "trip", valid_until=datetime(2026, 11, 28, 10, 30))
        assert codec.encode(frame, preamble=False) == expected
        assert codec.parse_control_request(codec.decode(expected)) == ("trip", datetime(2026, 11, 28, 10, 30))

    @pytest.mark.parametrize(
        ("action", "n1"),
        [
            ("trip", 0x1A),
            ("close_allowed", 0x1B),
            ("close", 0x1C),
            ("alarm_on", 0x2A),
            ("alarm_off", 0x2B),
            ("keep_power_on", 0x3A),
            ("keep_power_off", 0x3B),
        ],
    )
    def test_remote_control_codes(self, action, n1):
        frame = codec.control_request("000000000001", action, valid_until=datetime(2030, 1, 2, 3, 4, 5))
        assert frame.data[8] == n1 and frame.data[9] == 0
        assert frame.data[10:16] == hexbytes("05 04 03 02 01 30")
        assert codec.parse_control_request(frame) == (action, datetime(2030, 1, 2, 3, 4, 5))

    def test_remote_control_acknowledgement(self):
        # 9C, no data: CS = 286 + 9C + 00 = 322h → 22h (also what the package simulator sends).
        assert codec.encode(codec.control_reply("123456789012"), preamble=False) == hexbytes(
            "68 12 90 78 56 34 12 68 9C 00 22 16"
        )

    def test_address_is_low_byte_first(self):
        assert codec.address_to_wire("123456789012") == hexbytes("12 90 78 56 34 12")
        assert codec.address_from_wire(hexbytes("12 90 78 56 34 12")) == "123456789012"
        assert codec.address_to_wire("000000000001") == hexbytes("01 00 00 00 00 00")


class TestBcdValues:
    @pytest.mark.parametrize(
        ("kwh", "wire"),
        [
            (Decimal("0"), "00 00 00 00"),
            (Decimal("0.01"), "01 00 00 00"),
            (Decimal("1234.56"), "56 34 12 00"),
            (Decimal("999999.99"), "99 99 99 99"),
            # the register is XXXXXX.XX: it rolls over to zero after 999999.99
            (Decimal("1000000.00"), "00 00 00 00"),
            (Decimal("1000000.01"), "01 00 00 00"),
            (Decimal("1000123.45"), "45 23 01 00"),
        ],
    )
    def test_energy(self, kwh, wire):
        assert codec.encode_energy(kwh) == hexbytes(wire)
        assert codec.decode_energy(hexbytes(wire)) == kwh % Decimal("1000000")

    def test_energy_decodes_to_decimal(self):
        value = codec.decode_energy(hexbytes("99 99 99 99"))
        assert isinstance(value, Decimal) and value == Decimal("999999.99")

    def test_demand_and_time(self):
        raw = codec.encode_demand(Decimal("7.5"), datetime(2026, 11, 1, 10, 45))
        # XX.XXXX kW: 07 50 00 → 00 50 07; YYMMDDhhmm 2611011045 low byte first: 45 10 01 11 26
        assert raw == hexbytes("00 50 07 45 10 01 11 26")
        assert codec.decode_demand(raw) == Decimal("7.5")

    def test_bcd_round_trip(self):
        for value in (0, 1, 99, 100, 12345678, 99999999):
            assert codec.bcd_decode(codec.bcd_encode(value, 4)) == value
        with pytest.raises(ValueError):
            codec.bcd_encode(100000000, 4)

    def test_data_identifier(self):
        assert codec.di_bytes(0x04000503) == hexbytes("03 05 00 04")
        assert codec.di_from_bytes(hexbytes("03 05 00 04 99")) == 0x04000503


class TestFrameErrors:
    GOOD = hexbytes("68 12 90 78 56 34 12 68 91 08 33 33 34 33 89 67 45 33 54 16")

    def reason(self, raw: bytes) -> str:
        with pytest.raises(codec.FrameError) as info:
            codec.decode(raw)
        return info.value.reason

    def test_round_trip(self):
        frame = codec.decode(self.GOOD)
        assert codec.encode(frame, preamble=False) == self.GOOD

    def test_truncated(self):
        assert self.reason(b"") == "truncated"
        assert self.reason(hexbytes("FE FE")) == "truncated"
        assert self.reason(self.GOOD[:11]) == "truncated"
        with pytest.raises(codec.FrameError, match="truncated: 19 of 20 bytes"):
            codec.decode(self.GOOD[:-1])

    def test_bad_start(self):
        assert self.reason(b"\x00" + self.GOOD[1:]) == "bad_start"
        bad = bytearray(self.GOOD)
        bad[7] = 0x67
        assert self.reason(bytes(bad)) == "bad_start"

    def test_bad_checksum(self):
        bad = bytearray(self.GOOD)
        bad[-2] ^= 0x01
        with pytest.raises(codec.FrameError, match="frame says 55h, computed 54h") as info:
            codec.decode(bytes(bad))
        assert info.value.reason == "bad_checksum"
        bad = bytearray(self.GOOD)
        bad[12] ^= 0x10  # a data byte changed in transit
        assert self.reason(bytes(bad)) == "bad_checksum"

    def test_bad_end(self):
        assert self.reason(self.GOOD[:-1] + b"\x17") == "bad_end"

    def test_bad_length(self):
        assert self.reason(self.GOOD + b"\x00") == "bad_length"
        too_long = bytearray(self.GOOD)
        too_long[9] = 201
        assert self.reason(bytes(too_long) + bytes(200)) == "bad_length"
        with pytest.raises(codec.FrameError) as info:
            codec.di_from_bytes(b"\x00\x01")
        assert info.value.reason == "bad_length"

    def test_bad_address(self):
        raw = bytearray(codec.encode(codec.read_request("123456789012", 1), preamble=False))
        raw[1] = 0x1A  # not a BCD digit pair
        raw[-2] = codec.checksum(raw[:-2])
        assert self.reason(bytes(raw)) == "bad_address"
        for address in ("12345678901", "12345678901A", "1234567890123"):
            with pytest.raises(codec.FrameError) as info:
                codec.address_to_wire(address)
            assert info.value.reason == "bad_address"

    def test_bad_bcd(self):
        with pytest.raises(codec.FrameError) as info:
            codec.decode_energy(hexbytes("7A 00 00 00"))
        assert info.value.reason == "bad_bcd"

    def test_bad_remote_control_requests(self):
        short = codec.Frame("123456789012", codec.REMOTE_CONTROL, bytes(15))
        with pytest.raises(codec.FrameError) as info:
            codec.parse_control_request(short)
        assert info.value.reason == "bad_length"
        good = codec.control_request("123456789012", "trip", valid_until=datetime(2026, 1, 1))
        unknown = codec.Frame(good.address, good.control, good.data[:8] + b"\x4a" + good.data[9:])
        with pytest.raises(codec.FrameError) as info:
            codec.parse_control_request(unknown)
        assert info.value.reason == "bad_control"
        for deadline in ("00 00 00 31 02 26", "00 00 00 1A 01 26"):  # 31 February; a non-BCD day
            bad = codec.Frame(good.address, good.control, good.data[:10] + hexbytes(deadline))
            with pytest.raises(codec.FrameError) as info:
                codec.parse_control_request(bad)
            assert info.value.reason == "bad_deadline"


class TestAgainstThePackageCodec:
    """The package's ``DLT645Protocol`` is an independent implementation; it takes the
    address already in wire order (memo §1.1), so we give it the reversed address."""

    def random_frames(self, count: int):
        rng = random.Random(645)
        for _ in range(count):
            address = "".join(rng.choice("0123456789") for _ in range(12))
            control = rng.choice(
                [0x11, 0x91, 0xD1, 0x13, 0x93, 0x1C, 0x9C, 0xDC, 0x08, 0x14, rng.randrange(256)]
            )
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, codec.MAX_DATA_LENGTH + 1)))
            yield codec.Frame(address, control, data)

    def test_encoder_is_byte_identical(self):
        for frame in self.random_frames(2000):
            theirs = DLT645Protocol.build_frame(wire_address(frame.address), frame.control, frame.data, 4)
            assert codec.encode(frame) == bytes(theirs), frame
            theirs = DLT645Protocol.build_frame(wire_address(frame.address), frame.control, frame.data, 0)
            assert codec.encode(frame, preamble=False) == bytes(theirs), frame

    def test_each_decodes_the_other(self):
        for frame in self.random_frames(500):
            parsed = DLT645Protocol.deserialize(codec.encode(frame))
            assert bytes(parsed.addr) == wire_address(frame.address)
            assert (parsed.ctrl_code, bytes(parsed.data)) == (frame.control, frame.data)
            theirs = DLT645Protocol.build_frame(wire_address(frame.address), frame.control, frame.data)
            assert codec.decode(bytes(theirs)) == frame
