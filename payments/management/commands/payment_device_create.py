"""Create a terminal or IVR client of the payment API and print its secret, once.

manage.py payment_device_create --code T001 --kind terminal --hall QX-H01
manage.py payment_device_create --code T001 --reset-secret   # a new secret for T001
"""

from django.core.management.base import BaseCommand, CommandError

from core.exceptions import ApplicationError
from payments.models import TerminalDevice
from payments.services.devices import device_create, device_secret_reset


class Command(BaseCommand):
    help = "Create a payment terminal or IVR device and print its secret (shown only this once)."

    def add_arguments(self, parser):
        parser.add_argument("--code", required=True)
        parser.add_argument(
            "--kind", choices=TerminalDevice.Kind.values, default=TerminalDevice.Kind.TERMINAL
        )
        parser.add_argument("--hall", help="code of the device's org unit (a service hall)")
        parser.add_argument(
            "--reset-secret", action="store_true", help="give an existing device a new secret"
        )

    def handle(self, *args, code, kind, hall, reset_secret, **options):
        try:
            if reset_secret:
                secret = device_secret_reset(code=code)
            else:
                if not hall:
                    raise CommandError("--hall is required")
                device, secret = device_create(code=code, kind=kind, hall_code=hall)
        except ApplicationError as exc:
            raise CommandError(str(exc.message)) from exc
        self.stdout.write(f"device: {code}\nsecret: {secret}\n")
        self.stdout.write(f"Authorization: Device {code}:{secret}\n")
        self.stderr.write("Store the secret now: it is not kept and cannot be shown again.\n")
