"""Monthly range partitions for the reading tables (PostgreSQL only).

Migration 0002 turns ``metering_dailyreading`` (by ``read_date``) and
``metering_intervalreading`` (by ``interval_end``) into range-partitioned tables with a
DEFAULT partition. ``ensure_partitions`` creates one partition per month, moving any rows
that landed in the default partition for that month, so it is safe to run at any time; beat
runs it daily and ``bin/run`` at start. Old months can later be detached and archived
without touching the rest.
"""

from datetime import date

from django.db import connection, transaction

PARTITIONED_TABLES = {
    "metering_dailyreading": "read_date",
    "metering_intervalreading": "interval_end",
}


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    return date(day.year + month // 12, month % 12 + 1, 1)


def partition_name(table: str, month: date) -> str:
    return f"{table}_y{month.year}m{month.month:02d}"


def existing_partitions(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT child.relname FROM pg_inherits
            JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
            JOIN pg_class child ON child.oid = pg_inherits.inhrelid
            WHERE parent.relname = %s
            """,
            [table],
        )
        return {row[0] for row in cursor.fetchall()}


def ensure_partitions(*, first_month: date, last_month: date) -> list[str]:
    """Create the monthly partitions from ``first_month`` to ``last_month`` (inclusive) that
    are missing. Returns the names created. A no-op on databases other than PostgreSQL."""
    if connection.vendor != "postgresql":
        return []
    created = []
    for table, column in PARTITIONED_TABLES.items():
        present = existing_partitions(table)
        month = _month_start(first_month)
        while month <= last_month:
            name = partition_name(table, month)
            if name not in present:
                _create_partition(table, column, name, month, _add_months(month, 1))
                created.append(name)
            month = _add_months(month, 1)
    return created


@transaction.atomic
def _create_partition(table: str, column: str, name: str, start: date, end: date) -> None:
    bounds = [start.isoformat(), end.isoformat()]
    with connection.cursor() as cursor:
        # Lock the parent briefly so no row for this month slips into the default partition
        # between the move and the attach.
        cursor.execute(f'LOCK TABLE "{table}" IN SHARE ROW EXCLUSIVE MODE')
        cursor.execute(f'CREATE TABLE "{name}" (LIKE "{table}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)')
        # Table and column names come from PARTITIONED_TABLES, never from input.
        move_rows = (
            f'WITH moved AS (DELETE FROM "{table}_default" WHERE "{column}" >= %s AND "{column}" < %s '  # noqa: S608
            f'RETURNING *) INSERT INTO "{name}" SELECT * FROM moved'
        )
        cursor.execute(move_rows, bounds)
        cursor.execute(
            f'ALTER TABLE "{table}" ATTACH PARTITION "{name}" FOR VALUES FROM (%s) TO (%s)', bounds
        )


def partition_sql(table: str, column: str, indexes: list[str]) -> list[str]:
    """SQL that turns a freshly created (empty) Django table into a partitioned one with
    the same columns, a sequence-backed id, the unique keys and the indexes."""
    return [
        f'ALTER TABLE "{table}" RENAME TO "{table}_unpartitioned"',
        f'CREATE TABLE "{table}" (LIKE "{table}_unpartitioned" INCLUDING DEFAULTS INCLUDING CONSTRAINTS) '
        f'PARTITION BY RANGE ("{column}")',
        f'DROP TABLE "{table}_unpartitioned"',
        # PostgreSQL 15 allows no identity column on a partitioned table: use an owned sequence.
        f'CREATE SEQUENCE "{table}_id_seq"',
        f"ALTER TABLE \"{table}\" ALTER COLUMN id SET DEFAULT nextval('{table}_id_seq')",
        f'ALTER SEQUENCE "{table}_id_seq" OWNED BY "{table}".id',
        f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_pkey" PRIMARY KEY (id, "{column}")',
        *indexes,
        f'CREATE TABLE "{table}_default" PARTITION OF "{table}" DEFAULT',
    ]
