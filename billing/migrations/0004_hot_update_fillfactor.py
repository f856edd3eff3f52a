"""Leave 20 % of every page free in the three tables real-time rating updates every day
(rating cursors, tier accumulators, billing states), so that an updated row version fits
in its own page and the update is HOT: no new entries in the tables' indexes, less WAL
and less work for vacuum (docs/performance.md, issue 4). The columns rating updates are
not indexed, which HOT also needs.

Only pages written from now on are filled to 80 %; existing pages fill up over time, or at
once with ``VACUUM FULL`` / pg_repack in a maintenance window."""

from django.db import migrations

from core.migration_ops import PostgresOnlySQL

TABLES = ("billing_ratingcursor", "billing_tieraccumulator", "billing_accountbilling")


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0003_ledger_posted_at"),
    ]

    operations = [
        PostgresOnlySQL(
            sql=[f"ALTER TABLE {table} SET (fillfactor = 80)" for table in TABLES],
            reverse_sql=[f"ALTER TABLE {table} RESET (fillfactor)" for table in TABLES],
        ),
    ]
