"""Send one remote-control command (DL/T 645-2007, 0x1C) to a meter at any TCP endpoint and
read its relay state back:

    python manage.py meter_control --endpoint 127.0.0.1:9645 --address 123456789012 --action trip

Sent once, never retried here: after a timeout the command's fate is unknown; read the
status (meter_read) before deciding to send it again.
"""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from metering.headend.base import HeadEndError
from metering.headend.registry import get_adapter
from metering.management.commands.meter_read import describe_status, headend_failure, validate_target

ACTIONS = ("trip", "close", "close-allowed", "alarm-on", "alarm-off", "keep-power-on", "keep-power-off")


class Command(BaseCommand):
    help = "Send a remote-control command (trip, close, alarm, keep-power) to a meter over DL/T 645-2007."
    requires_system_checks = []  # see meter_read

    def add_arguments(self, parser):
        parser.add_argument("--endpoint", required=True, help="HOST:PORT of the meter, DTU or concentrator")
        parser.add_argument("--address", required=True, help="12-digit meter communication address")
        parser.add_argument("--action", required=True, choices=ACTIONS)
        parser.add_argument(
            "--valid-minutes",
            type=int,
            default=10,
            help="the command is valid for this many minutes of the meter's clock (default 10)",
        )
        parser.add_argument("--timeout", type=float, default=3.0, help="seconds per exchange (default 3)")
        parser.add_argument(
            "--protocol", default="dlt645-2007", help="head-end protocol (default dlt645-2007)"
        )

    def handle(self, *args, endpoint, address, action, valid_minutes, timeout, protocol, **options):
        validate_target(endpoint, address, timeout)
        if not 1 <= valid_minutes <= 24 * 60:
            raise CommandError(f"--valid-minutes must be between 1 and 1440, got {valid_minutes}")
        try:
            adapter = get_adapter(protocol)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        valid_until = timezone.localtime() + timedelta(minutes=valid_minutes)

        async def send_and_read_back():
            await adapter.control(endpoint, address, action, valid_until=valid_until, timeout=timeout)
            self.stdout.write(
                f"meter {address} at {endpoint} acknowledged {action} "
                f"(valid until {valid_until:%Y-%m-%d %H:%M:%S %z})"
            )
            try:
                return await adapter.read_status(endpoint, address, timeout=timeout)
            except HeadEndError as exc:
                raise CommandError(
                    f"{action} was acknowledged, but reading the relay state back failed: {exc.kind}: {exc}"
                ) from None

        try:
            status = adapter.run_sync(send_and_read_back())
        except HeadEndError as exc:
            raise headend_failure(exc) from None
        self.stdout.write(f"read back: {describe_status(status)}")
