from django.db import migrations

from core.migration_ops import PostgresOnlySQL
from metering.partitions import partition_sql


class Migration(migrations.Migration):
    """Range-partition the reading tables by time on PostgreSQL (see metering/partitions.py).
    Unique keys include the partition column, as PostgreSQL requires."""

    dependencies = [("metering", "0001_initial")]

    operations = [
        PostgresOnlySQL(
            partition_sql(
                "metering_dailyreading",
                "read_date",
                [
                    'ALTER TABLE "metering_dailyreading" ADD CONSTRAINT "daily_reading_unique" '
                    "UNIQUE (meter_id, read_date)",
                    'CREATE INDEX "daily_reading_date_idx" ON "metering_dailyreading" (read_date, meter_id)',
                    'CREATE INDEX "daily_reading_batch_idx" ON "metering_dailyreading" (batch_id)',
                    'CREATE INDEX "daily_reading_sp_idx" ON "metering_dailyreading" (service_point_id, read_date)',
                ],
            ),
            reverse_sql=migrations.RunSQL.noop,
        ),
        PostgresOnlySQL(
            partition_sql(
                "metering_intervalreading",
                "interval_end",
                [
                    'ALTER TABLE "metering_intervalreading" ADD CONSTRAINT "interval_reading_unique" '
                    "UNIQUE (meter_id, interval_end)",
                    'CREATE INDEX "interval_reading_batch_idx" ON "metering_intervalreading" (batch_id)',
                ],
            ),
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
