"""Time the demo utility loader at a given size on a fresh database.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kilowatt_bench \
        .venv/bin/python benchmarks/demo_load.py --customers 200000

Drops and recreates the named PostgreSQL database, migrates, loads, and prints the
wall time, rows per second and the peak resident memory of this process.
"""

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("set DATABASE_URL to a PostgreSQL database that may be dropped")
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    call_command("load_demo", customers=args.customers, seed=args.seed, verbosity=0)
    elapsed = time.perf_counter() - started
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM customers_customerevent")
        events = cursor.fetchone()[0]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"customers loaded:      {args.customers:,}")
    print(f"wall time:             {elapsed:.1f} s")
    print(f"customers per second:  {args.customers / elapsed:,.0f}")
    print(f"audit events (customer table): {events:,}")
    print(f"peak RSS:              {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
