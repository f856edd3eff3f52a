"""Time real-time rating of 1,000,000 daily readings end to end (issue 4).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kilowatt_rating_bench \\
        .venv/bin/python benchmarks/rate_readings.py --accounts 50000 --days 20

Drops and recreates the named PostgreSQL database, migrates, creates the monthly reading
partitions and builds, untimed and with bulk inserts: ``--accounts`` prepaid accounts (one
customer, account, service point, remote cost-control meter and installation each) on a mix
of tariffs (flat with a price change in the middle of the run, annual-tiered residential,
tiered residential with peak/valley prices, 4-band time-of-use commercial), a default
cost-control policy, opening payments and balances (about 5 % of the accounts end the run
inside the warning thresholds and about 1 % run out of money and are tripped), tier
accumulators for the year so far (some accounts cross a block during the run; some opened
this year and have prorated blocks), rating cursors at the day before the first reading,
and ``--days`` stored batches of readings, one per day (COPY straight into
``metering_dailyreading``: the ingest path has its own benchmark), with band registers for
the time-of-use meters and about 1 % estimated readings.

Then it times ``rate_batch`` for each batch in date order, as the Celery task would run it
the morning the batch arrives (``now`` = the freeze date at 10:00 Asia/Shanghai, a working
day outside the night window, so trips are allowed), prints readings per second, entries,
decisions by action, commands and notifications created and the peak resident memory, and
checks with ``ledger_check()`` that every cached balance equals the sum of its entries.
Last, as the floor the pipeline is compared against, it times a COPY of as many
ledger-shaped rows into ``billing_ledgerentry`` (with its indexes, rolled back) and into an
unlogged copy of the table without indexes.

``--fixture DB`` keeps the built fixture in database DB and starts later runs from a copy of
it (``CREATE DATABASE ... TEMPLATE``), which saves the minutes of building; new migrations
are applied to the copy, but one that changes how existing rows are stored (a fillfactor)
needs DB dropped and built again.

Target (issue 4): 1,000,000 readings in ≤ 60 s on the 2-core machine, peak RSS ≤ 1 GiB.
"""

import argparse
import os
import random
import resource
import sys
import time
from collections import Counter
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

SHANGHAI = ZoneInfo("Asia/Shanghai")
# (code, share of the accounts, customer category, rough yuan per kWh for opening balances)
TARIFF_MIX = (
    ("RES-FLAT", 0.25, "residential", 0.60),
    ("RES-TIER", 0.35, "residential", 0.60),
    ("RES-TIER-TOU", 0.20, "residential", 0.50),
    ("COM-TOU", 0.20, "commercial", 0.85),
)
TOU_TARIFFS = {"RES-TIER-TOU", "COM-TOU"}
# Shares of a time-of-use meter's consumption in per mille by register (1 sharp, 2 peak,
# 4 valley); the flat register (3) takes the rest.
BAND_SHARES = {"RES-TIER-TOU": {1: 0, 2: 600, 4: 400}, "COM-TOU": {1: 80, 2: 350, 4: 280}}
NOISE = 997


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--first-day",
        type=date.fromisoformat,
        default=date(2026, 3, 2),
        help="freeze date of the first batch (default: a stretch of March without public holidays)",
    )
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the rating to FILE")
    parser.add_argument(
        "--workers", type=int, help="slices rated at once (default: billing.services.rating.WORKERS)"
    )
    parser.add_argument(
        "--fixture",
        metavar="DB",
        help="keep the built fixture (before rating) in database DB and, if DB exists, start from a copy "
        "of it instead of building the fleet again (saves ~2 minutes; rebuild it, by dropping DB, after a "
        "migration that changes how existing rows are stored, e.g. a fillfactor)",
    )
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("set DATABASE_URL to a PostgreSQL database that may be dropped")
    import psycopg

    base, name = url.rsplit("/", 1)
    reuse = False
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if args.fixture:
            reuse = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [args.fixture]).fetchone()
        if reuse:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{args.fixture}"')
        else:
            conn.execute(f'CREATE DATABASE "{name}"')

    import django
    from django.core.management import call_command

    django.setup()
    from django.db import connection

    call_command("migrate", verbosity=0)
    from metering.partitions import ensure_partitions

    first_day, last_day = args.first_day, args.first_day + timedelta(days=args.days - 1)
    ensure_partitions(first_month=(first_day - timedelta(days=1)).replace(day=1), last_month=last_day)

    if reuse:
        from metering.models import ReadingBatch

        batch_ids = list(ReadingBatch.objects.order_by("pk").values_list("pk", flat=True))
        print(f"fixture:               a copy of database {args.fixture} ({len(batch_ids)} batches)")
    else:
        started = time.perf_counter()
        rng = random.Random(args.seed)
        fleet = build_fleet(args.accounts, args.days, first_day, rng)
        took = time.perf_counter() - started
        print(f"fleet set up:          {args.accounts:,} prepaid accounts in {took:.1f} s")
        started = time.perf_counter()
        batch_ids = store_readings(fleet, first_day, args.days, rng)
        print(
            f"readings stored:       {args.accounts * args.days:,} in {len(batch_ids)} batches "
            f"in {time.perf_counter() - started:.1f} s (COPY, not timed)"
        )
        del fleet
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    if args.fixture and not reuse:
        connection.close()  # CREATE DATABASE ... TEMPLATE needs the source without sessions
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{args.fixture}" TEMPLATE "{name}"')
        print(f"fixture:               kept in database {args.fixture}")

    from django.db.models import Count

    from billing.models import PolicyDecision
    from billing.services import rating
    from billing.services.ledger import ledger_check
    from billing.services.rating import rate_batch

    if args.workers:
        rating.WORKERS = args.workers
    from core.models import Notification
    from metering.models import RemoteCommand

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    totals = Counter()
    phases = Counter()
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    for offset, batch_id in enumerate(batch_ids):
        now = datetime.combine(first_day + timedelta(days=offset), dtime(10, 0), tzinfo=SHANGHAI)
        result = rate_batch(batch_id, now=now)
        for name in ("readings", "rated", "entries", "baselines", "skipped", "decisions", "accounts"):
            totals[name] += getattr(result, name)
        totals["unrated"] += sum(result.unrated.values())
        phases.update(result.seconds)
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    load_after = os.getloadavg()[0]
    python_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    by_action = dict(PolicyDecision.objects.values_list("action").annotate(n=Count("pk")).order_by())
    commands = dict(RemoteCommand.objects.values_list("action").annotate(n=Count("pk")).order_by())
    notifications = Notification.objects.count()
    readings = totals["readings"]
    print(
        f"readings rated:        {readings:,} ({totals['rated']:,} rated, {totals['baselines']:,} baselines, "
        f"{totals['skipped']:,} skipped, {totals['unrated']:,} unrated)"
    )
    print(f"ledger entries:        {totals['entries']:,}")
    print(f"policy decisions:      {totals['decisions']:,} {dict(sorted(by_action.items()))}")
    print(f"remote commands:       {sum(commands.values()):,} {commands}")
    print(f"notifications queued:  {notifications:,}")
    print(f"wall time:             {elapsed:.1f} s (rate_batch x {len(batch_ids)})")
    print(f"readings per second:   {readings / elapsed:,.0f}")
    print(f"CPU of this process:   {python_cpu:.1f} s = {1e6 * python_cpu / readings:.1f} µs per reading")
    print("seconds by phase:      " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    print(f"peak RSS:              {peak_mib:.0f} MiB")
    print(f"load average:          {load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} CPUs)")

    started = time.perf_counter()
    mismatches = ledger_check()
    print(f"ledger_check:          {len(mismatches)} differences ({time.perf_counter() - started:.1f} s)")
    assert not mismatches, mismatches[:5]

    copy_floor(readings)
    target = "met" if elapsed <= 60 and peak_mib <= 1024 else "MISSED"
    print(f"target (≤ 60 s, ≤ 1 GiB): {target}")


# --- fixtures (not timed) ----------------------------------------------------------------


def build_tariffs(first_day: date) -> dict:
    from billing.models import (
        CostControlPolicy,
        Tariff,
        TariffSurcharge,
        TariffTier,
        TariffVersion,
        TouPeriod,
    )

    since = date(2020, 1, 1)
    tariffs = {}

    def tiers(version):
        TariffTier.objects.create(version=version, number=1, upper_kwh=Decimal("2160"), price_adder=0)
        TariffTier.objects.create(
            version=version, number=2, upper_kwh=Decimal("4200"), price_adder=Decimal("0.05")
        )
        TariffTier.objects.create(version=version, number=3, upper_kwh=None, price_adder=Decimal("0.30"))

    # Flat, with a price change in the middle of the run (a new version).
    t = tariffs["RES-FLAT"] = Tariff.objects.create(
        code="RES-FLAT", name="居民单一电价", category="residential"
    )
    change = first_day + timedelta(days=10)
    TariffVersion.objects.create(
        tariff=t, effective_from=since, effective_to=change, price_flat=Decimal("0.588000")
    )
    TariffVersion.objects.create(tariff=t, effective_from=change, price_flat=Decimal("0.598000"))

    t = tariffs["RES-TIER"] = Tariff.objects.create(
        code="RES-TIER", name="居民阶梯电价", category="residential"
    )
    v = TariffVersion.objects.create(
        tariff=t, effective_from=since, price_flat=Decimal("0.528300"), tier_basis="annual"
    )
    tiers(v)
    TariffSurcharge.objects.create(
        version=v, code="reservoir", name="大中型水库移民后期扶持资金", price_per_kwh=Decimal("0.006200")
    )

    t = tariffs["RES-TIER-TOU"] = Tariff.objects.create(
        code="RES-TIER-TOU", name="居民阶梯分时电价", category="residential"
    )
    v = TariffVersion.objects.create(
        tariff=t,
        effective_from=since,
        price_flat=Decimal("0.528300"),
        price_peak=Decimal("0.578300"),
        price_valley=Decimal("0.288300"),
        tier_basis="annual",
    )
    tiers(v)
    TouPeriod.objects.create(version=v, start=dtime(8, 0), end=dtime(22, 0), band="peak")
    TouPeriod.objects.create(version=v, start=dtime(22, 0), end=dtime(8, 0), band="valley")

    t = tariffs["COM-TOU"] = Tariff.objects.create(
        code="COM-TOU", name="一般工商业分时电价", category="commercial"
    )
    v = TariffVersion.objects.create(
        tariff=t,
        effective_from=since,
        price_sharp=Decimal("1.268400"),
        price_peak=Decimal("1.057000"),
        price_flat=Decimal("0.704700"),
        price_valley=Decimal("0.352400"),
    )
    for start, end, band in (
        ((0, 0), (8, 0), "valley"),
        ((8, 0), (10, 30), "flat"),
        ((10, 30), (11, 30), "sharp"),
        ((11, 30), (15, 0), "peak"),
        ((15, 0), (18, 0), "flat"),
        ((18, 0), (21, 0), "peak"),
        ((21, 0), (0, 0), "flat"),
    ):
        TouPeriod.objects.create(version=v, start=dtime(*start), end=dtime(*end), band=band)
    CostControlPolicy.objects.create(
        code="DEFAULT",
        name="默认费控策略",
        warning1_threshold=Decimal("50.00"),
        warning2_threshold=Decimal("20.00"),
        trip_threshold=Decimal("0.00"),
        close_threshold=Decimal("10.00"),
        required_warning=2,
        grace_hours=Decimal("24"),
    )
    return tariffs


def build_fleet(accounts: int, days: int, first_day: date, rng: random.Random) -> list[tuple]:
    """Customers, accounts, service points, meters, installations, tariffs, balances,
    accumulators and rating cursors. Returns per account (meter id, service point id,
    tariff code, daily kWh in 0.01 kWh, registers in 0.01 kWh [total, sharp, peak, flat,
    valley] at the day before the first reading)."""
    from django.db import transaction
    from django.utils import timezone

    from billing.models import (
        AccountBilling,
        AccountTariff,
        EntryKind,
        EntrySource,
        LedgerEntry,
        RatingCursor,
        TierAccumulator,
    )
    from core.models import OrgUnit, TransformerArea
    from customers.models import Account, Customer, ServicePoint
    from metering.models import CostControlMode, Meter, MeterInstallation, MeterStatus

    tariffs = build_tariffs(first_day)
    unit = OrgUnit.objects.add_root(dict(code="RBENCH", name="Rating benchmark county", kind="county"))
    areas = TransformerArea.objects.bulk_create(
        [
            TransformerArea(
                code=f"RB-T{i:05d}",
                name=f"台区{i}",
                supply_station=unit,
                transformer_capacity_kva=Decimal("400"),
            )
            for i in range(accounts // 400 + 1)
        ]
    )
    baseline_day = first_day - timedelta(days=1)
    year_start = baseline_day.replace(month=1, day=1)
    installed_at = timezone.make_aware(datetime.combine(baseline_day - timedelta(days=30), dtime.min))
    codes = [c for c, _s, _cat, _p in TARIFF_MIX]
    weights = [s for _c, s, _cat, _p in TARIFF_MIX]
    category = {c: cat for c, _s, cat, _p in TARIFF_MIX}
    price = {c: p for c, _s, _cat, p in TARIFF_MIX}
    fleet = []
    step = 10_000
    for start in range(0, accounts, step):
        n = min(step, accounts - start)
        plan = []
        for _ in range(n):
            code = rng.choices(codes, weights)[0]
            daily = rng.randrange(3_000, 15_000) if code == "COM-TOU" else rng.randrange(300, 2_500)
            protected = rng.random() < 0.003
            opened_this_year = rng.random() < 0.05
            plan.append((code, daily, protected, opened_this_year))
        with transaction.atomic():
            customers = Customer.objects.bulk_create(
                [
                    Customer(
                        number=f"R{start + i:09d}",
                        name="基准用户",
                        id_type="resident_id",
                        id_number_masked="3610**********1234",
                        id_number_digest=f"{start + i:064d}",
                        mobile_phone=f"138{rng.randrange(10**8):08d}",
                        email=f"c{start + i}@example.cn" if rng.random() < 0.3 else "",
                        address="基准路1号",
                        category=category[code],
                        voltage_level="220V" if category[code] == "residential" else "380V",
                        contracted_capacity_kva=Decimal(8 if category[code] == "residential" else 50),
                        importance_grade="special" if protected else "ordinary",
                        protected=protected,
                        protected_reason="医院" if protected else "",
                        org_unit=unit,
                    )
                    for i, (code, _d, protected, _o) in enumerate(plan)
                ]
            )
            accounts_ = Account.objects.bulk_create(
                [
                    Account(
                        number=f"{c.number}01",
                        customer=c,
                        settlement_mode="prepaid",
                        opened_on=date(baseline_day.year, 1, 20) if opened else date(2020, 1, 1),
                    )
                    for c, (_c, _d, _p, opened) in zip(customers, plan, strict=True)
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
                    for i, (c, a) in enumerate(zip(customers, accounts_, strict=True))
                ]
            )
            meters = Meter.objects.bulk_create(
                [
                    Meter(
                        asset_number=f"RM{start + i:010d}",
                        comm_address=f"{start + i + 1:012d}",
                        manufacturer="基准",
                        model="DDZY",
                        status=MeterStatus.INSTALLED,
                        cost_control_mode=CostControlMode.REMOTE,
                        service_point=p,
                        transformer_area_id=p.transformer_area_id,
                    )
                    for i, p in enumerate(points)
                ]
            )
            registers = []
            for code, _d, _p, _o in plan:
                if code in TOU_TARIFFS:
                    bands = [rng.randrange(0, 1_000_000) for _ in range(4)]
                    if code == "RES-TIER-TOU":
                        bands[0] = 0  # no sharp register in use
                    registers.append([sum(bands), *bands])
                else:
                    registers.append([rng.randrange(0, 5_000_000), None, None, None, None])
            MeterInstallation.objects.bulk_create(
                [
                    MeterInstallation(
                        meter=m,
                        service_point=p,
                        transformer_area_id=p.transformer_area_id,
                        installed_at=installed_at,
                        initial_registers={"forward_total": "0"},
                    )
                    for m, p in zip(meters, points, strict=True)
                ]
            )
            AccountTariff.objects.bulk_create(
                [
                    AccountTariff(account=a, tariff=tariffs[code], effective_from=a.opened_on)
                    for a, (code, _d, _p, _o) in zip(accounts_, plan, strict=True)
                ]
            )
            balances, payments, accumulators = [], [], []
            for a, (code, daily, _p, _o) in zip(accounts_, plan, strict=True):
                cost = daily * days * price[code] / 100  # rough yuan for the whole run
                draw = rng.random()
                if draw < 0.012:  # runs out of money half-way: warned, then tripped
                    opening = cost * rng.uniform(0.25, 0.6)
                elif draw < 0.06:  # ends the run inside the warning thresholds
                    opening = cost + rng.uniform(5, 45)
                else:
                    opening = cost + rng.uniform(60, 600)
                opening = Decimal(max(int(opening), 1))
                balances.append(AccountBilling(account=a, balance=opening))
                payments.append(
                    LedgerEntry(
                        account=a,
                        kind=EntryKind.PAYMENT,
                        amount=opening,
                        business_date=baseline_day - timedelta(days=3),
                        description="Opening payment",
                        source=EntrySource.PAYMENT,
                        source_ref="bench",
                        idempotency_key=f"bench-open:{a.pk}",
                    )
                )
                if code in ("RES-TIER", "RES-TIER-TOU"):
                    accumulators.append(
                        TierAccumulator(
                            account=a, period_start=year_start, kwh=Decimal(rng.randrange(0, 4_400))
                        )
                    )
            AccountBilling.objects.bulk_create(balances)
            LedgerEntry.objects.bulk_create(payments)
            TierAccumulator.objects.bulk_create(accumulators)
            RatingCursor.objects.bulk_create(
                [
                    RatingCursor(
                        meter=m,
                        account_id=p.account_id,
                        read_date=baseline_day,
                        reading_id=0,
                        total=_kwh(regs[0]),
                        sharp=_kwh(regs[1]),
                        peak=_kwh(regs[2]),
                        flat=_kwh(regs[3]),
                        valley=_kwh(regs[4]),
                        multiplier=Decimal(1),
                    )
                    for m, p, regs in zip(meters, points, registers, strict=True)
                ]
            )
        for m, p, (code, daily, _p, _o), regs in zip(meters, points, plan, registers, strict=True):
            fleet.append((m.pk, p.pk, code, daily, regs))
    return fleet


def _kwh(cents):
    return None if cents is None else Decimal(cents).scaleb(-2)


def _text(cents) -> str:
    return "\\N" if cents is None else f"{cents // 100}.{cents % 100:02d}"


def store_readings(fleet: list[tuple], first_day: date, days: int, rng: random.Random) -> list[int]:
    """One ReadingBatch per day, its readings COPYed into metering_dailyreading."""
    from django.db import connection, transaction
    from django.utils import timezone

    from metering.models import ReadingBatch

    noise = [rng.randrange(-100, 100) for _ in range(NOISE)]
    batch_ids = []
    columns = (
        "meter_id, read_date, read_at, service_point_id, forward_total, forward_sharp, forward_peak,"
        " forward_flat, forward_valley, source, quality, quality_note, batch_id"
    )
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        with transaction.atomic():
            batch = ReadingBatch.objects.create(
                source="collected", external_id=f"rating-bench-{day:%Y%m%d}", completed_at=timezone.now()
            )
            read_at = f"{day.isoformat()} 00:15:00+08"
            lines = []
            for i, (meter_id, point_id, code, daily, regs) in enumerate(fleet):
                used = max(daily + noise[(i * 7 + offset * 13) % NOISE], 0)
                if regs[1] is None:
                    regs[0] += used
                else:
                    rest = used
                    for band, share in BAND_SHARES[code].items():
                        part = used * share // 1000
                        regs[band] += part
                        rest -= part
                    regs[3] += rest
                    regs[0] = regs[1] + regs[2] + regs[3] + regs[4]
                estimated = rng.random() < 0.01
                lines.append(
                    f"{meter_id}\t{day.isoformat()}\t{read_at}\t{point_id}\t{_text(regs[0])}\t{_text(regs[1])}\t"
                    f"{_text(regs[2])}\t{_text(regs[3])}\t{_text(regs[4])}\t"
                    + ("estimated\testimated" if estimated else "collected\tvalid")
                    + f"\t\t{batch.pk}\n"
                )
            with (
                connection.cursor() as cursor,
                cursor.copy(
                    f"COPY metering_dailyreading ({columns}) FROM STDIN"  # noqa: S608 (fixed text)
                ) as copy,
            ):
                copy.write("".join(lines))
            batch.accepted = len(lines)
            batch.save(update_fields=["accepted"])
        batch_ids.append(batch.pk)
    return batch_ids


# --- the floor ---------------------------------------------------------------------------


def copy_floor(rows: int) -> None:
    """COPY ``rows`` ledger-shaped rows (streamed from Python in chunks of 50,000, as the
    pipeline writes them) into billing_ledgerentry with its indexes and foreign-key checks
    (made immediate, then rolled back), and into an unlogged copy of the table without
    indexes or constraints."""
    from django.db import connection, transaction

    from customers.models import Account

    account_ids = list(Account.objects.order_by("pk").values_list("pk", flat=True))
    columns = (
        "account_id, kind, amount, kwh, business_date, description, source, source_ref, idempotency_key,"
        " created_at"
    )

    def chunks():
        day = date(2026, 3, 1)
        for start in range(0, rows, 50_000):
            out = []
            for n in range(start, min(start + 50_000, rows)):
                account = account_ids[n % len(account_ids)]
                out.append(
                    f"{account}\tenergy\t-{n % 9 + 1}.{n % 97:02d}\t12.{n % 100:02d}\t{day}\t"
                    f"Energy {day} 12.34 kWh\treading\treading:{n + 10_000_000}\tfloor:{n}:{day:%Y%m%d}\t"
                    "2026-03-02 10:00:00+08\n"
                )
            yield "".join(out)

    def timed_copy(table: str) -> float:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for chunk in chunks():
                    copy.write(chunk)
        return time.perf_counter() - started

    load = os.getloadavg()[0]
    with transaction.atomic():
        real = timed_copy("billing_ledgerentry")
        transaction.set_rollback(True)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE UNLOGGED TABLE bench_ledger_floor"
                " (LIKE billing_ledgerentry INCLUDING DEFAULTS INCLUDING IDENTITY)"
            )
        bare = timed_copy("bench_ledger_floor")
        transaction.set_rollback(True)
    print(f"COPY floor:            {rows:,} ledger rows into billing_ledgerentry: {real:.1f} s")
    print("                       (indexes and foreign-key checks, rolled back);")
    print(f"                       into an unlogged copy without indexes: {bare:.1f} s")
    print(f"                       (load average {load:.2f})")


if __name__ == "__main__":
    main()
