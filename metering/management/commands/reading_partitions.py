from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from metering.partitions import ensure_partitions


class Command(BaseCommand):
    help = "Create the monthly partitions of the reading tables (PostgreSQL; no-op elsewhere)."

    def add_arguments(self, parser):
        parser.add_argument("--months-back", type=int, default=3)
        parser.add_argument("--months-ahead", type=int, default=3)

    def handle(self, *args, months_back, months_ahead, **options):
        today = timezone.localdate().replace(day=1)
        first = today
        for _ in range(months_back):
            first = (first - timedelta(days=1)).replace(day=1)
        last = today
        for _ in range(months_ahead):
            last = (last + timedelta(days=32)).replace(day=1)
        created = ensure_partitions(first_month=first, last_month=last)
        self.stdout.write(
            f"partitions created: {len(created)}" + (f" ({', '.join(created)})" if created else "")
        )
