"""One collection cycle of N simulated meters over DL/T 645 TCP (issue 3, benchmark b).

    .venv/bin/python benchmarks/collection_cycle.py --meters 10000

Drops and recreates the PostgreSQL database named by BENCH_DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/kilowatt_bench_collect), creates N installed meters
behind terminals on 4 gateway ports, starts the fleet simulator in a separate process
(20% of meters silent per attempt, as the article reports), then times
``collection_run``: head-end reads of every meter (9-10 frames each), validation and storage
through the ingest path, and the per-area success figures. A second pass (the retry of the
gaps) is timed too. Target for the first pass: <= 60 s for 10,000 meters.
"""

import argparse
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["DATABASE_URL"] = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/kilowatt_bench_collect"
)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

BASE_PORT = 19645
GATEWAYS = 4


def fleet_for(args):
    from metering.simulator.fleet import Fleet

    return Fleet.generate(
        count=args.meters,
        seed=args.seed,
        gateways=GATEWAYS,
        failure_rate=args.failure_rate,
        category_weights={"residential": 1.0},
    )


def serve(args, ready):
    from metering.simulator.server import run_in_thread

    fleet = fleet_for(args)
    with run_in_thread(fleet, port=BASE_PORT):
        ready.set()
        while True:
            time.sleep(3600)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--failure-rate", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    os.environ["METERING_READ_TIMEOUT"] = str(args.timeout)
    os.environ["METERING_READ_CONCURRENCY"] = str(args.concurrency)

    ready = multiprocessing.Event()
    simulator = multiprocessing.Process(target=serve, args=(args, ready), daemon=True)
    simulator.start()

    import psycopg

    base, name = os.environ["DATABASE_URL"].rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    import django

    django.setup()
    from datetime import timedelta
    from decimal import Decimal

    from django.core.management import call_command
    from django.utils import timezone

    from core.models import OrgUnit, TransformerArea
    from metering.models import Meter, MeterInstallation, MeterStatus, Terminal
    from metering.services.collection import collection_run

    call_command("migrate", verbosity=0)
    call_command("reading_partitions", verbosity=0)
    root = OrgUnit.objects.add_root(dict(code="B", name="bench", kind="province"))
    city = OrgUnit.objects.add_child(root, dict(code="B-C", name="city", kind="city"))
    county = OrgUnit.objects.add_child(city, dict(code="B-C-X", name="county", kind="county"))
    station = OrgUnit.objects.add_child(county, dict(code="B-S", name="station", kind="station"))
    fleet = fleet_for(args)
    areas = TransformerArea.objects.bulk_create(
        TransformerArea(
            code=f"B-T{i:03d}",
            name=f"area {i}",
            supply_station=station,
            transformer_capacity_kva=Decimal(400),
        )
        for i in range(GATEWAYS)
    )
    terminals = Terminal.objects.bulk_create(
        Terminal(address=f"BT{i:05d}", endpoint=f"127.0.0.1:{BASE_PORT + i}", transformer_area=areas[i])
        for i in range(GATEWAYS)
    )
    gateway_keys = sorted({m.gateway for m in fleet.meters}, key=str)
    index_of = {key: i for i, key in enumerate(gateway_keys)}
    meters = Meter.objects.bulk_create(
        (
            Meter(
                asset_number=f"B{m.address}",
                comm_address=m.address,
                manufacturer="sim",
                model="sim",
                status=MeterStatus.INSTALLED,
                cost_control_mode=m.cost_control_mode,
                terminal=terminals[index_of[m.gateway]],
                transformer_area=areas[index_of[m.gateway]],
            )
            for m in fleet.meters
        ),
        batch_size=5000,
    )
    installed = timezone.now() - timedelta(days=365)
    MeterInstallation.objects.bulk_create(
        (
            MeterInstallation(
                meter=m,
                transformer_area_id=m.transformer_area_id,
                installed_at=installed,
                initial_registers={},
            )
            for m in meters
        ),
        batch_size=5000,
    )
    if not ready.wait(120):
        sys.exit("simulator did not start")

    for label in ("first pass", "retry of the gaps"):
        started = time.perf_counter()
        result = collection_run()
        elapsed = time.perf_counter() - started
        print(
            f"{label}: {result.attempted:,} meters attempted, {result.read_ok:,} read "
            f"({100 * result.read_ok / max(result.attempted, 1):.1f}%), {result.failed:,} silent, "
            f"{result.accepted:,} stored, {result.rejected} rejected in {elapsed:.1f} s"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"head-end process peak RSS: {peak:.0f} MiB")
    simulator.terminate()


if __name__ == "__main__":
    main()
