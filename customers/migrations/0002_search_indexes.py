from django.db import migrations

from core.migration_ops import PostgresOnlySQL


class Migration(migrations.Migration):
    """Trigram indexes make substring search on names and addresses fast at a million
    customers. PostgreSQL only; the embedded SQLite mode scans instead."""

    dependencies = [("customers", "0001_initial")]

    operations = [
        PostgresOnlySQL(
            sql=[
                "CREATE EXTENSION IF NOT EXISTS pg_trgm",
                "CREATE INDEX IF NOT EXISTS customer_name_trgm ON customers_customer "
                "USING gin (UPPER(name::text) gin_trgm_ops)",
                "CREATE INDEX IF NOT EXISTS customer_address_trgm ON customers_customer "
                "USING gin (UPPER(address::text) gin_trgm_ops)",
                "CREATE INDEX IF NOT EXISTS customer_mobile_pattern ON customers_customer "
                "(mobile_phone varchar_pattern_ops)",
                "CREATE INDEX IF NOT EXISTS customer_number_pattern ON customers_customer "
                "(number varchar_pattern_ops)",
                "CREATE INDEX IF NOT EXISTS account_number_pattern ON customers_account "
                "(number varchar_pattern_ops)",
            ],
            reverse_sql=[
                "DROP INDEX IF EXISTS customer_name_trgm",
                "DROP INDEX IF EXISTS customer_address_trgm",
                "DROP INDEX IF EXISTS customer_mobile_pattern",
                "DROP INDEX IF EXISTS customer_number_pattern",
                "DROP INDEX IF EXISTS account_number_pattern",
            ],
        )
    ]
