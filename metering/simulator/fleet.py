"""A deterministic fleet of simulated DL/T 645-2007 meters (the state; ``server.py`` puts it
on the wire).

Each meter has a customer category (residential / commercial / large_industry /
agriculture) and draws power by the category's profile (``profiles.py``: season, day type,
hour, plus its own scale, day-to-day variation and half-hourly noise). Power is constant
within a local half hour, so energy is integrated exactly: registers are kept as ``Decimal``
kilowatt-seconds (half-hourly power ``Decimal(str(round(kw, 4)))`` × whole seconds), and a
register read is that sum in kWh, truncated to 0.01 kWh (a meter only steps once a whole
hundredth has been measured) and wrapped at 1,000,000.00 like a 4-byte BCD register.
Because the sum is exact, a meter's registers do not depend on how often it is read.

Registers and state
    forward total and rates 1-4 (sharp / peak / flat / valley, by the TOU pattern in
    ``profiles.py``), reverse (rooftop PV export on a few meters), combined reactive
    (from the meter's power factor, 0.85-0.95), maximum demand of the month (the half
    hour's power × the meter's peak factor, with its time; reset when the local month
    changes), relay, keep-power (保电), alarm, and for local cost-control meters a
    remaining balance (yuan) and unit price. Nothing accrues while the relay is open.

Local cost-control meters
    decrement their balance as energy accrues and trip themselves in the second the balance
    reaches zero (unless keep-power is set: then the balance runs into overdraft, read at DI
    00900201, and releasing keep-power trips the meter at once). A close command is refused
    (0xDC, error byte 0x04) while the balance is ≤ 0; ``Fleet.top_up(address, yuan)`` is
    the card/token recharge (it does not close the relay unless ``close=True``).

Clock
    ``SimClock``: ``now()`` is simulated time in whole seconds, running ``speed`` times as
    fast as real time from ``start`` (default: now); it drives energy. ``wall()`` runs at real
    speed from the same start; it is the meters' real-time clock (RTC) and what a remote
    control's validity deadline is checked against, so acceleration does not make every
    command expire. ``speed=0`` freezes both; ``advance(seconds)`` moves both (tests).
    A few meters' RTCs are off by 2-15 minutes (``clock_drift_share``), shown in DI
    04000101/04000102 and used for the deadline check; a 0x08 broadcast time sets them.

Event flags (our choice of where to expose them)
    In status word 7 (DI 04000507, "combined-phase fault status", 2 bytes): bit 5 power
    loss (掉电), bit 9 cover open (开表盖); and as event counts in DI 03110000 (power-loss
    count) and 03300D00 (cover-open count), 3 BCD bytes each. Flags are latched until
    ``Fleet.set_events`` clears them. Status word 3 (DI 04000503) carries the relay (bit 4),
    last remote relay command (bit 6, set by trip, cleared by close), alarm (bit 7),
    keep-power (bit 12) and, for local meters, bits 8-9 = 10 (money-type prepaid meter).

Failures
    ``failure_rate`` (default 0.20, the article's ~80% success) makes reads go unanswered.
    Each meter counts the frames addressed to it; the roll for a frame is a hash of (seed,
    meter address, that count), so it is deterministic for a given sequence of requests.
    ``failure_mode="session"`` (default): the roll is made on the first read of a *session*
    (consecutive frames for the same meter on one connection) and the whole session follows
    it, so a meter is silent for a whole collection attempt, as when its GPRS/carrier channel
    is down, rather than losing one register in five; a later attempt (after frames for
    another meter, or on a new connection) is a new roll. ``failure_mode="request"``: every
    read frame rolls on its own. Remote-control frames roll separately with
    ``control_failure_rate`` (default 0: a lost command never reached the meter, no reply).
    ``Fleet.set_offline(address)`` silences one meter completely.

Determinism
    Addresses come from the seed (``first_address``, default ``SSS0NNNNNNNN`` with SSS =
    seed mod 1000). A generated meter's category and cost-control mode, its day-to-day
    variation, half-hourly noise, PV clouds, failure rolls and latency jitter come from a
    64-bit hash of (seed, address, and the day / slot / frame count); its character (scale,
    power factor, peak factor, PV, clock drift, events, initial registers, balance) from
    ``random.Random(f"{seed}:{address}")``, drawn in a fixed order. So a meter does not
    change with the fleet size, and with a frozen clock (``speed=0``) the same seed and the
    same sequence of requests give byte-identical answers. Registers are exact sums, so they
    do not depend on how often a meter is read either.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal

from core.money import quantize_yuan, to_decimal
from metering.headend import dlt645

from . import profiles
from .profiles import SLOT_SECONDS, UTC_OFFSET

M64 = (1 << 64) - 1
TWO64 = float(1 << 64)
KWS_PER_KWH = 3600
REGISTER_WRAP_HUNDREDTHS = 10**8  # 4 BCD bytes XXXXXX.XX
# Combined reactive is a signed register (top bit of the last byte = sign), so it can only
# count to 799999.99 before it wraps.
REACTIVE_WRAP_HUNDREDTHS = 8 * 10**7
CATCH_UP_LIMIT = 3 * 86400  # at most this much consumption between a stored reading and start
MAX_DEMAND_KW = Decimal("99.9999")  # 3 BCD bytes XX.XXXX
ZERO = Decimal(0)
CENT = Decimal("0.01")

# Indexes into SimMeter.acc (kilowatt-seconds); 1..4 are the TOU rates.
TOTAL, SHARP, PEAK, FLAT, VALLEY, REVERSE, REACTIVE = range(7)
WRAPS = (REGISTER_WRAP_HUNDREDTHS,) * 6 + (REACTIVE_WRAP_HUNDREDTHS,)
REGISTER_NAMES = (
    "forward_total",
    "forward_sharp",
    "forward_peak",
    "forward_flat",
    "forward_valley",
    "reverse_total",
    "reactive_total",
)

# Status word 7 (DI 04000507) bits used for events.
STATUS7_POWER_LOSS = 1 << 5
STATUS7_COVER_OPEN = 1 << 9
STATUS3_PREPAID_MONEY = 0b10 << 8  # meter type: money-type prepaid (local cost control)

FAILURE_MODES = ("session", "request")
MULTIPLIERS = (1, 5, 10, 20, 30, 40, 50, 60, 80, 100, 150, 200, 300, 400, 600, 800, 1000, 1500, 2000)
REMOTE, LOCAL, NONE = "remote", "local", "none"
_SALT_DAY = 0x9E3779B97F4A7C15
_SALT_SLOT = 0xC2B2AE3D27D4EB4F
_SALT_READ = 0x165667B19E3779F9
_SALT_CONTROL = 0xD6E8FEB86659FD93
_SALT_LATENCY = 0x27D4EB2F165667C5
_SALT_KIND = 0x85EBCA77C2B2AE63
_SALT_LOCAL = 0xFF51AFD7ED558CCD


def mix64(x: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _dec(x: float, places: int = 4) -> Decimal:
    """A float shape value into Decimal, the one way floats reach registers."""
    return Decimal(str(round(x, places)))


def epoch_to_local(ts: int) -> datetime:
    """Naive Asia/Shanghai wall time of a POSIX timestamp (fixed UTC+8, see profiles)."""
    return datetime(1970, 1, 1) + timedelta(seconds=ts + UTC_OFFSET)


def local_to_epoch(naive: datetime) -> int:
    return int((naive - datetime(1970, 1, 1)).total_seconds()) - UTC_OFFSET


class SimClock:
    """Simulated time in whole POSIX seconds; see the module docstring."""

    def __init__(self, start: datetime | None = None, speed: float = 1.0):
        if speed < 0:
            raise ValueError("speed must not be negative")
        if start is None:
            self._start = int(time.time())
        elif start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        else:
            self._start = int(start.timestamp())
        self.speed = float(speed)
        self._mono0 = time.monotonic()
        self._offset = 0

    @property
    def frozen(self) -> bool:
        return self.speed == 0

    def now(self) -> int:
        if self.speed == 0:
            return self._start + self._offset
        return self._start + self._offset + int((time.monotonic() - self._mono0) * self.speed)

    def wall(self) -> int:
        if self.speed == 0:
            return self._start + self._offset
        return self._start + self._offset + int(time.monotonic() - self._mono0)

    def advance(self, seconds: float) -> None:
        self._offset += int(seconds)

    def now_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)


@dataclass
class MeterSpec:
    """What is known about a meter before simulation (from parameters or the database);
    everything left None is drawn from the meter's seeded generator."""

    address: str
    category: str = profiles.RESIDENTIAL
    cost_control_mode: str = REMOTE
    gateway: str = "0"  # meters with the same gateway key share a listening port
    port: int | None = None  # the port that gateway wants (from Terminal.endpoint)
    relay_open: bool = False
    keep_power: bool = False
    alarm: bool = False
    capacity_kva: Decimal | None = None
    multiplier: int | None = None  # CT × PT ratio; the meter measures primary / multiplier
    daily_kwh: Decimal | None = None  # observed register increase a day: sets the scale
    registers: dict[str, Decimal] = field(default_factory=dict)  # REGISTER_NAMES → kWh
    registers_at: datetime | None = None  # when they were frozen: energy accrues from then
    remaining_balance: Decimal | None = None
    unit_price: Decimal | None = None


class SimMeter:
    __slots__ = (
        "index",
        "address",
        "wire",
        "head",
        "head_sum",
        "reply_head",
        "gateway",
        "category",
        "cost_control_mode",
        "local",
        "key",
        "avg_kw",
        "tanphi",
        "peak_factor",
        "pv_kw",
        "multiplier",
        "acc",
        "balance_u",
        "price",
        "md_kw",
        "md_at",
        "md_month",
        "t",
        "slot",
        "slot_kw",
        "slot_kvar",
        "slot_pv",
        "slot_md",
        "slot_tou",
        "var_day",
        "day_var",
        "relay_open",
        "relay_command_open",
        "self_tripped",
        "tripped_at",
        "alarm",
        "keep_power",
        "drift",
        "cover_open",
        "power_loss",
        "cover_open_count",
        "power_loss_count",
        "offline",
        "requests",
        "control_counts",
        "control_log",
    )

    def __init__(self, index: int, address: str, gateway: int, category: str, cost_control_mode: str):
        self.index = index
        self.address = address
        self.wire = dlt645.address_to_wire(address)
        self.head = b"\x68" + self.wire + b"\x68"  # every reply starts with these 8 bytes
        self.head_sum = sum(self.head)
        self.reply_head = dlt645.PREAMBLE + self.head
        self.gateway = gateway
        self.category = category
        self.cost_control_mode = cost_control_mode
        self.local = cost_control_mode == LOCAL
        self.acc = [ZERO] * 7
        self.balance_u = ZERO  # yuan × 3600 (so that kW·s × yuan/kWh subtracts exactly)
        self.price = ZERO
        self.md_kw = ZERO
        self.md_at = 0
        self.md_month = -1
        self.t = 0
        self.slot = -1
        self.var_day = -1
        self.day_var = 1.0
        self.relay_open = False
        self.relay_command_open = False
        self.self_tripped = False
        self.tripped_at = None
        self.alarm = False
        self.keep_power = False
        self.drift = 0
        self.cover_open = False
        self.power_loss = False
        self.cover_open_count = 0
        self.power_loss_count = 0
        self.offline = False
        self.requests = 0
        self.control_counts = Counter()
        self.control_log = deque(maxlen=50)

    def __repr__(self):
        return f"<SimMeter {self.address} {self.category} {self.cost_control_mode}>"


class Gateway:
    """One listening port: a concentrator/gateway answering for the meters behind it."""

    def __init__(self, key: str, port: int | None):
        self.key = key
        self.port = port
        self.meters: dict[bytes, SimMeter] = {}  # wire address → meter

    def __repr__(self):
        return f"<Gateway {self.key} port={self.port} meters={len(self.meters)}>"


class Fleet:
    """The simulated meters and their behaviour settings. Thread-safe: every public method
    and the server's frame handling hold ``self.lock``."""

    def __init__(
        self,
        *,
        seed: int = 1,
        clock: SimClock | None = None,
        failure_rate: float = 0.2,
        failure_mode: str = "session",
        control_failure_rate: float = 0.0,
        latency_ms: float = 0.0,
    ):
        if failure_mode not in FAILURE_MODES:
            raise ValueError(f"failure_mode must be one of {FAILURE_MODES}")
        for name, rate in (("failure_rate", failure_rate), ("control_failure_rate", control_failure_rate)):
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if latency_ms < 0:
            raise ValueError("latency_ms must not be negative")
        self.seed = seed
        self.clock = clock or SimClock()
        self.failure_rate = failure_rate
        self.failure_mode = failure_mode
        self.control_failure_rate = control_failure_rate
        self.latency_ms = latency_ms
        self.lock = threading.RLock()
        self.meters: list[SimMeter] = []
        self.by_address: dict[str, SimMeter] = {}
        self.gateways: list[Gateway] = []
        self._gateway_index: dict[str, int] = {}
        self._seed_key = mix64(seed & M64)
        self._read_threshold = int(failure_rate * TWO64)
        self._control_threshold = int(control_failure_rate * TWO64)

    # --- building ---------------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        count: int,
        seed: int = 1,
        *,
        local_share: float = 0.1,
        failure_rate: float = 0.2,
        failure_mode: str = "session",
        control_failure_rate: float = 0.0,
        latency_ms: float = 0.0,
        gateways: int = 1,
        first_address: str | None = None,
        category_weights: dict[str, float] | None = None,
        start: datetime | None = None,
        speed: float = 1.0,
        clock: SimClock | None = None,
        clock_drift_share: float = 0.01,
        event_share: float = 0.02,
        pv_share: float = 0.03,
        near_rollover_share: float = 0.001,
        low_balance_share: float = 0.05,
    ) -> Fleet:
        """``count`` meters with consecutive addresses from ``first_address``, split into
        ``gateways`` contiguous blocks (one listening port each)."""
        if count < 1:
            raise ValueError("count must be at least 1")
        if gateways < 1 or gateways > count:
            raise ValueError("gateways must be between 1 and count")
        base = int(first_address) if first_address else (seed % 1000) * 10**9 + 1
        if base + count - 1 >= 10**12:
            raise ValueError("addresses would exceed 12 digits")
        weights = category_weights or profiles.DEFAULT_CATEGORY_WEIGHTS
        categories, cat_weights = list(weights), list(weights.values())
        fleet = cls(
            seed=seed,
            clock=clock or SimClock(start, speed),
            failure_rate=failure_rate,
            failure_mode=failure_mode,
            control_failure_rate=control_failure_rate,
            latency_ms=latency_ms,
        )
        options = {
            "clock_drift_share": clock_drift_share,
            "event_share": event_share,
            "pv_share": pv_share,
            "near_rollover_share": near_rollover_share,
            "low_balance_share": low_balance_share,
        }
        cumulative = list(itertools.accumulate(cat_weights))
        for i in range(count):
            address = f"{base + i:012d}"
            key = mix64(fleet._seed_key ^ int(address))
            pick = mix64(key ^ _SALT_KIND) / TWO64 * cumulative[-1]
            category = categories[min(bisect.bisect_right(cumulative, pick), len(categories) - 1)]
            if mix64(key ^ _SALT_LOCAL) / TWO64 < local_share:
                mode = LOCAL
            else:
                mode = NONE if category == profiles.LARGE_INDUSTRY else REMOTE
            spec = MeterSpec(address=address, category=category, cost_control_mode=mode)
            spec.gateway = str(i * gateways // count)
            fleet._add(spec, **options)
        return fleet

    @classmethod
    def from_specs(
        cls,
        specs: Iterable[MeterSpec],
        *,
        seed: int = 1,
        failure_rate: float = 0.2,
        failure_mode: str = "session",
        control_failure_rate: float = 0.0,
        latency_ms: float = 0.0,
        start: datetime | None = None,
        speed: float = 1.0,
        clock: SimClock | None = None,
        clock_drift_share: float = 0.01,
        event_share: float = 0.02,
        pv_share: float = 0.03,
        near_rollover_share: float = 0.0,
        low_balance_share: float = 0.05,
    ) -> Fleet:
        """A fleet of known meters (e.g. the installed meters in the database)."""
        fleet = cls(
            seed=seed,
            clock=clock or SimClock(start, speed),
            failure_rate=failure_rate,
            failure_mode=failure_mode,
            control_failure_rate=control_failure_rate,
            latency_ms=latency_ms,
        )
        for spec in specs:
            fleet._add(
                spec,
                clock_drift_share=clock_drift_share,
                event_share=event_share,
                pv_share=pv_share,
                near_rollover_share=near_rollover_share,
                low_balance_share=low_balance_share,
            )
        if not fleet.meters:
            raise ValueError("a fleet needs at least one meter")
        return fleet

    def _add(
        self,
        spec: MeterSpec,
        *,
        clock_drift_share: float,
        event_share: float,
        pv_share: float,
        near_rollover_share: float,
        low_balance_share: float,
    ) -> SimMeter:
        if spec.address in self.by_address:
            raise ValueError(f"duplicate meter address {spec.address}")
        if spec.category not in profiles.CATEGORIES:
            raise ValueError(f"unknown customer category {spec.category!r}")
        if spec.gateway not in self._gateway_index:
            self._gateway_index[spec.gateway] = len(self.gateways)
            self.gateways.append(Gateway(spec.gateway, spec.port))
        gw = self._gateway_index[spec.gateway]
        m = SimMeter(len(self.meters), spec.address, gw, spec.category, spec.cost_control_mode)
        m.key = mix64(self._seed_key ^ int(spec.address))
        # Every draw happens whatever the options, in a fixed order, so that one meter's
        # character does not shift when a share or a spec field changes.
        rng = random.Random(f"{self.seed}:{spec.address}")
        category = spec.category
        low, high = profiles.CAPACITY_KVA[category]
        capacity_draw = rng.uniform(low, high)
        scale = min(2.5, max(0.4, rng.lognormvariate(0, 0.35)))
        pf = rng.uniform(0.85, 0.95)
        m.peak_factor = rng.uniform(1.1, 1.35)
        pv_draw, pv_size = rng.random(), rng.uniform(0.8, 2.5)
        drift_draw, drift_sign, drift_seconds = rng.random(), rng.choice((-1, 1)), rng.randint(120, 900)
        event_draw, event_kind, event_count = rng.random(), rng.random(), rng.randint(1, 3)
        background_power_losses = rng.randint(0, 4)
        years, rollover_draw, rollover_days = rng.uniform(0.3, 8), rng.random(), rng.uniform(0.5, 3)
        shares = (rng.uniform(0.08, 0.12), rng.uniform(0.28, 0.34), rng.uniform(0.28, 0.34))
        balance_draw, balance_low, balance_normal = rng.random(), rng.uniform(0.5, 5), rng.uniform(30, 400)
        md_share = rng.uniform(0.7, 1.0)

        capacity = float(spec.capacity_kva) if spec.capacity_kva else capacity_draw
        peak_shape = profiles.peak_shape(category)
        if spec.daily_kwh is not None and spec.daily_kwh > 0:
            m.multiplier = spec.multiplier or 1
            avg_kw = float(spec.daily_kwh) / 24  # already on the meter side
        else:
            primary_kw = capacity * profiles.UTILISATION[category] * scale
            if spec.multiplier:
                m.multiplier = spec.multiplier
            elif category == profiles.RESIDENTIAL:
                m.multiplier = 1
            else:  # CT (and PT) sized so that the meter sees at most ~60 kW
                peak = primary_kw * peak_shape * m.peak_factor
                m.multiplier = next((k for k in MULTIPLIERS if peak / k < 60), MULTIPLIERS[-1])
            avg_kw = primary_kw / m.multiplier
        m.avg_kw = max(avg_kw, 0.001)
        m.tanphi = math.sqrt(1 / (pf * pf) - 1)
        m.pv_kw = (
            m.avg_kw * pv_size if pv_draw < pv_share and category in ("residential", "commercial") else 0.0
        )
        m.drift = drift_sign * drift_seconds if drift_draw < clock_drift_share else 0
        m.power_loss_count = background_power_losses
        if event_draw < event_share:
            if event_kind < 1 / 3:
                m.cover_open, m.cover_open_count = True, event_count
            else:
                m.power_loss, m.power_loss_count = True, m.power_loss_count + event_count
        m.relay_open = m.relay_command_open = bool(spec.relay_open)
        m.keep_power = bool(spec.keep_power)
        m.alarm = bool(spec.alarm)

        # Initial registers: the spec's (e.g. the last stored reading) or an age's worth.
        regs = {name: to_decimal(v) for name, v in spec.registers.items() if v is not None}
        if "forward_total" not in regs:
            total = m.avg_kw * 24 * 365 * years
            if rollover_draw < near_rollover_share:
                total = 1_000_000 - m.avg_kw * 24 * rollover_days
            regs["forward_total"] = _dec(total % 1_000_000, 2)
        total = regs["forward_total"]
        if not all(name in regs for name in REGISTER_NAMES[1:5]):
            # Fill the missing rate registers by typical shares (valley takes the rest).
            split = [(total * _dec(s)).quantize(CENT, rounding=ROUND_DOWN) for s in shares]
            split.append(total - sum(split))
            for name, value in zip(REGISTER_NAMES[1:5], split, strict=True):
                regs.setdefault(name, value)
        if "reactive_total" not in regs:
            regs["reactive_total"] = (total * _dec(m.tanphi)).quantize(CENT, rounding=ROUND_DOWN) % 800_000
        if "reverse_total" not in regs:
            regs["reverse_total"] = (
                (total * _dec(0.25)).quantize(CENT, rounding=ROUND_DOWN) if m.pv_kw else ZERO
            )
        for i, name in enumerate(REGISTER_NAMES):
            m.acc[i] = regs[name] * KWS_PER_KWH

        if m.local:
            price = spec.unit_price if spec.unit_price is not None else profiles.LOCAL_UNIT_PRICE[category]
            m.price = to_decimal(price)
            if spec.remaining_balance is not None:
                balance = to_decimal(spec.remaining_balance)
            else:
                balance = _dec(balance_low if balance_draw < low_balance_share else balance_normal, 2)
            m.balance_u = balance * KWS_PER_KWH

        # Start at the clock's time (or, for registers frozen a little earlier, from then on:
        # the consumption since the last stored reading), with a plausible maximum demand
        # earlier this month.
        now = self.clock.now()
        m.t = now
        if spec.registers_at is not None:
            m.t = min(now, max(int(spec.registers_at.timestamp()), now - CATCH_UP_LIMIT))
        month_start = epoch_to_local(now).replace(day=1, hour=19, minute=0, second=0)
        md_at = min(local_to_epoch(month_start), now)
        m.md_kw = min(MAX_DEMAND_KW, _dec(m.avg_kw * peak_shape * m.peak_factor * md_share))
        m.md_at = md_at
        self._load_slot(m, (m.t + UTC_OFFSET) // SLOT_SECONDS)

        self.meters.append(m)
        self.by_address[m.address] = m
        self.gateways[gw].meters[m.wire] = m
        return m

    # --- simulation (callers hold the lock) -----------------------------------------

    def _load_slot(self, m: SimMeter, slot: int) -> None:
        day, slot_of_day = divmod(slot, profiles.SLOTS_PER_DAY)
        year, month, _weekday, _season = profiles.day_info(day)
        month_key = year * 12 + month
        if month_key != m.md_month:
            if m.md_month != -1:  # the monthly freeze resets maximum demand
                m.md_kw = ZERO
                m.md_at = slot * SLOT_SECONDS - UTC_OFFSET
            m.md_month = month_key
        if m.var_day != day:
            m.var_day = day
            m.day_var = 0.8 + 0.4 * (mix64(m.key ^ (day * _SALT_DAY & M64)) / TWO64)
        noise = 0.94 + 0.12 * (mix64(m.key ^ (slot * _SALT_SLOT & M64)) / TWO64)
        kw = m.avg_kw * profiles.load_factor(m.category, day, slot_of_day) * m.day_var * noise
        m.slot_kw = _dec(kw)
        m.slot_kvar = _dec(kw * m.tanphi)
        m.slot_md = min(MAX_DEMAND_KW, _dec(kw * m.peak_factor))
        if m.pv_kw:
            clouds = 0.3 + 0.7 * (mix64(m.key ^ (day * _SALT_SLOT & M64)) / TWO64)
            m.slot_pv = _dec(m.pv_kw * profiles.solar_factor(day, slot_of_day) * clouds)
        else:
            m.slot_pv = ZERO
        m.slot_tou = profiles.tou_period(month, slot_of_day)
        m.slot = slot

    def _advance(self, m: SimMeter, now: int) -> None:
        """Accrue energy from the meter's last update to ``now`` (simulated seconds)."""
        t = m.t
        if now <= t:
            return
        if m.relay_open:
            last_slot = (now - 1 + UTC_OFFSET) // SLOT_SECONDS
            if last_slot != m.slot:
                self._load_slot(m, last_slot)  # keeps the demand month current
            m.t = now
            return
        acc = m.acc
        while t < now:
            slot = (t + UTC_OFFSET) // SLOT_SECONDS
            if slot != m.slot:
                self._load_slot(m, slot)
            end = (slot + 1) * SLOT_SECONDS - UTC_OFFSET
            if end > now:
                end = now
            secs = end - t
            kw = m.slot_kw
            trip = False
            if m.local and not m.keep_power and kw * secs * m.price >= m.balance_u:
                # The balance runs out in this segment: stop in the second it reaches zero.
                per_second = kw * m.price
                if m.balance_u <= 0 or per_second <= 0:
                    secs = 0
                else:
                    secs = min(secs, math.ceil(m.balance_u / per_second))
                trip = True
            if secs:
                energy = kw * secs
                acc[TOTAL] += energy
                acc[m.slot_tou] += energy
                acc[REACTIVE] += m.slot_kvar * secs
                if m.pv_kw:
                    acc[REVERSE] += m.slot_pv * secs
                if m.local:
                    m.balance_u -= energy * m.price
                if m.slot_md > m.md_kw:
                    m.md_kw = m.slot_md
                    m.md_at = t
            if trip:
                m.relay_open = True
                m.self_tripped = True
                m.tripped_at = t + secs
                m.t = t + secs
                self._advance(m, now)  # the rest passes with the relay open
                return
            t = end
        m.t = now

    def _sync(self, m: SimMeter) -> None:
        self._advance(m, self.clock.now())

    def read_fails(self, m: SimMeter, count: int) -> bool:
        """Whether read number ``count`` of this meter (or the session it opens) goes
        unanswered."""
        return self._read_threshold > 0 and mix64(m.key ^ (count * _SALT_READ & M64)) < self._read_threshold

    def control_fails(self, m: SimMeter, count: int) -> bool:
        return (
            self._control_threshold > 0
            and mix64(m.key ^ (count * _SALT_CONTROL & M64)) < self._control_threshold
        )

    def latency_seconds(self, m: SimMeter, count: int) -> float:
        """Mean ``latency_ms`` with ±50% jitter, deterministic per (meter, frame count)."""
        if not self.latency_ms:
            return 0.0
        jitter = mix64(m.key ^ (count * _SALT_LATENCY & M64)) / TWO64
        return self.latency_ms * (0.5 + jitter) / 1000

    def rtc(self, m: SimMeter) -> int:
        """The meter's own clock (POSIX seconds): wall time plus its drift."""
        return self.clock.wall() + m.drift

    def status_word_3(self, m: SimMeter) -> int:
        word = 0
        if m.relay_open:
            word |= dlt645.STATUS3_RELAY_OPEN
        if m.relay_command_open:
            word |= dlt645.STATUS3_RELAY_COMMAND_OPEN
        if m.alarm:
            word |= dlt645.STATUS3_PRETRIP_ALARM
        if m.keep_power:
            word |= dlt645.STATUS3_KEEP_POWER
        if m.local:
            word |= STATUS3_PREPAID_MONEY
        return word

    @staticmethod
    def status_word_7(m: SimMeter) -> int:
        word = 0
        if m.power_loss:
            word |= STATUS7_POWER_LOSS
        if m.cover_open:
            word |= STATUS7_COVER_OPEN
        return word

    def execute_control(self, m: SimMeter, action: str | None, valid_until: datetime | None) -> int | None:
        """Carry out a remote-control command that reached the meter. Returns None on
        success or the error byte of the refusal (0x01 other error / expired deadline or a
        malformed command, 0x04 refused: keep-power set, or no credit to close on)."""
        self._sync(m)
        m.control_counts[action or "invalid"] += 1
        error = self._control_outcome(m, action, valid_until)
        m.control_log.append(
            (self.clock.wall(), action or "invalid", "ok" if error is None else f"{error:02X}")
        )
        return error

    def _control_outcome(self, m: SimMeter, action: str | None, valid_until: datetime | None) -> int | None:
        if action is None or valid_until is None:
            return 0x01
        if local_to_epoch(valid_until) < self.rtc(m):
            return 0x01  # the command's validity deadline has passed (by the meter's clock)
        if action == "trip":
            if m.keep_power:
                return 0x04
            m.relay_open = m.relay_command_open = True
        elif action in ("close", "close_allowed"):
            # close_allowed (合闸允许) would arm the meter for the customer to press its
            # button; the simulator closes at once for both.
            if m.local and m.balance_u <= 0 and not m.keep_power:
                return 0x04
            m.relay_open = m.relay_command_open = False
            m.self_tripped = False
        elif action == "alarm_on":
            m.alarm = True
        elif action == "alarm_off":
            m.alarm = False
        elif action == "keep_power_on":
            m.keep_power = True
        elif action == "keep_power_off":
            m.keep_power = False
            if m.local and m.balance_u <= 0 and not m.relay_open:
                m.relay_open = m.self_tripped = True
                m.tripped_at = m.t
        else:
            return 0x01
        return None

    def set_clock_from_broadcast(self, meters: Iterable[SimMeter], at: datetime) -> None:
        offset = local_to_epoch(at) - self.clock.wall()
        for m in meters:
            m.drift = offset

    # --- public API (takes the lock) ---------------------------------------------------

    def meter(self, address: str) -> SimMeter:
        try:
            return self.by_address[address]
        except KeyError:
            raise KeyError(f"no simulated meter {address}") from None

    @property
    def addresses(self) -> list[str]:
        return [m.address for m in self.meters]

    def address_range(self) -> tuple[str, str]:
        return min(self.by_address), max(self.by_address)

    def local_addresses(self) -> list[str]:
        return [m.address for m in self.meters if m.local]

    def registers(self, address: str) -> dict:
        """The meter's registers now, as the meter would report them (Decimal)."""
        with self.lock:
            m = self.meter(address)
            self._sync(m)
            values = {name: self._register(m, i) for i, name in enumerate(REGISTER_NAMES)}
            values.update(
                max_demand_kw=m.md_kw,
                max_demand_at=epoch_to_local(m.md_at).replace(second=0),
                relay_open=m.relay_open,
                keep_power=m.keep_power,
                alarm=m.alarm,
                self_tripped=m.self_tripped,
                status_word_3=self.status_word_3(m),
                status_word_7=self.status_word_7(m),
                meter_time=epoch_to_local(self.rtc(m)),
                remaining_balance=self._remaining(m) if m.local else None,
                overdraft=self._overdraft(m) if m.local else None,
                unit_price=m.price if m.local else None,
            )
            return values

    @staticmethod
    def _register(m: SimMeter, index: int) -> Decimal:
        hundredths = int(m.acc[index] * 100 // KWS_PER_KWH) % WRAPS[index]
        return Decimal(hundredths).scaleb(-2)

    @staticmethod
    def _remaining(m: SimMeter) -> Decimal:
        return quantize_yuan(max(m.balance_u, ZERO) / KWS_PER_KWH)

    @staticmethod
    def _overdraft(m: SimMeter) -> Decimal:
        return quantize_yuan(max(-m.balance_u, ZERO) / KWS_PER_KWH)

    def top_up(self, address: str, yuan, *, close: bool = False) -> Decimal:
        """Credit a local cost-control meter (IC card / token); returns the new remaining
        balance. ``close=True`` also closes a self-tripped relay once the balance is > 0."""
        with self.lock:
            m = self.meter(address)
            if not m.local:
                raise ValueError(f"meter {address} is not a local cost-control meter")
            amount = to_decimal(yuan)
            if amount <= 0:
                raise ValueError("a top-up must be positive")
            self._sync(m)
            m.balance_u += amount * KWS_PER_KWH
            if close and m.balance_u > 0 and m.self_tripped:
                m.relay_open = m.self_tripped = False
            return self._remaining(m)

    def set_offline(self, address: str, offline: bool = True) -> None:
        """An offline meter never answers (e.g. to test the head-end's timeouts)."""
        with self.lock:
            self.meter(address).offline = offline

    def set_events(self, address: str, *, cover_open: bool | None = None, power_loss: bool | None = None):
        with self.lock:
            m = self.meter(address)
            if cover_open is not None:
                m.cover_open_count += int(cover_open and not m.cover_open)
                m.cover_open = cover_open
            if power_loss is not None:
                m.power_loss_count += int(power_loss and not m.power_loss)
                m.power_loss = power_loss

    def control_count(self, address: str, action: str | None = None) -> int:
        """How many remote-control frames reached this meter (of one action, or all)."""
        with self.lock:
            counts = self.meter(address).control_counts
            return counts[action] if action else sum(counts.values())

    def advance(self, seconds: float) -> None:
        """Move simulated (and wall) time forward; for tests with a frozen clock."""
        with self.lock:
            self.clock.advance(seconds)

    def summary(self) -> dict:
        with self.lock:
            by_category = Counter(m.category for m in self.meters)
            by_mode = Counter(m.cost_control_mode for m in self.meters)
            return {
                "meters": len(self.meters),
                "gateways": len(self.gateways),
                "categories": dict(by_category),
                "cost_control": dict(by_mode),
                "drifting_clocks": sum(1 for m in self.meters if m.drift),
                "event_flags": sum(1 for m in self.meters if m.cover_open or m.power_loss),
                "relay_open": sum(1 for m in self.meters if m.relay_open),
            }
