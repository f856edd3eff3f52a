"""The terminal payment API under load (issue 5): gunicorn + PostgreSQL, driven by wrk.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kilowatt_pay_bench REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python benchmarks/payments_load.py --accounts 20000 --workers 4 --connections 16
    # payment → close confirmed, with the meter-fleet simulator and a Celery worker:
    ... benchmarks/payments_load.py --accounts 20000 --restore --restore-accounts 100

Drops and recreates the named PostgreSQL database, migrates and builds, untimed and with bulk
inserts, an org unit tree (province → city → county → hall + supply station), ``--accounts``
prepaid accounts (customer, account, service point, remote cost-control meter, installation,
billing state with an opening payment) and a self-service terminal device (its secret made
by ``device_create``).

Load (the default part): for each ``--workers`` value (e.g. ``3,4,5``), start
``gunicorn config.wsgi`` (sync workers, DEBUG off, log level WARNING), warm up with a short wrk
run, then run ``wrk --latency -s payments_load.lua`` for ``--duration`` seconds: every
request ``POST /api/v1/payments/terminal/payments`` with a new transaction id per thread, and
``--dup-share`` (10 %) of the requests repeating one of the thread's earlier transactions
with the same account and amount (a duplicate delivery). 201 (new) and 200 (repeat) are
success; anything else is reported. Every new payment also queues its receipt (outbox rows
for the portal and SMS in the payment's own statement, their ids pushed to the outbox's
Redis batch list after commit; no Celery worker or beat runs in this part, so they wait
there). The wrk script writes every transaction it sent; the transactions whose request
was still in flight when wrk stopped (no answer, so never "accepted") are delivered again
afterwards, as a terminal retries an unanswered transaction. Then gunicorn is stopped and the ledger checked:

- the payments of the run are exactly the transactions sent, each with its account and
  amount (none lost, none extra);
- every payment has exactly one ledger entry, with its amount, account and idempotency key,
  and no payment ledger entry lacks its payment row; the sums agree;
- ``billing.services.ledger.ledger_check()`` finds no cached balance off its entries.

Printed: load average before and after (``uptime``), requests/s, new payments/s, duplicate
share, p50/p90/p99 latency, non-2xx and socket errors, CPU used by gunicorn and by the
the PostgreSQL server per request, and the ledger check.

Restore (``--restore``): ``--restore-accounts`` tripped prepaid accounts on remote
cost-control meters served by the meter-fleet simulator (``run_in_thread``, relays open,
``--restore-gateways`` concentrators, each a Terminal whose endpoint is the simulator's), a
real Celery worker process (``celery -A config worker -c 2 -Q celery``) and gunicorn; each
account pays through the terminal API, ``--restore-interval`` seconds apart; the time from
payment posted to close confirmed by read-back is ``payments.services.latency.restore_figures``
over those payments. Checked: every relay closed, exactly one close per meter.

Targets (issue 5): ≥ 300 payments/s sustained, p99 ≤ 150 ms, zero lost or double-posted;
payment → close confirmed p95 ≤ 2 s. The machine has 2 cores shared by gunicorn, PostgreSQL,
wrk (and the worker and simulator for --restore).
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

LUA_TEMPLATE = Path(__file__).with_suffix(".lua")
URL_PATH = "/api/v1/payments/terminal/payments"
DEVICE_CODE = "BENCH-T1"
HALL_CODE = "PB-HALL"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--workers", default="4", help="gunicorn sync workers; a list runs each: 3,4,5")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", default="16", help="wrk connections; a list runs each: 16,32")
    parser.add_argument("--duration", type=int, default=30, help="seconds of the measured wrk run")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of the warm-up wrk run")
    parser.add_argument("--dup-share", type=float, default=0.10)
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--no-load", action="store_true", help="skip the wrk part")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the database if an earlier run built it with --accounts accounts (a new device secret)",
    )
    parser.add_argument("--worker-class", default="sync", help="gunicorn worker class: sync or gthread")
    parser.add_argument("--worker-threads", type=int, default=1, help="gunicorn --threads (gthread workers)")
    parser.add_argument(
        "--breakdown", action="store_true", help="first time the parts of a payment request in-process"
    )
    parser.add_argument("--restore", action="store_true", help="also measure payment → close confirmed")
    parser.add_argument("--restore-accounts", type=int, default=100)
    parser.add_argument("--restore-gateways", type=int, default=10, help="simulated concentrators")
    parser.add_argument("--restore-interval", type=float, default=0.2, help="seconds between payments")
    parser.add_argument("--restore-workers", type=int, default=3, help="gunicorn workers for --restore")
    parser.add_argument("--meter-latency-ms", type=float, default=0.0, help="simulated link latency")
    parser.add_argument("--celery-concurrency", type=int, default=2, help="celery worker -c for --restore")
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("set DATABASE_URL to a PostgreSQL database that may be dropped")
    if not os.environ.get("REDIS_URL", "").startswith("redis"):
        sys.exit("set REDIS_URL (the cache for device sign-ins and, with --restore, the Celery broker)")
    if not shutil.which("wrk") and not args.no_load:
        sys.exit("wrk is needed (apt-get install wrk)")
    import psycopg

    base, name = url.rsplit("/", 1)
    reused = args.reuse and _built_before(url, args.accounts)
    if not reused:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')

    import django
    from django.core.management import call_command

    django.setup()
    from django.db import connection

    from payments.models import TerminalDevice

    if reused:
        from payments.services.devices import device_secret_reset

        secret = device_secret_reset(code=DEVICE_CODE)
        device = TerminalDevice.objects.get(code=DEVICE_CODE)
        print(f"fixture:               reused {name} ({args.accounts:,} prepaid accounts), new device secret")
    else:
        call_command("migrate", verbosity=0)

        started = time.perf_counter()
        hall, station = build_org_units()
        build_accounts(args.accounts, station, random.Random(args.seed))
        from payments.services.devices import device_create

        device, secret = device_create(code=DEVICE_CODE, kind="terminal", hall_code=hall.code)

        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        elapsed = time.perf_counter() - started
        print(f"fixture:               {args.accounts:,} prepaid accounts in {elapsed:.1f} s")
    auth = f"Device {DEVICE_CODE}:{secret}"
    print(f"machine:               {os.cpu_count()} CPUs; {_uptime()}")

    Gunicorn.worker_class, Gunicorn.threads = args.worker_class, args.worker_threads
    if args.breakdown:
        breakdown(device, secret)
    workdir = Path(tempfile.mkdtemp(prefix="payments_load."))
    results = []
    try:
        if not args.no_load:
            for workers in [int(w) for w in args.workers.split(",")]:
                for connections in [int(c) for c in args.connections.split(",")]:
                    results.append(load_run(args, auth, workers, connections, workdir))
            print()
            print("summary (workers, connections: req/s, new payments/s, p50, p99, non-2xx, errors, check):")
            for r in results:
                print(
                    f"  w={r['workers']} c={r['connections']}: {r['rps']:.0f} req/s, "
                    f"{r['pps']:.0f} payments/s, "
                    f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, non-2xx {r['non2xx']}, "
                    f"socket errors {r['socket_errors']}, ledger {'OK' if r['ok'] else 'FAILED'}, "
                    f"load {r['load_before']:.2f}→{r['load_after']:.2f}"
                )
        if args.restore:
            restore_run(args, auth, station, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if any(not r["ok"] for r in results):
        sys.exit(1)


# --- fixtures (not timed) ----------------------------------------------------------------


def build_org_units():
    from core.models import OrgUnit

    province = OrgUnit.add_root(code="PB-PROV", name="基准省公司", kind="province")
    city = province.add_child(code="PB-CITY", name="基准市公司", kind="city")
    county = city.add_child(code="PB-COUNTY", name="基准县公司", kind="county")
    hall = county.add_child(code=HALL_CODE, name="基准营业厅", kind="hall")
    station = OrgUnit.objects.get(pk=county.pk).add_child(
        code="PB-STATION", name="基准供电所", kind="station"
    )
    from billing.models import CostControlPolicy

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
    return hall, station


def build_accounts(
    count: int,
    station,
    rng: random.Random,
    *,
    prefix: str = "P",
    tripped: bool = False,
    addresses: list[str] | None = None,
    terminals: list | None = None,
) -> list:
    """``count`` prepaid customers, each with an account ``<prefix><9 digits>01``, a service
    point, a remote cost-control meter and its installation, a billing state and an opening
    ledger entry (a payment of 200-1,000 yuan; tripped: an energy charge of 20 yuan and the
    state tripped). Returns the accounts."""
    from django.db import transaction
    from django.utils import timezone

    from billing.models import AccountBilling, CostControlState, EntryKind, EntrySource, LedgerEntry
    from core.models import TransformerArea
    from customers.models import Account, Customer, ServicePoint
    from metering.models import CostControlMode, Meter, MeterInstallation, MeterStatus

    now = timezone.now()
    areas = TransformerArea.objects.bulk_create(
        [
            TransformerArea(
                code=f"{prefix}B-T{i:05d}",
                name=f"台区{prefix}{i}",
                supply_station=station,
                transformer_capacity_kva=Decimal("400"),
            )
            for i in range(count // 400 + 1)
        ]
    )
    result = []
    step = 5_000
    for start in range(0, count, step):
        n = min(step, count - start)
        with transaction.atomic():
            customers = Customer.objects.bulk_create(
                [
                    Customer(
                        number=f"{prefix}{i:09d}",
                        name="基准用户",
                        id_type="resident_id",
                        id_number_masked="3610**********1234",
                        id_number_digest=f"{prefix}{i:063d}",
                        mobile_phone=f"139{rng.randrange(10**8):08d}",
                        address="基准路1号",
                        category="residential",
                        voltage_level="220V",
                        contracted_capacity_kva=Decimal(8),
                        org_unit=station,
                    )
                    for i in range(start, start + n)
                ]
            )
            accounts = Account.objects.bulk_create(
                [
                    Account(
                        number=f"{c.number}01",
                        customer=c,
                        settlement_mode="prepaid",
                        opened_on=date(2020, 1, 1),
                    )
                    for c in customers
                ]
            )
            points = ServicePoint.objects.bulk_create(
                [
                    ServicePoint(
                        number=f"S{prefix}{start + i:09d}",
                        customer=c,
                        account=a,
                        address=c.address,
                        transformer_area=areas[(start + i) // 400],
                    )
                    for i, (c, a) in enumerate(zip(customers, accounts, strict=True))
                ]
            )
            meters = Meter.objects.bulk_create(
                [
                    Meter(
                        asset_number=f"{prefix}M{start + i:010d}",
                        comm_address=addresses[start + i] if addresses else f"8{start + i + 1:011d}",
                        manufacturer="基准",
                        model="DDZY",
                        status=MeterStatus.INSTALLED,
                        cost_control_mode=CostControlMode.REMOTE,
                        service_point=p,
                        transformer_area_id=p.transformer_area_id,
                        terminal=terminals[(start + i) % len(terminals)] if terminals else None,
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
                        installed_at=now - timedelta(days=30),
                        initial_registers={"forward_total": "0"},
                    )
                    for m, p in zip(meters, points, strict=True)
                ]
            )
            if tripped:
                opening = [Decimal("-20.00")] * n
            else:
                opening = [Decimal(rng.randrange(200, 1_000)) for _ in range(n)]
            AccountBilling.objects.bulk_create(
                [
                    AccountBilling(
                        account=a,
                        balance=amount,
                        state=CostControlState.TRIPPED if tripped else CostControlState.NORMAL,
                        state_changed_at=now - timedelta(hours=1) if tripped else None,
                        warning1_at=now - timedelta(days=3) if tripped else None,
                        warning2_at=now - timedelta(days=2) if tripped else None,
                        tripped_at=now - timedelta(hours=1) if tripped else None,
                    )
                    for a, amount in zip(accounts, opening, strict=True)
                ]
            )
            LedgerEntry.objects.bulk_create(
                [
                    LedgerEntry(
                        account=a,
                        kind=EntryKind.ENERGY_CHARGE if tripped else EntryKind.PAYMENT,
                        amount=amount,
                        business_date=now.date() - timedelta(days=3),
                        description="Opening balance",
                        source=EntrySource.READING if tripped else EntrySource.PAYMENT,
                        source_ref="bench",
                        idempotency_key=f"bench-open:{a.pk}",
                    )
                    for a, amount in zip(accounts, opening, strict=True)
                ]
            )
        result.extend(accounts)
    return result


# --- processes ---------------------------------------------------------------------------


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _server_env() -> dict:
    env = dict(os.environ)
    env.update(
        DJANGO_DEBUG="false",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        LOG_LEVEL="WARNING",
        LOG_FORMAT="json",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _built_before(url: str, accounts: int) -> bool:
    """Whether the database exists with the benchmark's device and ``accounts`` accounts."""
    import psycopg

    try:
        with psycopg.connect(url) as conn:
            devices = conn.execute(
                "SELECT count(*) FROM payments_terminaldevice WHERE code = %s", [DEVICE_CODE]
            )
            device_count = devices.fetchone()[0]
            found = conn.execute("SELECT count(*) FROM customers_account WHERE number LIKE 'P%%'").fetchone()[
                0
            ]
            return device_count == 1 and found == accounts
    except psycopg.Error:
        return False


class Gunicorn:
    # The worker class and threads of every run (set from --worker-class / --worker-threads).
    worker_class, threads = "sync", 1

    def __init__(self, workers: int, port: int, logfile: Path):
        self.workers, self.port, self.logfile = workers, port, logfile

    def __enter__(self):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", self.port)) == 0:
                raise SystemExit(f"port {self.port} is already in use; pick another with --port")
        self.log = open(self.logfile, "w")  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(
            [
                str(ROOT / ".venv/bin/gunicorn"),
                "config.wsgi",
                "--workers",
                str(self.workers),
                "--worker-class",
                self.worker_class,
                "--threads",
                str(self.threads),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "warning",
                "--backlog",
                "2048",
                "--timeout",
                "60",
            ],
            cwd=ROOT,
            env=_server_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited: {self.logfile.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}{URL_PATH}", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        else:
            raise SystemExit("gunicorn did not start within 60 s")
        return self

    def cpu_seconds(self) -> float:
        """utime + stime of the master and its workers (from /proc)."""
        pids = [self.proc.pid]
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            pids += [int(c) for c in children]
        except OSError:
            pass
        return sum(_proc_cpu(pid) for pid in pids)

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def _postgres_cpu(db_name: str) -> float:
    """CPU seconds used so far by the PostgreSQL server (readable from /proc when it runs on
    this host): the postmaster's own and its exited children's (cutime, cstime: backends that
    closed, as they do every ``CONN_MAX_AGE`` seconds) plus its live children's (backends,
    WAL writer, autovacuum). Differences between two calls are the server's CPU in between."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s LIMIT 1", [db_name])
        row = cursor.fetchone()
    if row is None:
        return 0.0
    try:
        postmaster = int(Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    except (OSError, ValueError, IndexError):
        return 0.0
    own = sum(int(v) for v in fields[11:15]) / CLK_TCK  # utime, stime, cutime, cstime
    return own + sum(_proc_cpu(int(pid)) for pid in children)


def _machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def run_wrk(args, auth: str, tag: str, seconds: int, connections: int, logdir: Path) -> tuple[dict, str]:
    logdir.mkdir(parents=True, exist_ok=True)
    script = logdir / "payments_load.lua"
    text = LUA_TEMPLATE.read_text()
    for key, value in {
        "@ACCOUNTS@": str(args.accounts),
        "@DUP_SHARE@": repr(args.dup_share),
        "@TAG@": tag,
        "@AUTH@": auth,
        "@LOGDIR@": str(logdir),
    }.items():
        text = text.replace(key, value)
    script.write_text(text)
    out = subprocess.run(
        [
            "wrk",
            "--latency",
            "-t",
            str(args.threads),
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{args.port}{URL_PATH}",
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"wrk failed: {out.stderr}")
    match = re.search(r"^BENCH_JSON (.*)$", out.stdout, re.M)
    if not match:
        raise SystemExit(f"no BENCH_JSON line in wrk's output:\n{out.stdout}\n{out.stderr}")
    return json.loads(match.group(1)), out.stdout + out.stderr


def read_sent(logdir: Path) -> dict[str, tuple[str, Decimal]]:
    sent = {}
    for path in logdir.glob("sent-*.tsv"):
        for line in path.read_text().splitlines():
            txn, account, amount = line.split("\t")
            sent[txn] = (account, Decimal(amount))
    return sent


def post_payment(port: int, auth: str, txn: str, account: str, amount) -> tuple[int, dict]:
    body = json.dumps({"txn_id": txn, "account_number": account, "amount": str(amount), "method": "cash"})
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{URL_PATH}",
        data=body.encode(),
        headers={"Authorization": auth, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (http://127.0.0.1 only)
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")[:500]}


def breakdown(device, secret: str, n: int = 300) -> None:
    """CPU and wall time per call, in this process (no gunicorn, no wrk), of the whole request
    through Django's test client and of its parts, on fresh transactions and accounts."""
    from django.test import Client

    from customers.models import Account
    from payments.services import devices, posting

    client = Client(HTTP_AUTHORIZATION=f"Device {DEVICE_CODE}:{secret}", SERVER_NAME="127.0.0.1")
    account = Account.objects.get(number="P00000000101")

    def request(tag):
        def call(i):
            body = {
                "txn_id": f"bd{tag}-{i}",
                "account_number": f"P{i:09d}01",
                "amount": "12.34",
                "method": "cash",
            }
            response = client.post(URL_PATH, data=json.dumps(body), content_type="application/json")
            assert response.status_code in (200, 201), response.content

        return call

    def audited_post(i):
        from core.audit import audit_context

        with audit_context(action="terminal_payment", device=DEVICE_CODE, hall=device.hall_id):
            posting.payment_post(
                channel="terminal",
                external_id=f"bda-{i}",
                account_number=f"P{i:09d}01",
                amount=Decimal("12.34"),
                method="cash",
            )

    def first_sign_in(i):
        devices.device_credentials_forget()
        devices.device_authenticate(code=DEVICE_CODE, secret=secret, client_addr="127.0.0.1")

    parts = [
        ("whole request, new payment", request("n")),
        ("whole request, repeat (200)", request("n")),
        (
            "terminal_payment_post",
            lambda i: devices.terminal_payment_post(
                device=device,
                txn_id=f"bdt-{i}",
                account_number=f"P{i:09d}01",
                amount=Decimal("12.34"),
                method="cash",
            ),
        ),
        (
            "  payment_post (no audit context)",
            lambda i: posting.payment_post(
                channel="terminal",
                external_id=f"bdp-{i}",
                account_number=f"P{i:09d}01",
                amount=Decimal("12.34"),
                method="cash",
            ),
        ),
        ("  payment_post inside audit_context", audited_post),
        (
            "  _account_info (the reply's account)",
            lambda i: devices._account_info(Account.objects.select_related("customer").get(pk=account.pk)),
        ),
        (
            "  device_authenticate (verified before)",
            lambda i: devices.device_authenticate(code=DEVICE_CODE, secret=secret, client_addr="127.0.0.1"),
        ),
        ("  device_authenticate (first time)", first_sign_in),
    ]
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    request("w")(2)  # signs the device in (verified credentials are kept for a while)
    with CaptureQueriesContext(connection) as new:
        request("q")(1)
    with CaptureQueriesContext(connection) as repeat:
        request("q")(1)
    savepoints = sum("SAVEPOINT" in q["sql"] for q in new.captured_queries)
    print(
        f"SQL statements:        {len(new)} for a new payment ({savepoints} of them savepoint or release), "
        f"{len(repeat)} for a repeat (device signed in before)"
    )
    print(f"breakdown ({n} calls each, in this process; load {os.getloadavg()[0]:.2f}):")
    for name, call in parts:
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(n):
            call(1000 + i)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"  {name:40} CPU {1000 * cpu / n:6.2f} ms   wall {1000 * wall / n:6.2f} ms")


# --- the load run ------------------------------------------------------------------------


def load_run(args, auth: str, workers: int, connections: int, workdir: Path) -> dict:
    from django.db import connection

    from payments.models import Payment

    db_name = connection.settings_dict["NAME"]
    tag = f"w{workers}c{connections}x{int(time.time()) % 100000}"
    rundir = workdir / tag
    rundir.mkdir()
    print()
    print(
        f"=== gunicorn {Gunicorn.worker_class} workers {workers}"
        f"{f' x {Gunicorn.threads} threads' if Gunicorn.threads > 1 else ''}, "
        f"wrk -t{args.threads} -c{connections} -d{args.duration}s ==="
    )
    with Gunicorn(workers, args.port, rundir / "gunicorn.log") as server:
        warm, _out = run_wrk(args, auth, tag + "w", args.warmup, connections, rundir / "warmup")
        print(f"warm-up:               {warm['requests']:,} requests in {args.warmup} s")
        load_before = os.getloadavg()
        print(f"before:                {_uptime()}")
        cpu_g0, cpu_p0, busy0 = server.cpu_seconds(), _postgres_cpu(db_name), _machine_busy()
        stats, output = run_wrk(args, auth, tag, args.duration, connections, rundir / "measured")
        cpu_g1, cpu_p1, busy1 = server.cpu_seconds(), _postgres_cpu(db_name), _machine_busy()
        load_after = os.getloadavg()
        print(f"after:                 {_uptime()}")
        print("wrk output:")
        print("  " + "\n  ".join(line for line in output.splitlines() if not line.startswith("BENCH_JSON")))
        # Transactions whose request was in flight when wrk stopped got no answer (never
        # accepted); a terminal retries those. Deliver them again so that the check below
        # can demand payments == transactions sent.
        redelivered = {}
        for sub in ("warmup", "measured"):
            sent = read_sent(rundir / sub)
            prefix = f"{DEVICE_CODE}:{tag}{'w' if sub == 'warmup' else ''}-"
            paid = set(
                Payment.objects.filter(channel="terminal", external_id__startswith=prefix).values_list(
                    "external_id", flat=True
                )
            )
            for txn, (account, amount) in sent.items():
                if f"{DEVICE_CODE}:{txn}" not in paid:
                    redelivered[txn] = post_payment(args.port, auth, txn, account, amount)[0]
        server_log = (rundir / "gunicorn.log").read_text()
    seconds = stats["duration_us"] / 1e6
    requests = stats["requests"]
    non2xx = stats["status_errors"]
    socket_errors = sum(stats[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    result = {
        "workers": workers,
        "connections": connections,
        "rps": requests / seconds,
        "pps": stats["s201"] / seconds,
        "p50_ms": stats["p50_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "non2xx": stats["other"],
        "socket_errors": socket_errors,
        "load_before": load_before[0],
        "load_after": load_after[0],
    }
    print(f"requests:              {requests:,} in {seconds:.1f} s = {requests / seconds:,.0f} req/s")
    print(
        f"new payments (201):    {stats['s201']:,} = {stats['s201'] / seconds:,.0f} payments/s; "
        f"repeats answered 200: {stats['s200']:,}"
    )
    print(
        f"duplicates sent:       {stats['dups']:,} of {stats['sent']:,} requests sent "
        f"({stats['dups'] / max(1, stats['sent']):.1%}); distinct transactions sent {stats['new']:,}"
    )
    print(
        f"latency:               p50 {stats['p50_us'] / 1000:.1f} ms, p90 {stats['p90_us'] / 1000:.1f} ms, "
        f"p99 {stats['p99_us'] / 1000:.1f} ms, p99.9 {stats['p999_us'] / 1000:.1f} ms, "
        f"max {stats['max_us'] / 1000:.1f} ms"
    )
    print(f"non-2xx responses:     {stats['other']} (wrk's count: {non2xx}); socket errors {socket_errors}")
    print(
        f"CPU per request:       gunicorn {1000 * (cpu_g1 - cpu_g0) / max(1, requests):.2f} ms, "
        f"PostgreSQL {1000 * (cpu_p1 - cpu_p0) / max(1, requests):.2f} ms; "
        f"machine busy {busy:.0%} of {os.cpu_count()} CPUs"
    )
    print(
        f"unanswered at the stop, delivered again: {len(redelivered)} "
        f"({', '.join(f'{k}→{v}' for k, v in list(redelivered.items())[:8])})"
    )
    if "Traceback" in server_log or "ERROR" in server_log:
        print("gunicorn log (tail):\n" + server_log[-3000:])
    problems = ledger_problems(rundir, tag)
    problems += [f"redelivery of {k} answered {v}" for k, v in redelivered.items() if v not in (200, 201)]
    if stats["other"]:
        problems.append(f"{stats['other']} non-2xx responses")
    result["ok"] = not problems
    print(f"ledger check:          {'OK' if not problems else 'FAILED'}")
    for p in problems[:20]:
        print(f"  - {p}")
    target = result["pps"] >= 300 and result["p99_ms"] <= 150 and not problems
    print(f"target (≥ 300 payments/s, p99 ≤ 150 ms, none lost or doubled): {'met' if target else 'MISSED'}")
    return result


def ledger_problems(rundir: Path, tag: str) -> list[str]:
    """Compare the payments of the run with the transactions sent, and the payments with
    the ledger (all payments in the database, not only this run's)."""
    from django.db import connection

    from billing.services.ledger import ledger_check
    from payments.models import Payment

    problems = []
    for sub, run_tag in (("warmup", tag + "w"), ("measured", tag)):
        sent = read_sent(rundir / sub)
        prefix = f"{DEVICE_CODE}:{run_tag}-"
        rows = Payment.objects.filter(channel="terminal", external_id__startswith=prefix).values_list(
            "external_id", "account__number", "amount"
        )
        paid = {}
        for external_id, account, amount in rows:
            txn = external_id.split(":", 1)[1]
            if txn in paid:
                problems.append(f"{external_id} posted twice")
            paid[txn] = (account, amount)
        lost = sorted(set(sent) - set(paid))
        extra = sorted(set(paid) - set(sent))
        wrong = [t for t in set(sent) & set(paid) if sent[t] != paid[t]]
        print(
            f"{sub + ':':22} {len(sent):,} transactions sent, {len(paid):,} payments; "
            f"lost {len(lost)}, not sent {len(extra)}, other account/amount {len(wrong)}"
        )
        problems += [f"{sub}: {t} sent, no payment" for t in lost[:5]]
        problems += [f"{sub}: payment {t} never sent" for t in extra[:5]]
        problems += [f"{sub}: {t} sent {sent[t]}, posted {paid[t]}" for t in wrong[:5]]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT
              (SELECT count(*) FROM payments_payment),
              (SELECT count(*) FROM payments_payment p JOIN billing_ledgerentry e ON e.id = p.entry_id
                 WHERE e.amount = p.amount AND e.account_id = p.account_id AND e.kind = 'payment'
                   AND e.idempotency_key = 'payment:' || p.channel || ':' || p.external_id),
              (SELECT count(*) FROM billing_ledgerentry e WHERE e.idempotency_key LIKE 'payment:%%'
                 AND NOT EXISTS (SELECT 1 FROM payments_payment p WHERE p.entry_id = e.id)),
              (SELECT count(*) FROM billing_ledgerentry e WHERE e.idempotency_key LIKE 'payment:%%'),
              (SELECT coalesce(sum(amount), 0) FROM payments_payment),
              (SELECT coalesce(sum(amount), 0) FROM billing_ledgerentry
                 WHERE idempotency_key LIKE 'payment:%%')
            """
        )
        payments, matched, orphans, entries, paid_sum, entry_sum = cursor.fetchone()
    print(
        f"ledger:                {payments:,} payments, {matched:,} with their own matching entry, "
        f"{entries:,} payment entries ({orphans} without a payment); sums {paid_sum} / {entry_sum}"
    )
    if matched != payments:
        problems.append(f"{payments - matched} payments without a matching ledger entry")
    if orphans or entries != payments:
        problems.append(
            f"{orphans} payment entries without a payment ({entries} entries, {payments} payments)"
        )
    if paid_sum != entry_sum:
        problems.append(f"sum of payments {paid_sum} != sum of payment entries {entry_sum}")
    started = time.perf_counter()
    mismatches = ledger_check()
    print(f"ledger_check():        {len(mismatches)} differences ({time.perf_counter() - started:.1f} s)")
    problems += [f"balance off: {m}" for m in mismatches[:5]]
    return problems


# --- payment → close confirmed -----------------------------------------------------------


def restore_run(args, auth: str, station, workdir: Path) -> None:
    from django.utils import timezone

    from config.celery import app
    from metering.models import CommandAction, CommandStatus, RemoteCommand, Terminal
    from metering.simulator import Fleet, MeterSpec, run_in_thread
    from payments.models import Payment
    from payments.services.latency import restore_figures

    k = args.restore_accounts
    gateways = max(1, min(args.restore_gateways, k))
    addresses = [f"{930_100_000_000 + i:012d}" for i in range(k)]
    midnight = timezone.make_aware(
        datetime.combine(timezone.localdate() - timedelta(days=1), datetime.min.time())
    )
    fleet = Fleet.from_specs(
        [
            MeterSpec(
                address=a,
                gateway=str(i % gateways),
                relay_open=True,
                registers={"forward_total": Decimal("1000.00")},
                registers_at=midnight,
            )
            for i, a in enumerate(addresses)
        ],
        seed=5,
        failure_rate=0.0,
        control_failure_rate=0.0,
        latency_ms=args.meter_latency_ms,
        clock_drift_share=0.0,
        event_share=0.0,
        pv_share=0.0,
        low_balance_share=0.0,
    )
    print()
    print(
        f"=== payment → close confirmed: {k} tripped accounts, {gateways} simulated concentrators, "
        f"link latency {args.meter_latency_ms:g} ms, gunicorn {args.restore_workers} workers, "
        f"celery -c {args.celery_concurrency} ==="
    )
    with run_in_thread(fleet) as simulator:
        terminals = [
            Terminal.objects.create(address=f"TB{g:05d}", endpoint=simulator.endpoints[g])
            for g in range(gateways)
        ]
        # Meter i sits behind gateway i % gateways, as build_accounts assigns terminals.
        accounts = build_accounts(
            k,
            station,
            random.Random(args.seed + 1),
            prefix="Q",
            tripped=True,
            addresses=addresses,
            terminals=terminals,
        )
        for i, a in enumerate(addresses):
            assert simulator.endpoint_for(a) == terminals[i % gateways].endpoint
        app.control.purge()
        log = open(workdir / "celery.log", "w")  # noqa: SIM115
        env = _server_env()
        env["LOG_LEVEL"] = "INFO"
        worker = subprocess.Popen(
            [
                str(ROOT / ".venv/bin/celery"),
                "-A",
                "config",
                "worker",
                "-c",
                str(args.celery_concurrency),
                "-Q",
                "celery",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--hostname",
                f"paybench-{os.getpid()}@%h",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while "ready." not in (workdir / "celery.log").read_text():
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        "celery worker did not start:\n" + (workdir / "celery.log").read_text()[-3000:]
                    )
                time.sleep(0.2)
            with Gunicorn(args.restore_workers, args.port, workdir / "gunicorn-restore.log"):
                print(f"before:                {_uptime()}")
                t0 = time.monotonic()

                def pay(i_account):
                    i, account = i_account
                    delay = t0 + i * args.restore_interval - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    return post_payment(args.port, auth, f"restore-{i}", account.number, "100.00")

                with ThreadPoolExecutor(max_workers=8) as pool:
                    answers = list(pool.map(pay, enumerate(accounts)))
                bad = [a for a in answers if a[0] != 201]
                ids = [body["payment_id"] for status, body in answers if status == 201]
                statuses = [body["restore"]["status"] for status, body in answers if status == 201]

                def settled():
                    return not RemoteCommand.objects.filter(
                        action=CommandAction.CLOSE,
                        status__in=[
                            s
                            for s in CommandStatus.values
                            if s not in ("confirmed", "failed", "timed_out", "cancelled")
                        ],
                    ).exists()

                deadline = time.monotonic() + 120
                while not settled() and time.monotonic() < deadline:
                    time.sleep(0.2)
                print(f"after:                 {_uptime()}")
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            log.close()
        payments = list(Payment.objects.filter(pk__in=ids).select_related("restore_command"))
        figures = restore_figures(payments)
        still_open = [a for a in addresses if fleet.registers(a)["relay_open"]]
        closes = [fleet.control_count(a, "close") for a in addresses]
    commands = RemoteCommand.objects.filter(action=CommandAction.CLOSE).count()
    print(f"payments:              {len(ids)} posted (201), {len(bad)} other answers {bad[:3]}")
    print(f"API restore status:    {dict((s, statuses.count(s)) for s in set(statuses))}")
    print(
        f"close commands:        {commands} "
        f"({sum(1 for p in payments if p.restore_command_id)} on payments); "
        f"relays still open {len(still_open)}; close frames per meter: min {min(closes)}, max {max(closes)}"
    )
    print(
        f"payment → close confirmed: {figures.confirmed} confirmed, {figures.waiting} waiting, "
        f"{figures.failed} failed; median {_s(figures.median_seconds)}, p95 {_s(figures.p95_seconds)}, "
        f"slowest {_s(figures.slowest_seconds)}; within 2 s {figures.within_2s_share or 0:.0%}"
    )
    ok = figures.confirmed == k and not still_open and commands == k and max(closes) == 1 and not bad
    target = ok and figures.p95_seconds is not None and figures.p95_seconds <= 2.0
    print(f"check (every relay closed, one close each): {'OK' if ok else 'FAILED'}")
    print(f"target (p95 ≤ 2 s): {'met' if target else 'MISSED'}")
    if not ok:
        print("celery log (tail):\n" + (workdir / "celery.log").read_text()[-3000:])


def _s(value) -> str:
    return "—" if value is None else f"{value:.2f} s"


if __name__ == "__main__":
    main()
