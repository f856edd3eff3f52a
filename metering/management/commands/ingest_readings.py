"""Store a file of daily readings through the one ingest path (validation included).

    python manage.py ingest_readings readings.csv --batch-id hes-2026-03-01
    python manage.py ingest_readings readings.jsonl --batch-id hes-2026-03-01 --source external

CSV: a header row naming the fields (meter or meter_id, read_date, read_at, forward_total,
forward_sharp, ... as ``readings_ingest`` takes them); empty cells are left out. JSON lines:
one object per line, numbers read as decimals. The file is streamed, never loaded whole.
Running it again with the same batch id stores nothing twice.
"""

import csv
import json
from decimal import Decimal
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from core.exceptions import ApplicationError
from metering.models import ReadingSource
from metering.services.readings import readings_ingest


def _csv_readings(handle):
    for row in csv.DictReader(handle):
        yield {key: value for key, value in row.items() if key and value not in ("", None)}


def _jsonl_readings(handle):
    for line in handle:
        line = line.strip()
        if not line:
            continue
        try:
            yield json.loads(line, parse_float=Decimal)
        except ValueError:
            yield line  # rejected as malformed, and kept as it was


class Command(BaseCommand):
    help = "Validate and store a CSV or JSON-lines file of daily readings as one batch."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--batch-id", required=True, help="Id of this delivery (max 64 characters).")
        parser.add_argument("--source", default=ReadingSource.EXTERNAL, choices=ReadingSource.values)
        parser.add_argument("--format", choices=["csv", "jsonl"], help="Default: from the file name.")
        parser.add_argument("--show", type=int, default=20, help="How many rejections to print.")

    def handle(self, *args, path: Path, batch_id, source, format, show, **options):
        kind = format or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        with path.open(encoding="utf-8", newline="") as handle:
            readings = _csv_readings(handle) if kind == "csv" else _jsonl_readings(handle)
            try:
                batch = readings_ingest(
                    source=source, external_id=batch_id, readings=readings, submitted_by="manage.py"
                )
            except ApplicationError as exc:
                raise CommandError(str(exc.message)) from exc
        if not batch.first_delivery:
            self.stdout.write(f"Batch {batch_id} was delivered before; its result:")
        self.stdout.write(
            f"accepted {batch.accepted}, duplicates {batch.duplicates}, rejected {batch.rejected}, "
            f"flagged {batch.flagged}"
        )
        for rejection in batch.rejections.order_by("position")[:show]:
            self.stdout.write(
                f"  #{rejection.position} {rejection.meter_address} {rejection.read_date or ''}: "
                f"{rejection.reason} - {rejection.message}"
            )
