"""Serve simulated DL/T 645-2007 meters over TCP until SIGINT/SIGTERM.

A generated fleet (tests, benchmarks)::

    python manage.py meter_simulator --meters 10000 --seed 1 --port 9645 --ports 4

The installed meters of the database (the running product)::

    python manage.py meter_simulator --from-db

``--from-db`` serves every installed DL/T 645 meter on the port of its terminal's endpoint
(meters without a terminal on ``--port``), with its category, cost-control mode, relay and
keep-power state, and registers continuing from its latest stored daily reading.
See ``metering/simulator/fleet.py`` for what is simulated and how it stays deterministic.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import F, Max, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from metering.simulator import Fleet, MeterSpec, SimulatorServer
from metering.simulator.fleet import FAILURE_MODES, REGISTER_NAMES
from metering.simulator.server import is_loopback

RECENT_DAYS = 14  # the window searched for each meter's latest two daily readings


def _default_port() -> int:
    return int(settings.METERING_DEFAULT_ENDPOINT.rsplit(":", 1)[1])


def _port_of(endpoint: str) -> int | None:
    try:
        port = int(endpoint.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def specs_from_db(*, default_port: int) -> tuple[list[MeterSpec], set[str]]:
    """Installed DL/T 645 meters as simulator specs, and the endpoint hosts seen (the
    simulator listens on its own --host whatever the terminals say)."""
    from metering.models import CostControlMode, Meter, MeterInstallation, MeterStatus, RelayState

    meters = list(
        Meter.objects.filter(status=MeterStatus.INSTALLED, protocol="dlt645-2007")
        .select_related("terminal", "service_point__customer", "transformer_area")
        .order_by("pk")
    )
    ids = [m.pk for m in meters]
    latest = _latest_readings(ids)
    initial = {
        inst["meter_id"]: inst["initial_registers"]
        for inst in MeterInstallation.objects.filter(meter_id__in=ids, removed_at__isnull=True).values(
            "meter_id", "initial_registers"
        )
    }
    tz = timezone.get_current_timezone()
    hosts: set[str] = set()
    specs = []
    for meter in meters:
        port = default_port
        if meter.terminal_id:
            hosts.add(meter.terminal.endpoint.rsplit(":", 1)[0])
            port = _port_of(meter.terminal.endpoint) or default_port
        sp = meter.service_point
        if sp is not None:
            category = sp.customer.category
            capacity = sp.customer.contracted_capacity_kva
            multiplier = sp.multiplier
        else:  # a transformer-area (summary) meter: the area's residential load
            category = "residential"
            area_kva = meter.transformer_area.transformer_capacity_kva if meter.transformer_area else None
            capacity = (area_kva or Decimal(400)) * 5
            multiplier = None
        spec = MeterSpec(
            address=meter.comm_address,
            category=category,
            cost_control_mode=meter.cost_control_mode,
            gateway=str(port),
            port=port,
            relay_open=meter.relay_state == RelayState.OPEN,
            keep_power=meter.keep_power,
            alarm=meter.alarm_on,
            capacity_kva=capacity,
            multiplier=multiplier,
        )
        rows = latest.get(meter.pk, [])
        if rows:
            last = rows[0]
            spec.registers = {name: last[name] for name in REGISTER_NAMES if last.get(name) is not None}
            spec.registers_at = datetime.combine(last["read_date"], datetime.min.time(), tz)
            if meter.cost_control_mode == CostControlMode.LOCAL and last.get("remaining_balance") is not None:
                spec.remaining_balance = last["remaining_balance"]
            if len(rows) > 1:
                days = (last["read_date"] - rows[1]["read_date"]).days
                used = last["forward_total"] - rows[1]["forward_total"]
                if days > 0 and used > 0:
                    spec.daily_kwh = used / days
        elif initial.get(meter.pk, {}).get("forward_total") is not None:
            spec.registers = {"forward_total": Decimal(str(initial[meter.pk]["forward_total"]))}
        specs.append(spec)
    return specs, hosts


def _latest_readings(meter_ids: list[int]) -> dict[int, list[dict]]:
    """The latest two daily readings per meter (newest first): from the last RECENT_DAYS in
    one windowed query, then the latest one for meters with nothing that recent."""
    from metering.models import DailyReading

    fields = ("meter_id", "read_date", *REGISTER_NAMES, "remaining_balance")
    since = timezone.localdate() - timedelta(days=RECENT_DAYS)
    recent = (
        DailyReading.objects.filter(read_date__gte=since)
        .annotate(rank=Window(RowNumber(), partition_by=[F("meter_id")], order_by=F("read_date").desc()))
        .filter(rank__lte=2)
        .values(*fields)
    )
    latest: dict[int, list[dict]] = {}
    for row in recent.iterator(chunk_size=20_000):
        latest.setdefault(row["meter_id"], []).append(row)
    for rows in latest.values():
        rows.sort(key=lambda r: r["read_date"], reverse=True)
    missing = [pk for pk in meter_ids if pk not in latest]
    for i in range(0, len(missing), 5000):
        chunk = missing[i : i + 5000]
        last_dates = dict(
            DailyReading.objects.filter(meter_id__in=chunk)
            .values("meter_id")
            .annotate(last=Max("read_date"))
            .values_list("meter_id", "last")
        )
        for row in DailyReading.objects.filter(meter_id__in=list(last_dates)).values(*fields):
            if row["read_date"] == last_dates[row["meter_id"]]:
                latest[row["meter_id"]] = [row]
    return latest


class Command(BaseCommand):
    help = "Serve simulated DL/T 645-2007 meters over TCP (a generated fleet, or the database's)."

    def add_arguments(self, parser):
        source = parser.add_argument_group("fleet")
        source.add_argument(
            "--from-db", action="store_true", help="serve the installed meters of the database"
        )
        source.add_argument("--meters", type=int, default=1000, help="generated fleet size (default 1000)")
        source.add_argument("--seed", type=int, default=1, help="seed for everything random (default 1)")
        source.add_argument(
            "--local-share", type=float, default=0.1, help="share of local cost-control meters"
        )
        net = parser.add_argument_group("network")
        net.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
        net.add_argument(
            "--port",
            type=int,
            default=None,
            help="first port (default: the port of METERING_DEFAULT_ENDPOINT); with --from-db, "
            "the port for meters without a terminal",
        )
        net.add_argument("--ports", type=int, default=1, help="generated fleet: split over this many ports")
        net.add_argument(
            "--allow-external", action="store_true", help="allow a non-loopback --host (never in tests)"
        )
        behaviour = parser.add_argument_group("behaviour")
        behaviour.add_argument("--failure-rate", type=float, default=0.2, help="share of reads unanswered")
        behaviour.add_argument("--failure-mode", choices=FAILURE_MODES, default="session")
        behaviour.add_argument("--control-failure-rate", type=float, default=0.0)
        behaviour.add_argument("--latency-ms", type=float, default=0.0, help="mean reply latency (±50%%)")
        behaviour.add_argument(
            "--speed", type=float, default=1.0, help="simulated time per real second (default 1 = real time)"
        )
        behaviour.add_argument(
            "--report-every", type=float, default=60.0, help="print counters every N seconds (0: never)"
        )

    def handle(self, *args, **options):
        host = options["host"]
        if not options["allow_external"] and not is_loopback(host):
            raise CommandError(f"refusing to listen on {host}: not a loopback address (use --allow-external)")
        for name in ("failure_rate", "control_failure_rate", "local_share"):
            if not 0 <= options[name] <= 1:
                raise CommandError(f"--{name.replace('_', '-')} must be between 0 and 1")
        if options["speed"] < 0 or options["latency_ms"] < 0:
            raise CommandError("--speed and --latency-ms must not be negative")
        port = options["port"] if options["port"] is not None else _default_port()
        behaviour = {
            "seed": options["seed"],
            "failure_rate": options["failure_rate"],
            "failure_mode": options["failure_mode"],
            "control_failure_rate": options["control_failure_rate"],
            "latency_ms": options["latency_ms"],
            "speed": options["speed"],
        }
        started = time.monotonic()
        if options["from_db"]:
            specs, hosts = specs_from_db(default_port=port)
            if not specs:
                raise CommandError("no installed DL/T 645 meters in the database (load the demo first?)")
            fleet = Fleet.from_specs(specs, **behaviour)
            foreign = sorted(h for h in hosts if h not in (host, "localhost") and not is_loopback(h))
            if foreign:
                self.stderr.write(
                    f"note: terminal endpoints name hosts {', '.join(foreign)}; serving on {host}"
                )
            server_kwargs = {}
        else:
            if options["meters"] < 1 or options["ports"] < 1:
                raise CommandError("--meters and --ports must be at least 1")
            if options["ports"] > options["meters"]:
                raise CommandError("--ports cannot exceed --meters")
            fleet = Fleet.generate(
                options["meters"], local_share=options["local_share"], gateways=options["ports"], **behaviour
            )
            server_kwargs = {"port": port}
        self.stdout.write(f"built {len(fleet.meters)} meters in {time.monotonic() - started:.1f} s")
        try:
            asyncio.run(self._serve(fleet, host, server_kwargs, options))
        except OSError as exc:
            raise CommandError(f"cannot listen: {exc}") from None

    async def _serve(self, fleet: Fleet, host: str, server_kwargs: dict, options) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with SimulatorServer(
            fleet, host=host, allow_external=options["allow_external"], **server_kwargs
        ) as server:
            self._describe(fleet, server)
            reporter = None
            if options["report_every"] > 0:
                reporter = asyncio.create_task(self._report(server, options["report_every"]))
            await stop.wait()
            if reporter:
                reporter.cancel()
            self.stdout.write(f"stopping; served {self._counters(server)}")
        self.stdout.write("meter simulator stopped")

    def _describe(self, fleet: Fleet, server: SimulatorServer) -> None:
        summary = fleet.summary()
        first, last = fleet.address_range()
        self.stdout.write(
            self.style.SUCCESS(
                f"serving {summary['meters']} simulated DL/T 645 meters, addresses {first}–{last}, "
                f"seed {fleet.seed}, failure rate {fleet.failure_rate:.0%} ({fleet.failure_mode}), "
                f"latency {fleet.latency_ms:g} ms, speed ×{fleet.clock.speed:g}"
            )
        )
        for gateway, endpoint in zip(fleet.gateways, server.endpoints, strict=True):
            addresses = sorted(m.address for m in gateway.meters.values())
            self.stdout.write(f"  {endpoint}: {len(addresses)} meters {addresses[0]}–{addresses[-1]}")
        self.stdout.write(
            f"  categories {summary['categories']}; cost control {summary['cost_control']}; "
            f"{summary['drifting_clocks']} clocks drifting; {summary['event_flags']} with event flags; "
            f"{summary['relay_open']} relays open"
        )
        self.stdout.write("Ctrl-C (SIGINT) or SIGTERM stops it.")

    @staticmethod
    def _counters(server: SimulatorServer) -> str:
        stats = server.stats
        return (
            f"{stats['frames']} frames, {stats['replies']} replies, {stats['silent']} unanswered "
            f"(simulated failures), {stats['unknown_address']} for unknown addresses, "
            f"{stats['malformed']} malformed, {stats['connections']} connections"
        )

    async def _report(self, server: SimulatorServer, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.stdout.write(f"{timezone.localtime():%H:%M:%S} {self._counters(server)}")
            self.stdout.flush()
