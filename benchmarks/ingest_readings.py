"""Time the batch ingest of daily readings (with validation) into PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kilowatt_ingest_bench \\
        .venv/bin/python benchmarks/ingest_readings.py --meters 50000 --days 20

Drops and recreates the named PostgreSQL database, migrates, creates the monthly reading
partitions for the benchmark dates, and bulk-creates one customer, account, service point,
meter and installation per meter (not timed). Then it makes meters × days readings, day by
day as collection would deliver them, cut into batches of ``--batch-size`` and JSON-encoded
as the request bodies an external collection system would post (numbers and times as
strings; not timed). The timed part is what the batch API does with a body: ``json.loads``
and ``readings_ingest``. ``--clients`` (default 2, one per CPU of the benchmark machine)
concurrent clients post at once, each the batches of its own share of the meters (every
``clients``-th meter), as several collection systems or API workers would; each runs on its
own database connection. ``--clients 1`` gives the figure for one connection.

It prints the readings per second and the peak resident memory of this process. About
``--bad-rate`` of the readings are deliberately wrong (a register that went backwards, a
freeze date in the future) and a few meters roll over past 999,999.99 kWh, so validation
has work to do.

Targets (issue 3): ≥ 50,000 readings/s and ≤ 1 GiB peak RSS for 1,000,000 readings.
"""

import argparse
import itertools
import json
import os
import random
import resource
import sys
import threading
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

ROLLOVER_CENTS = 100_000_000  # 1,000,000.00 kWh


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--bad-rate", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--clients",
        type=int,
        default=2,
        help="concurrent clients, each posting the batches of its own share of the meters",
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="write a cProfile of the ingest to FILE (with --clients 1)"
    )
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("set DATABASE_URL to a PostgreSQL database that may be dropped")
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')

    import django
    from django.core.management import call_command

    django.setup()
    from django.db import connection
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    today = timezone.localdate()
    first_day = today - timedelta(days=args.days)
    from metering.partitions import ensure_partitions

    ensure_partitions(first_month=first_day.replace(day=1), last_month=today.replace(day=1))

    started = time.perf_counter()
    addresses, totals_cents = build_fleet(args.meters, first_day, random.Random(args.seed))
    print(f"fleet set up:          {args.meters:,} meters in {time.perf_counter() - started:.1f} s")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")

    from django.db.models import Count

    from metering.models import DailyReading, RejectedReading
    from metering.services.readings import readings_ingest

    # The batches are made and JSON-encoded before the clock starts, as request bodies
    # waiting to be posted; decoding them (json.loads, as the API does) is timed.
    bodies = make_bodies(addresses, totals_cents, first_day, args)
    encoded_mib = sum(len(b) for client in bodies for b in client) / 2**20
    print(f"request bodies:        {sum(map(len, bodies))} batches, {encoded_mib:.0f} MiB of JSON")

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    results = [[] for _ in bodies]

    def post_all(client: int):
        try:
            for number, body in enumerate(bodies[client]):
                batch_readings = json.loads(body)
                batch = readings_ingest(
                    source="external",
                    external_id=f"bench-c{client}-{number:05d}",
                    readings=batch_readings,
                )
                results[client].append(batch)
        finally:
            if args.clients > 1:
                connection.close()

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if args.clients == 1:
        if profiler:
            profiler.enable()
        post_all(0)
        if profiler:
            profiler.disable()
    else:
        threads = [threading.Thread(target=post_all, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    python_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    all_batches = [b for client in results for b in client]
    batches = len(all_batches)
    accepted = sum(b.accepted for b in all_batches)
    duplicates = sum(b.duplicates for b in all_batches)
    rejected = sum(b.rejected for b in all_batches)
    flagged = sum(b.flagged for b in all_batches)
    total = accepted + duplicates + rejected
    if profiler:
        profiler.dump_stats(args.profile)
    stored = DailyReading.objects.count()
    qualities = dict(DailyReading.objects.values_list("quality").annotate(n=Count("pk")).order_by())
    reasons = dict(RejectedReading.objects.values_list("reason").annotate(n=Count("pk")).order_by())
    kept = RejectedReading.objects.count()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"readings ingested:     {total:,} in {batches} batches of up to {args.batch_size:,} "
        f"from {args.clients} concurrent client(s)"
    )
    print(f"accepted / dup / rejected / flagged: {accepted:,} / {duplicates:,} / {rejected:,} / {flagged:,}")
    print(f"stored rows / rejected rows kept: {stored:,} / {kept:,}")
    print(f"stored by quality:     {qualities}")
    print(f"rejected by reason:    {reasons}")
    print(f"wall time:             {elapsed:.1f} s (JSON decoding and readings_ingest)")
    print(f"readings per second:   {total / elapsed:,.0f}")
    per_reading = 1e6 * python_cpu / total
    print(f"CPU of this process:   {python_cpu:.1f} s = {per_reading:.1f} µs per reading")
    print("                       (the rest of the wall time: PostgreSQL's work, and waiting for it)")
    print(f"peak RSS:              {peak_mib:.0f} MiB")
    print(f"machine:               {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")


def build_fleet(meters: int, first_day, rng: random.Random):
    """One org unit, 400-meter transformer areas, and per meter a customer, an account, a
    service point, an installed meter and its installation record, 30 days before the
    first reading. Returns the meters' addresses and their registers (in fen of kWh)."""
    from django.db import transaction
    from django.utils import timezone

    from core.models import OrgUnit, TransformerArea
    from customers.models import Account, Customer, ServicePoint
    from metering.models import Meter, MeterInstallation, MeterStatus

    unit = OrgUnit.objects.add_root(dict(code="BENCH", name="Benchmark county", kind="county"))
    areas = TransformerArea.objects.bulk_create(
        [
            TransformerArea(
                code=f"BENCH-T{i:05d}",
                name=f"台区{i}",
                supply_station=unit,
                transformer_capacity_kva=Decimal("400"),
            )
            for i in range(meters // 400 + 1)
        ]
    )
    installed_at = timezone.make_aware(datetime.combine(first_day - timedelta(days=30), datetime.min.time()))
    addresses, totals = [], []
    step = 10_000
    for start in range(0, meters, step):
        n = min(step, meters - start)
        with transaction.atomic():
            customers = Customer.objects.bulk_create(
                [
                    Customer(
                        number=f"B{start + i:09d}",
                        name="基准用户",
                        id_type="resident_id",
                        id_number_masked="3610**********1234",
                        id_number_digest=f"{start + i:064d}",
                        mobile_phone="+8613800000000",
                        address="基准路1号",
                        category="residential",
                        voltage_level="220V",
                        contracted_capacity_kva=Decimal(rng.choice((4, 6, 8, 10, 16))),
                        org_unit=unit,
                    )
                    for i in range(n)
                ]
            )
            accounts = Account.objects.bulk_create(
                [
                    Account(
                        number=f"{c.number}01", customer=c, settlement_mode="prepaid", opened_on=first_day
                    )
                    for c in customers
                ]
            )
            points = ServicePoint.objects.bulk_create(
                [
                    ServicePoint(
                        number=f"S{start + i:09d}",
                        customer=c,
                        account=a,
                        address=c.address,
                        transformer_area=areas[(start + i) // 400],
                    )
                    for i, (c, a) in enumerate(zip(customers, accounts, strict=True))
                ]
            )
            batch_meters = Meter.objects.bulk_create(
                [
                    Meter(
                        asset_number=f"BM{start + i:010d}",
                        comm_address=f"{start + i + 1:012d}",
                        manufacturer="基准",
                        model="DDZY",
                        status=MeterStatus.INSTALLED,
                        service_point=p,
                        transformer_area_id=p.transformer_area_id,
                    )
                    for i, p in enumerate(points)
                ]
            )
            starting = []
            for _ in range(n):
                # 0.1% of the meters are about to roll over past 999,999.99 kWh.
                cents = (
                    rng.randrange(99_990_000, 99_999_000)
                    if rng.random() < 0.001
                    else rng.randrange(0, 5_000_000)
                )
                starting.append(cents)
            MeterInstallation.objects.bulk_create(
                [
                    MeterInstallation(
                        meter=m,
                        service_point=p,
                        transformer_area_id=p.transformer_area_id,
                        installed_at=installed_at,
                        initial_registers={"forward_total": _kwh(cents)},
                    )
                    for m, p, cents in zip(batch_meters, points, starting, strict=True)
                ]
            )
        addresses.extend(m.comm_address for m in batch_meters)
        totals.extend(starting)
    return addresses, totals


def _kwh(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def generate(addresses, totals_cents, first_day, days, bad_rate, rng: random.Random):
    """Readings one day at a time for every meter, lazily (never a list of them all).

    Each meter uses 3 to 25 kWh a day (±1 kWh of noise); its time-of-use registers add up
    to its total. ``bad_rate`` of each day's readings are wrong on purpose: half went
    backwards by 50 kWh, half carry a freeze date in the future."""
    n = len(addresses)
    daily = [rng.randrange(300, 2_500) for _ in range(n)]
    noise = [rng.randrange(-100, 100) for _ in range(997)]
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        read_date = day.isoformat()
        future_date = (day + timedelta(days=days + 2)).isoformat()
        read_at = [f"{read_date}T00:{15 + minute:02d}:00+08:00" for minute in range(40)]
        bad = rng.sample(range(n), int(n * bad_rate))
        backwards, future = set(bad[::2]), set(bad[1::2])
        for i, address in enumerate(addresses):
            total = (totals_cents[i] + daily[i] + noise[(i + offset) % 997]) % ROLLOVER_CENTS
            totals_cents[i] = total
            given = max(0, total - 5_000) if i in backwards else total
            sharp, peak = given // 10, given * 3 // 10
            yield {
                "meter": address,
                "read_date": future_date if i in future else read_date,
                "read_at": read_at[i % 40],
                "forward_total": f"{given // 100}.{given % 100:02d}",
                "forward_sharp": f"{sharp // 100}.{sharp % 100:02d}",
                "forward_peak": f"{peak // 100}.{peak % 100:02d}",
                "forward_flat": f"{peak // 100}.{peak % 100:02d}",
                "forward_valley": f"{(v := given - sharp - 2 * peak) // 100}.{v % 100:02d}",
            }


def make_bodies(addresses, totals_cents, first_day, args) -> list[list[bytes]]:
    """Per client (each with every ``clients``-th meter), its readings day by day cut into
    batches of ``batch_size``, each as the JSON body a collection system would post."""
    bodies = []
    for client in range(args.clients):
        readings = generate(
            addresses[client :: args.clients],
            totals_cents[client :: args.clients],
            first_day,
            args.days,
            args.bad_rate,
            random.Random(args.seed + client),
        )
        batches = []
        while batch := list(itertools.islice(readings, args.batch_size)):
            batches.append(json.dumps(batch, separators=(",", ":")).encode())
        bodies.append(batches)
    return bodies


if __name__ == "__main__":
    main()
