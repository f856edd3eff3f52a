"""Time the staff customer search on an existing database (e.g. the one demo_load.py built).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kilowatt_bench \
        .venv/bin/python benchmarks/customer_search.py

Prints the median and worst of N requests per query, as counter staff (company-wide scope),
through Django's test client (server time, no network).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

QUERIES = ["3100150000", "13812", "5678", "解放路", "东溪村12号", "王伟", ""]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--user", default="counter")
    args = parser.parse_args()
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    from customers.models import Customer

    client = Client()
    client.force_login(get_user_model().objects.get(username=args.user))
    print(f"customers in database: {Customer.objects.count():,}")
    for query in QUERIES:
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            response = client.get("/customers/", {"q": query}, HTTP_HOST="127.0.0.1")
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.status_code
        print(f"{query!r:>16}  median {statistics.median(times):6.0f} ms   worst {max(times):6.0f} ms")


if __name__ == "__main__":
    main()
