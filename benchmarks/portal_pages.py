"""Time the portal's home, usage and statement pages on a county-sized history (issue 6).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/13 \\
        .venv/bin/python benchmarks/portal_pages.py --db kilowatt_portal_bench --requests 300

Builds, once, in PostgreSQL database ``--db`` (on the server of DATABASE_URL) and re-used by
later runs while it holds the same number of customers (``--rebuild`` drops it): ``--customers``
prepaid residential customers, each with one account, service point, remote cost-control
meter and installation, on a mix of tariffs (flat; annual tiers; annual tiers with peak and
valley prices, whose meters report band registers), a year (``--days``) of daily freezes up to
today (COPY into the partitioned ``metering_dailyreading``), a year of daily energy debits plus
a monthly payment per account (COPY into ``billing_ledgerentry``, in date order as real-time
rating posts them), cached balances equal to the ledger sums with cost-control states that
follow them (some accounts warned, some tripped), this year's tier accumulators, and a portal
user bound to each account. With the defaults that is 7.3 million readings and about 7.5
million ledger entries; building takes some minutes (COPY, not the ORM).

Then it times, in-process with Django's test ``Client`` (server time: middleware, session,
queries, templates; no network), ``--requests`` GETs of each page for portal users drawn at
random (after a few warm-up requests), and prints count, median, p95 and max per page, the
queries per page, the load average, and the verdict against the target: p95 ≤ 200 ms each.
``--explain`` prints EXPLAIN (ANALYZE, BUFFERS) of each page's slowest queries for one user.
``--http URL`` times the same pages over HTTP against a server already running on this
fixture (e.g. ``gunicorn config.wsgi -b 127.0.0.1:8010`` with the same DATABASE_URL pointing
at the fixture), signing in with the session cookie of a forced login.
"""

import argparse
import os
import random
import statistics
import sys
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

TARGET_P95_MS = 200.0
# (code, share of the accounts, yuan per kWh for the debits)
TARIFF_MIX = (("RES-FLAT", 0.35, "0.588"), ("RES-TIER", 0.35, "0.5283"), ("RES-TIER-TOU", 0.30, "0.5283"))
CHUNK = 5_000


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="kilowatt_portal_bench", help="database holding the fixture")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=365, help="days of readings and debits up to today")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per page first")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--rebuild", action="store_true", help="drop the fixture database and build it again")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE each page's slowest queries")
    parser.add_argument(
        "--http", metavar="URL", help="also time the pages over HTTP at URL (a running server)"
    )
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("set DATABASE_URL to a PostgreSQL server (any database on it; --db names the fixture)")
    base = url.rsplit("/", 1)[0]
    os.environ["DATABASE_URL"] = f"{base}/{args.db}"
    reuse = _prepare_database(base, args)

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    today = date.today()
    if reuse:
        print(f"fixture:        database {args.db} re-used ({args.customers:,} customers)")
    else:
        started = time.perf_counter()
        build(args.customers, args.days, today, random.Random(args.seed))
        print(f"fixture built:  {time.perf_counter() - started:.0f} s")
    _describe_fixture()
    time_pages(args, today)


def _prepare_database(base: str, args) -> bool:
    """True when the fixture database exists with the asked number of customers."""
    import psycopg

    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [args.db]).fetchone()
        if exists and not args.rebuild:
            try:
                with psycopg.connect(f"{base}/{args.db}") as fixture:
                    row = fixture.execute(
                        "SELECT count(*) FROM customers_customer WHERE number LIKE 'PB%%'"
                    ).fetchone()
                if row and row[0] == args.customers:
                    return True
            except psycopg.Error:
                pass
        conn.execute(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{args.db}"')
    return False


# --- the fixture ---------------------------------------------------------------------------


def _tariffs() -> dict:
    from billing.models import CostControlPolicy, Tariff, TariffTier, TariffVersion, TouPeriod

    since = date(2020, 1, 1)
    tariffs = {}

    def tiers(version):
        for number, upper, adder in ((1, "2160", "0"), (2, "4200", "0.05"), (3, None, "0.30")):
            TariffTier.objects.create(
                version=version,
                number=number,
                upper_kwh=None if upper is None else Decimal(upper),
                price_adder=Decimal(adder),
            )

    t = tariffs["RES-FLAT"] = Tariff.objects.create(
        code="RES-FLAT", name="居民单一电价", category="residential"
    )
    TariffVersion.objects.create(tariff=t, effective_from=since, price_flat=Decimal("0.588000"))
    t = tariffs["RES-TIER"] = Tariff.objects.create(
        code="RES-TIER", name="居民阶梯电价", category="residential"
    )
    tiers(
        TariffVersion.objects.create(
            tariff=t, effective_from=since, price_flat=Decimal("0.5283"), tier_basis="annual"
        )
    )
    t = tariffs["RES-TIER-TOU"] = Tariff.objects.create(
        code="RES-TIER-TOU", name="居民阶梯分时电价", category="residential"
    )
    v = TariffVersion.objects.create(
        tariff=t,
        effective_from=since,
        price_flat=Decimal("0.5283"),
        price_peak=Decimal("0.5783"),
        price_valley=Decimal("0.2883"),
        tier_basis="annual",
    )
    tiers(v)
    TouPeriod.objects.create(version=v, start="08:00", end="22:00", band="peak")
    TouPeriod.objects.create(version=v, start="22:00", end="08:00", band="valley")
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


def build(customers: int, days: int, today: date, rng: random.Random) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from billing.models import AccountBilling, AccountTariff
    from core.models import OrgUnit, TransformerArea
    from customers.models import Account, Customer, ServicePoint
    from metering.models import CostControlMode, Meter, MeterInstallation, MeterStatus
    from metering.partitions import ensure_partitions
    from portal.models import AccountBinding, PortalProfile

    first_day = today - timedelta(days=days)  # the first freeze; consumption from this day on
    ensure_partitions(first_month=first_day.replace(day=1), last_month=today)
    started = time.perf_counter()
    tariffs = _tariffs()
    unit = OrgUnit.objects.add_root(dict(code="PBENCH", name="门户基准县", kind="county"))
    areas = TransformerArea.objects.bulk_create(
        [
            TransformerArea(
                code=f"PB-T{i:05d}",
                name=f"台区{i}",
                supply_station=unit,
                transformer_capacity_kva=Decimal("400"),
            )
            for i in range(customers // 400 + 1)
        ]
    )
    installed_at = timezone.make_aware(datetime.combine(first_day - timedelta(days=30), datetime.min.time()))
    codes = [c for c, _s, _p in TARIFF_MIX]
    weights = [s for _c, s, _p in TARIFF_MIX]
    User = get_user_model()
    fleet = []  # (account id, meter id, service point id, tariff code, daily 0.01 kWh, opened_on)
    for start in range(0, customers, CHUNK):
        n = min(CHUNK, customers - start)
        plan = []
        for _ in range(n):
            opened_this_year = rng.random() < 0.05
            plan.append((rng.choices(codes, weights)[0], rng.randrange(300, 2_500), opened_this_year))
        with transaction.atomic():
            custs = Customer.objects.bulk_create(
                [
                    Customer(
                        number=f"PB{start + i:08d}",
                        name=f"门户用户{start + i}",
                        id_type="resident_id",
                        id_number_masked="3610**********1234",
                        id_number_digest=f"{start + i:064d}",
                        mobile_phone=f"137{start + i:08d}",
                        address=f"基准县幸福路{start + i}号",
                        category="residential",
                        voltage_level="220V",
                        contracted_capacity_kva=Decimal(8),
                        org_unit=unit,
                    )
                    for i in range(n)
                ]
            )
            accounts = Account.objects.bulk_create(
                [
                    Account(
                        number=f"{c.number}01",
                        customer=c,
                        settlement_mode="prepaid",
                        opened_on=first_day if opened else date(2020, 1, 1),
                    )
                    for c, (_code, _d, opened) in zip(custs, plan, strict=True)
                ]
            )
            points = ServicePoint.objects.bulk_create(
                [
                    ServicePoint(
                        number=f"PS{start + i:08d}",
                        customer=c,
                        account=a,
                        address=c.address,
                        transformer_area=areas[(start + i) // 400],
                    )
                    for i, (c, a) in enumerate(zip(custs, accounts, strict=True))
                ]
            )
            meters = Meter.objects.bulk_create(
                [
                    Meter(
                        asset_number=f"PM{start + i:010d}",
                        comm_address=f"{500_000_000_000 + start + i:012d}",
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
                    for a, (code, _d, _o) in zip(accounts, plan, strict=True)
                ]
            )
            AccountBilling.objects.bulk_create([AccountBilling(account=a) for a in accounts])
            users = User.objects.bulk_create(
                [User(username=c.mobile_phone, password="!bench-no-password") for c in custs]  # noqa: S106
            )
            PortalProfile.objects.bulk_create([PortalProfile(user=u, mobile_phone=u.username) for u in users])
            AccountBinding.objects.bulk_create(
                [AccountBinding(user=u, account=a) for u, a in zip(users, accounts, strict=True)]
            )
        for a, m, p, (code, daily, _o) in zip(accounts, meters, points, plan, strict=True):
            fleet.append((a.pk, m.pk, p.pk, code, daily, a.opened_on))
    print(
        f"rows set up:    {customers:,} customers, accounts, meters, portal users"
        f" in {time.perf_counter() - started:.0f} s"
    )

    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")  # bulk load: skip FK triggers
    started = time.perf_counter()
    year_kwh = _copy_readings(fleet, first_day, today, rng)
    print(f"readings:       {len(fleet) * (days + 1):,} COPYed in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    entries = _copy_ledger(fleet, first_day, today)
    print(f"ledger entries: {entries:,} COPYed in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    _balances_and_tiers(fleet, year_kwh, today)
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = DEFAULT")
        cursor.execute("VACUUM ANALYZE")
    print(f"balances, tiers, VACUUM ANALYZE: {time.perf_counter() - started:.0f} s")


def _daily_kwh(daily: int, account_id: int, day_number: int) -> int:
    """Deterministic daily use in 0.01 kWh around ``daily`` (weekly and seasonal swing)."""
    season = 1.0 + 0.35 * ((day_number // 30) % 12 in (0, 1, 6, 7))  # winter and summer months
    wobble = ((account_id * 7919 + day_number * 104729) % 41 - 20) / 100
    return max(int(daily * season * (1 + wobble)), 0)


def _fmt(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _copy_readings(fleet, first_day: date, today: date, rng: random.Random) -> dict[int, int]:
    """A freeze per meter per day from ``first_day`` to ``today``; returns each account's
    kWh (0.01) since 1 January for the tier accumulators."""
    from django.db import connection, transaction

    columns = (
        "meter_id, read_date, read_at, service_point_id, forward_total, forward_sharp, forward_peak,"
        " forward_flat, forward_valley, source, quality, quality_note"
    )
    registers = []
    for _a, _m, _p, code, _d, _o in fleet:
        if code == "RES-TIER-TOU":
            peak, valley = rng.randrange(0, 2_000_000), rng.randrange(0, 2_000_000)
            registers.append([peak + valley, None, peak, 0, valley])
        else:
            registers.append([rng.randrange(0, 5_000_000), None, None, None, None])
    year_start = today.replace(month=1, day=1)
    year_kwh = dict.fromkeys((f[0] for f in fleet), 0)
    day = first_day
    number = 0
    with transaction.atomic(), connection.cursor() as cursor:
        with cursor.copy(f"COPY metering_dailyreading ({columns}) FROM STDIN") as copy:  # noqa: S608
            while day <= today:
                lines = []
                iso = day.isoformat()
                read_at = f"{iso} 00:15:00+08"
                for (account_id, meter_id, point_id, _code, daily, _opened), regs in zip(
                    fleet, registers, strict=True
                ):
                    if number:
                        used = _daily_kwh(daily, account_id, number)
                        if regs[2] is None:
                            regs[0] += used
                        else:
                            peak = used * 6 // 10
                            regs[2] += peak
                            regs[4] += used - peak
                            regs[0] = regs[2] + regs[3] + regs[4]
                        if day > year_start:  # this freeze closes a day of this year
                            year_kwh[account_id] += used
                    if regs[2] is None:
                        bands = "\\N\t\\N\t\\N\t\\N"
                    else:
                        bands = f"\\N\t{_fmt(regs[2])}\t0.00\t{_fmt(regs[4])}"
                    lines.append(
                        f"{meter_id}\t{iso}\t{read_at}\t{point_id}\t{_fmt(regs[0])}\t{bands}\tcollected\tvalid\t\n"
                    )
                copy.write("".join(lines))
                day += timedelta(days=1)
                number += 1
    return year_kwh


def _copy_ledger(fleet, first_day: date, today: date) -> int:
    """Per account: an opening payment, a daily energy debit for every day up to yesterday
    (posted the morning after, as rating does) and a payment on the 1st of each month; ids
    in date order."""
    from django.db import connection, transaction

    columns = (
        "account_id, kind, amount, kwh, business_date, description, source, source_ref, idempotency_key,"
        " created_at"
    )
    cents_price = {code: int(Decimal(p) * 10_000) for code, _s, p in TARIFF_MIX}  # 0.0001 yuan/kWh
    count = 0
    with transaction.atomic(), connection.cursor() as cursor:
        with cursor.copy(f"COPY billing_ledgerentry ({columns}) FROM STDIN") as copy:  # noqa: S608
            opening = []
            for account_id, _m, _p, code, daily, _o in fleet:
                amount = daily * 40 * cents_price[code] // 1_000_000 + 50  # ~40 days of use, yuan
                opening.append(
                    f"{account_id}\tpayment\t{amount}.00\t\\N\t{first_day}\tOpening payment\tpayment\tbench\t"
                    f"pb:{first_day:%Y%m%d}:open:{account_id}\t{first_day} 09:00:00+08\n"
                )
            copy.write("".join(opening))
            count += len(opening)
            day, number = first_day, 1
            while day < today:
                lines = []
                iso = day.isoformat()
                posted = f"{day + timedelta(days=1)} 10:00:00+08"
                key_day = f"{day:%Y%m%d}"
                for account_id, _m, _p, code, daily, _o in fleet:
                    used = _daily_kwh(daily, account_id, number)
                    if used:
                        yuan = (used * cents_price[code] + 5_000) // 10_000  # fen, half-up
                        if yuan:
                            lines.append(
                                f"{account_id}\tenergy\t-{_fmt(yuan)}\t{_fmt(used)}\t{iso}\t"
                                f"Energy {iso} {_fmt(used)} kWh\treading\treading:{number}\t"
                                f"pb:{key_day}:{account_id}\t{posted}\n"
                            )
                    if day.day == 1 and account_id % 10 != 0:  # one in ten stops paying: warned, then tripped
                        amount = daily * 31 * cents_price[code] // 1_000_000 + 10
                        lines.append(
                            f"{account_id}\tpayment\t{amount}.00\t\\N\t{iso}\tPayment\tpayment\tbench\t"
                            f"pb:{key_day}:pay:{account_id}\t{iso} 19:30:00+08\n"
                        )
                copy.write("".join(lines))
                count += len(lines)
                day += timedelta(days=1)
                number += 1
    return count


def _balances_and_tiers(fleet, year_kwh: dict[int, int], today: date) -> None:
    from django.db import connection, transaction

    from billing.models import TierAccumulator

    year_start = today.replace(month=1, day=1)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE billing_accountbilling b SET balance = s.total, last_rated_at = now(),
                state = CASE WHEN s.total < 0 THEN 'tripped' WHEN s.total <= 20 THEN 'warning2'
                             WHEN s.total <= 50 THEN 'warning1' ELSE 'normal' END
            FROM (SELECT account_id, SUM(amount) AS total FROM billing_ledgerentry GROUP BY account_id) s
            WHERE b.account_id = s.account_id
            """
        )
        TierAccumulator.objects.bulk_create(
            [
                TierAccumulator(account_id=a, period_start=year_start, kwh=Decimal(year_kwh[a]).scaleb(-2))
                for a, _m, _p, code, _d, _o in fleet
                if code != "RES-FLAT"
            ],
            batch_size=5_000,
        )


def _describe_fixture() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM metering_dailyreading), (SELECT count(*) FROM billing_ledgerentry),"
            " (SELECT min(read_date) FROM metering_dailyreading),"
            " (SELECT max(read_date) FROM metering_dailyreading),"
            " pg_size_pretty(pg_database_size(current_database()))"
        )
        readings, entries, first, last, size = cursor.fetchone()
        cursor.execute("SELECT state, count(*) FROM billing_accountbilling GROUP BY state ORDER BY state")
        states = dict(cursor.fetchall())
    print(
        f"fixture:        {readings:,} daily readings ({first} to {last}), {entries:,} ledger entries, {size}"
    )
    print(f"                cost-control states {states}")


# --- timing --------------------------------------------------------------------------------


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def time_pages(args, today: date) -> None:
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from portal.models import AccountBinding

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    rng = random.Random(args.seed + 1)
    from django.contrib.auth import get_user_model

    bindings = list(AccountBinding.objects.values_list("user_id", "account__number"))
    users = get_user_model().objects.in_bulk([u for u, _n in bindings])
    pages = {
        "home": lambda number: reverse("portal:home"),
        "usage": lambda number: reverse("portal:usage", args=[number]),
        "statement": lambda number: reverse("portal:statement", args=[number]),
    }
    results = {}
    load_before = os.getloadavg()
    client = Client()
    for name, path_of in pages.items():
        for _ in range(args.warmup):
            user_id, number = rng.choice(bindings)
            client.force_login(users[user_id])
            response = client.get(path_of(number))
            assert response.status_code == 200, (name, response.status_code)
        user_id, number = rng.choice(bindings)
        client.force_login(users[user_id])
        with CaptureQueriesContext(connection) as queries:
            client.get(path_of(number))
        captured = list(queries.captured_queries)  # the next request clears the log
        if args.explain:
            _explain(name, captured)
        times = []
        for _ in range(args.requests):
            user_id, number = rng.choice(bindings)
            client.force_login(users[user_id])  # not timed: the sign-in is not the page
            path = path_of(number)
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (name, path, response.status_code)
        results[name] = (times, len(captured))
    load_after = os.getloadavg()

    print(
        f"\nin-process (Django test Client, server time), {args.requests} requests per page,"
        " random portal users:"
    )
    _report(results)
    print(
        f"load average:   {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"(1-min; {os.cpu_count()} CPUs, other work on the machine counts)"
    )
    if args.http:
        _time_http(args, bindings, users, pages, rng)


def _report(results: dict) -> None:
    print(
        f"  {'page':<10} {'n':>5} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'queries':>8}"
        f"  target p95 ≤ {TARGET_P95_MS:.0f} ms"
    )
    for name, (times, queries) in results.items():
        p95 = _percentile(times, 0.95)
        verdict = "met" if p95 <= TARGET_P95_MS else "MISSED"
        q = "" if queries is None else str(queries)
        print(
            f"  {name:<10} {len(times):>5} {statistics.median(times):>10.1f} {p95:>8.1f}"
            f" {max(times):>8.1f} {q:>8}  {verdict}"
        )


def _explain(name: str, captured: list[dict]) -> None:
    from django.db import connection

    slowest = sorted(captured, key=lambda q: float(q["time"]), reverse=True)[:3]
    print(f"\nEXPLAIN, page {name}: the 3 slowest of its {len(captured)} queries")
    with connection.cursor() as cursor:
        for q in slowest:
            sql = q["sql"]
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            print(f"-- {q['time']} s: {sql[:300]}{'…' if len(sql) > 300 else ''}")
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
            for (line,) in cursor.fetchall():
                print("   " + line)


def _time_http(args, bindings, users, pages, rng) -> None:
    import urllib.request

    from django.conf import settings
    from django.test import Client

    base = args.http.rstrip("/")
    client = Client()
    results = {}
    for name, path_of in pages.items():
        times = []
        for i in range(args.requests + args.warmup):
            user_id, number = rng.choice(bindings)
            client.force_login(users[user_id])
            cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
            request = urllib.request.Request(  # noqa: S310 (our own server, http only)
                base + path_of(number), headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}"}
            )
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (our own server)
                response.read()
                status = response.status
            if i >= args.warmup:
                times.append((time.perf_counter() - started) * 1000)
            assert status == 200, (name, status)
        results[name] = (times, None)
    print(
        f"\nover HTTP at {base} (one client, sequential;"
        " includes the network stack and the server's workers):"
    )
    _report(results)


if __name__ == "__main__":
    main()
