import random
import time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from customers.models import Customer
from demo import billing as billing_builder
from demo import customers as customer_builder
from demo import metering as metering_builder
from demo import payments as payments_builder
from demo.org import DEMO_PASSWORD, DEMO_USERS
from demo.portal import load_portal


class Command(BaseCommand):
    help = "Load the demo utility: org tree, staff logins, transformer areas and customers."

    def add_arguments(self, parser):
        parser.add_argument("--customers", type=int, default=2000, help="number of customers (default 2000)")
        parser.add_argument("--seed", type=int, default=2026, help="random seed; same seed, same utility")
        parser.add_argument("--if-empty", action="store_true", help="do nothing if customers exist")
        parser.add_argument(
            "--history-days", type=int, default=90, help="days of daily-reading history (default 90)"
        )

    def handle(self, *args, customers, seed, if_empty, history_days, **options):
        if customers < 1:
            raise CommandError("--customers must be at least 1")
        if Customer.objects.exists():
            if if_empty:
                self.stdout.write("Demo utility already loaded; nothing to do.")
                return
            raise CommandError("The database already holds customers; use an empty database.")
        started = time.monotonic()
        today = timezone.localdate()
        customer_builder.build(
            customers=customers, seed=seed, today=today, log=lambda m: self.stdout.write(m)
        )
        rng = random.Random(seed + 1)
        meters = metering_builder.build_meters(rng)
        self.stdout.write(f"meters: {meters} (with terminals and installations)")
        if history_days > 0:
            stored = metering_builder.build_history(rng, days=history_days, today=today)
            self.stdout.write(f"daily readings: {stored} ({history_days} days of history)")
        billing_builder.build(random.Random(seed + 2), today=today, log=lambda m: self.stdout.write(m))
        payments_builder.build(log=lambda m: self.stdout.write(m))
        load_portal(self.stdout)
        self.stdout.write(self.style.SUCCESS(f"Demo utility loaded in {time.monotonic() - started:.1f} s."))
        self.stdout.write(f"Logins (password for all: {DEMO_PASSWORD}):")
        for user in DEMO_USERS:
            self.stdout.write(f"  {user.username:<11} {user.role:<10} {user.full_name}")
