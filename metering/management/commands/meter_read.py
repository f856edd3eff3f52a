"""Read one meter's registers over DL/T 645 from any TCP endpoint:

python manage.py meter_read --endpoint 127.0.0.1:9645 --address 123456789012 [--balance]
"""

from __future__ import annotations

import re
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from metering.headend.base import HeadEndError, MeterRegisters, RelayStatus
from metering.headend.client import parse_endpoint
from metering.headend.registry import get_adapter

ADDRESS_RE = re.compile(r"^\d{12}$")
REGISTER_LINES = (
    ("forward_total", "forward active, total", "kWh"),
    ("forward_sharp", "forward active, sharp (rate 1)", "kWh"),
    ("forward_peak", "forward active, peak (rate 2)", "kWh"),
    ("forward_flat", "forward active, flat (rate 3)", "kWh"),
    ("forward_valley", "forward active, valley (rate 4)", "kWh"),
    ("reverse_total", "reverse active, total", "kWh"),
    ("reactive_total", "reactive (combined 1), total", "kvarh"),
    ("max_demand_kw", "maximum demand, forward active", "kW"),
    ("remaining_balance", "remaining balance (in meter)", "yuan"),
)


def validate_target(endpoint: str, address: str, timeout: float) -> None:
    """Check the command-line target before any I/O; CommandError with a one-line message."""
    try:
        parse_endpoint(endpoint)
    except ValueError:
        raise CommandError(f"--endpoint must be HOST:PORT with a port 1-65535, got {endpoint!r}") from None
    if not ADDRESS_RE.match(address):
        raise CommandError(f"--address must be the meter's 12-digit communication address, got {address!r}")
    if not timeout > 0:
        raise CommandError(f"--timeout must be a positive number of seconds, got {timeout}")


def headend_failure(exc: HeadEndError) -> CommandError:
    return CommandError(f"{exc.kind}: {exc}")


def describe_status(status: RelayStatus) -> str:
    relay = "open (tripped, no power)" if status.relay_open else "closed (power on)"
    return (
        f"relay: {relay}; keep-power: {'on' if status.keep_power else 'off'}; "
        f"alarm: {'on' if status.alarm else 'off'}; status word 3 = {status.raw_status_word:04X}h"
    )


def format_registers(registers: MeterRegisters, endpoint: str) -> list[str]:
    read_at = timezone.localtime(registers.read_at)
    lines = [f"meter {registers.address} at {endpoint}, read {read_at:%Y-%m-%d %H:%M:%S %z}"]
    for name, label, unit in REGISTER_LINES:
        value: Decimal | None = getattr(registers, name)
        if value is not None:
            lines.append(f"  {label:<32}{value:>14} {unit}")
    if registers.status is not None:
        lines.append(f"  {describe_status(registers.status)}")
    if registers.missing:
        lines.append(f"  not answered by the meter (no data): {', '.join(registers.missing)}")
    return lines


class Command(BaseCommand):
    help = "Read a meter's energy registers and relay status over DL/T 645-2007 from HOST:PORT."
    # an operator's diagnostic that touches no model: it must work even if an unrelated app
    # fails a system check
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--endpoint", required=True, help="HOST:PORT of the meter, DTU or concentrator")
        parser.add_argument("--address", required=True, help="12-digit meter communication address")
        parser.add_argument("--timeout", type=float, default=3.0, help="seconds per exchange (default 3)")
        parser.add_argument("--balance", action="store_true", help="also read the meter's remaining balance")
        parser.add_argument(
            "--protocol", default="dlt645-2007", help="head-end protocol (default dlt645-2007)"
        )

    def handle(self, *args, endpoint, address, timeout, balance, protocol, **options):
        validate_target(endpoint, address, timeout)
        try:
            adapter = get_adapter(protocol)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        try:
            registers = adapter.run_sync(
                adapter.read_registers(endpoint, address, include_balance=balance, timeout=timeout)
            )
        except HeadEndError as exc:
            raise headend_failure(exc) from None
        self.stdout.write("\n".join(format_registers(registers, endpoint)))
