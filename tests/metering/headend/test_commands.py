"""``meter_read`` and ``meter_control`` against the dlt645 package's simulator and against
peers that fail: a closed port, a silent listener, a meter that sends a bad checksum."""

from __future__ import annotations

import io
import socket
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from metering.headend import dlt645 as codec

from .conftest import METER_ADDRESS, endpoint_of


def command(name: str, **options) -> str:
    out = io.StringIO()
    call_command(name, stdout=out, **options)
    return out.getvalue()


@pytest.fixture
def silent_endpoint():
    """Listening (so the connection is accepted by the kernel) but never answering."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def closed_endpoint():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


class BadChecksumMeter(socketserver.BaseRequestHandler):
    def handle(self):
        request = codec.decode(self.request.recv(1024))
        reply = bytearray(
            codec.encode(codec.read_reply(request.address, codec.di_from_bytes(request.data), bytes(4)))
        )
        reply[-2] ^= 0x5A
        self.request.sendall(bytes(reply))


@pytest.fixture
def bad_checksum_endpoint():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), BadChecksumMeter)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_meter_read_prints_registers_with_units(package_meter):
    out = command("meter_read", endpoint=endpoint_of(package_meter), address=METER_ADDRESS, balance=True)
    lines = out.splitlines()
    assert lines[0].startswith(f"meter {METER_ADDRESS} at {endpoint_of(package_meter)}, read ")
    assert "forward active, total" in lines[1] and lines[1].endswith("1234.56 kWh")
    assert lines[5].endswith("634.50 kWh")  # valley
    assert any(line.endswith("56.78 kvarh") for line in lines)
    assert any(line.endswith("7.5000 kW") for line in lines)
    assert any("remaining balance" in line and line.endswith("88.88 yuan") for line in lines)
    assert lines[-1].strip() == "relay: closed (power on); keep-power: off; alarm: off; status word 3 = 0000h"


def test_meter_read_lists_what_the_meter_does_not_have(package_fleet):
    out = command("meter_read", endpoint=endpoint_of(package_fleet[0]), address="410000000001", balance=True)
    assert "not answered by the meter (no data): remaining_balance" in out


def test_meter_control_trip_and_close_with_read_back(package_meter):
    endpoint = endpoint_of(package_meter)
    out = command("meter_control", endpoint=endpoint, address=METER_ADDRESS, action="trip")
    assert f"meter {METER_ADDRESS} at {endpoint} acknowledged trip (valid until " in out
    assert "read back: relay: open (tripped, no power)" in out and "status word 3 = 0050h" in out
    assert package_meter.relay_open
    out = command("meter_control", endpoint=endpoint, address=METER_ADDRESS, action="close", valid_minutes=2)
    assert "read back: relay: closed (power on)" in out
    assert package_meter.controls_received == [0x1A, 0x1C]


def test_meter_control_refusal_is_a_command_error(package_meter):
    endpoint = endpoint_of(package_meter)
    out = command("meter_control", endpoint=endpoint, address=METER_ADDRESS, action="keep-power-on")
    assert "keep-power: on" in out
    with pytest.raises(CommandError) as info:
        command("meter_control", endpoint=endpoint, address=METER_ADDRESS, action="trip")
    assert str(info.value) == (
        f"refused: meter {METER_ADDRESS} at {endpoint} refused remote control trip (1Ah): "
        "other error (error byte 01h)"
    )
    assert not package_meter.relay_open


def test_timeout_and_bad_frame_are_command_errors(silent_endpoint, bad_checksum_endpoint):
    with pytest.raises(CommandError) as info:
        command("meter_read", endpoint=silent_endpoint, address=METER_ADDRESS, timeout=0.3)
    assert str(info.value) == (
        f"timeout: meter {METER_ADDRESS} at {silent_endpoint}: "
        "no reply to read forward_total (00010000) within 0.3 s"
    )
    with pytest.raises(CommandError, match=r"^bad_frame: .*bad frame \(bad_checksum\).*checksum mismatch"):
        command("meter_read", endpoint=bad_checksum_endpoint, address=METER_ADDRESS, timeout=1)
    with pytest.raises(
        CommandError, match=r"^timeout: .*no reply to remote control trip \(1Ah\) within 0.3 s$"
    ):
        command("meter_control", endpoint=silent_endpoint, address=METER_ADDRESS, action="trip", timeout=0.3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"endpoint": "127.0.0.1", "address": METER_ADDRESS}, "--endpoint must be HOST:PORT"),
        ({"endpoint": "127.0.0.1:99999", "address": METER_ADDRESS}, "--endpoint must be HOST:PORT"),
        ({"endpoint": "127.0.0.1:9645", "address": "12345678901X"}, "--address must be the meter's 12-digit"),
        (
            {"endpoint": "127.0.0.1:9645", "address": METER_ADDRESS, "timeout": 0},
            "--timeout must be a positive number",
        ),
    ],
)
def test_arguments_are_validated_before_any_io(options, message):
    with pytest.raises(CommandError, match=message):
        command("meter_read", **options)


def test_meter_control_rejects_unknown_actions_and_deadlines():
    with pytest.raises(CommandError, match="invalid choice: 'explode'"):
        command("meter_control", endpoint="127.0.0.1:9645", address=METER_ADDRESS, action="explode")
    with pytest.raises(CommandError, match="--valid-minutes must be between 1 and 1440"):
        command(
            "meter_control", endpoint="127.0.0.1:9645", address=METER_ADDRESS, action="trip", valid_minutes=0
        )


@pytest.mark.parametrize("peer", ["closed", "silent"])
def test_exit_code_and_message_from_the_shell(peer, closed_endpoint, silent_endpoint):
    endpoint = closed_endpoint if peer == "closed" else silent_endpoint
    result = subprocess.run(
        [
            sys.executable,
            str(Path(settings.BASE_DIR) / "manage.py"),
            "meter_read",
            "--endpoint",
            endpoint,
            "--address",
            METER_ADDRESS,
            "--timeout",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    expected = {
        "closed": f"CommandError: connection: cannot connect to {endpoint}: connection refused",
        "silent": f"CommandError: timeout: meter {METER_ADDRESS} at {endpoint}: "
        "no reply to read forward_total (00010000) within 0.5 s",
    }[peer]
    assert result.stderr.strip().splitlines() == [expected]
