"""Itemised charges for a usage description, as the quote API gives them.

python manage.py tariff_quote RES-TIER '{"period_start": "2026-10-01", "period_end": "2026-10-31",
                                         "kwh": {"total": "320"}, "tier_kwh_used": "2000"}'
python manage.py tariff_quote LI-TWO-PART --file usage.json      (or --file - for stdin)
"""

import json
import sys
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError

from billing.api import QuoteIn, usage_from
from billing.rating.engine import quote_to_dict
from billing.services.tariffs import tariff_quote
from core.exceptions import ApplicationError


class Command(BaseCommand):
    help = "Print the itemised charges and total of a usage description on a tariff (JSON in, JSON out)."

    def add_arguments(self, parser):
        parser.add_argument("tariff", help="tariff code")
        parser.add_argument("usage", nargs="?", help="usage as JSON (period_start, period_end, kwh, ...)")
        parser.add_argument("--file", help="read the usage JSON from this file ('-' for standard input)")

    def handle(self, *args, tariff, usage, file, **options):
        if file:
            text = sys.stdin.read() if file == "-" else open(file, encoding="utf-8").read()  # noqa: SIM115
        elif usage:
            text = usage
        else:
            raise CommandError("give the usage as JSON, or --file")
        try:
            data = json.loads(text, parse_float=Decimal)
        except ValueError as exc:
            raise CommandError(f"usage is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CommandError("usage must be a JSON object")
        data["tariff"] = tariff
        serializer = QuoteIn(data=data)
        if not serializer.is_valid():
            raise CommandError(f"invalid usage: {json.dumps(serializer.errors, ensure_ascii=False)}")
        try:
            quote = tariff_quote(tariff_code=tariff, usage=usage_from(serializer.validated_data))
        except ApplicationError as exc:
            raise CommandError(str(exc.message)) from None
        self.stdout.write(
            json.dumps({"tariff": tariff, **quote_to_dict(quote)}, ensure_ascii=False, indent=2)
        )
