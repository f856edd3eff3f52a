"""Report every account whose cached balance differs from the sum of its ledger entries.

Exits 1 when any differs (for monitoring), 0 when all agree."""

from django.core.management.base import BaseCommand

from billing.services.ledger import ledger_check


class Command(BaseCommand):
    help = "Check cached account balances against the sum of ledger entries."

    def handle(self, *args, **options):
        mismatches = ledger_check()
        for m in mismatches:
            self.stdout.write(
                f"{m.account_number}\tcached {m.cached}\tledger {m.ledger}\tdifference {m.difference}"
            )
        if mismatches:
            self.stderr.write(f"{len(mismatches)} account(s) differ from their ledger")
            raise SystemExit(1)
        self.stdout.write("all cached balances agree with the ledger")
