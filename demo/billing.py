"""The demo utility's tariffs, cost-control policies, and prepaid balances with their history.

Tariffs follow the shapes of a provincial price schedule (figures are illustrative, of the
right size): residential annual blocks 2160 / 4200 kWh (+0.05 / +0.30 yuan), optionally with
peak/valley prices; commercial four-band time of use with half-hour periods and a summer
sharp period; large-industry two-part (capacity charge + time-of-use energy, power factor
standard 0.90); agriculture flat. Funds and surcharges are itemised inside the prices.

The history ledger is built the way real-time rating would have left it: for each prepaid
account on a remote cost-control meter, an opening top-up, one energy charge per day of
history (rated by the engine from the stored readings), and top-ups whenever the balance ran
low; then the rating cursors are started at the last reading, so the running product rates
from there. A few accounts end the history warned and nearly empty, so the first live
collection trips them (by day) and a payment closes them again.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from billing.models import (
    AccountBilling,
    AccountTariff,
    CostControlPolicy,
    CostControlState,
    EntryKind,
    EntrySource,
    LedgerEntry,
    Tariff,
    TariffSurcharge,
    TariffTier,
    TariffVersion,
    TierAccumulator,
    TouPeriod,
)
from billing.rating import engine
from billing.services.rating import consumption_by_band, rating_cursors_start, tier_period_start
from billing.services.tariffs import tariff_specs
from core.money import quantize_energy, quantize_yuan
from customers.models import Account, CustomerCategory, SettlementMode
from metering.models import CostControlMode, DailyReading, Meter, MeterStatus
from payments.models import Channel, Method, Payment

D = Decimal
ALL_YEAR = "1,2,3,4,5,6,7,8,9,10,11,12"
FUNDS_RESIDENTIAL = [
    ("NRL", "农网还贷资金", "0.020000"),
    ("RSV", "大中型水库移民后期扶持资金", "0.006200"),
    ("HYD", "国家重大水利工程建设基金", "0.001875"),
]
FUNDS_BUSINESS = [
    *FUNDS_RESIDENTIAL,
    ("REN", "可再生能源电价附加", "0.019000"),
]
# (start, end, band): a commercial/industrial day with half-hour boundaries.
BUSINESS_DAY = [
    ("00:00", "07:00", "valley"),
    ("07:00", "08:30", "flat"),
    ("08:30", "11:30", "peak"),
    ("11:30", "17:00", "flat"),
    ("17:00", "19:00", "peak"),
    ("19:00", "21:00", "peak"),
    ("21:00", "23:00", "flat"),
    ("23:00", "00:00", "valley"),
]
SUMMER = "7,8"
NOT_SUMMER = "1,2,3,4,5,6,9,10,11,12"


def _t(text: str) -> time:
    h, m = text.split(":")
    return time(int(h), int(m))


def _version(tariff, **fields) -> TariffVersion:
    return TariffVersion.objects.create(tariff=tariff, effective_from=date(2024, 1, 1), **fields)


def _funds(version, funds) -> None:
    TariffSurcharge.objects.bulk_create(
        [TariffSurcharge(version=version, code=c, name=n, price_per_kwh=D(p)) for c, n, p in funds]
    )


def _tiers(version) -> None:
    TariffTier.objects.bulk_create(
        [
            TariffTier(version=version, number=1, upper_kwh=D("2160"), price_adder=D("0")),
            TariffTier(version=version, number=2, upper_kwh=D("4200"), price_adder=D("0.05")),
            TariffTier(version=version, number=3, upper_kwh=None, price_adder=D("0.30")),
        ]
    )


def _business_periods(version) -> None:
    periods = []
    for months in (SUMMER, NOT_SUMMER):
        for start, end, band in BUSINESS_DAY:
            if months == SUMMER and start == "19:00":
                band = "sharp"  # summer evening sharp period
            periods.append(TouPeriod(version=version, months=months, start=_t(start), end=_t(end), band=band))
    TouPeriod.objects.bulk_create(periods)


def build_tariffs() -> dict[str, Tariff]:
    tariffs = {}
    t = Tariff.objects.create(
        code="RES-TIER",
        name="居民生活用电（年阶梯）",
        category=CustomerCategory.RESIDENTIAL,
        description="一户一表居民，年阶梯 2160 / 4200 千瓦时，二档加 0.05 元，三档加 0.30 元。",
    )
    v = _version(t, price_flat=D("0.538000"), tier_basis="annual", note="2024 年价目表")
    _tiers(v)
    _funds(v, FUNDS_RESIDENTIAL)
    # A price change in the middle of the demo year: the engine splits periods across it.
    v.effective_to = date(2026, 7, 1)
    v.save()
    v2 = TariffVersion.objects.create(
        tariff=t,
        effective_from=date(2026, 7, 1),
        price_flat=D("0.545000"),
        tier_basis="annual",
        note="2026 年调价",
    )
    _tiers(v2)
    _funds(v2, FUNDS_RESIDENTIAL)
    tariffs[t.code] = t

    t = Tariff.objects.create(
        code="RES-TOU",
        name="居民生活用电（年阶梯 + 峰谷）",
        category=CustomerCategory.RESIDENTIAL,
        description="峰 08:00-22:00，谷 22:00-08:00；阶梯加价叠加在峰谷价上。",
    )
    v = _version(
        t, price_flat=D("0.538000"), price_peak=D("0.568000"), price_valley=D("0.288000"), tier_basis="annual"
    )
    _tiers(v)
    _funds(v, FUNDS_RESIDENTIAL)
    TouPeriod.objects.bulk_create(
        [
            TouPeriod(version=v, months=ALL_YEAR, start=time(8), end=time(22), band="peak"),
            TouPeriod(version=v, months=ALL_YEAR, start=time(22), end=time(8), band="valley"),
        ]
    )
    tariffs[t.code] = t

    t = Tariff.objects.create(
        code="COM-TOU",
        name="一般工商业分时电价",
        category=CustomerCategory.COMMERCIAL,
        description="尖峰仅 7、8 月 19:00-21:00；峰 08:30-11:30、17:00-21:00。",
    )
    v = _version(
        t,
        price_flat=D("0.645000"),
        price_sharp=D("1.180000"),
        price_peak=D("0.982000"),
        price_valley=D("0.318000"),
    )
    _funds(v, FUNDS_BUSINESS)
    _business_periods(v)
    tariffs[t.code] = t

    t = Tariff.objects.create(
        code="LI-TWO-PART",
        name="大工业用电（两部制）",
        category=CustomerCategory.LARGE_INDUSTRY,
        description="基本电费按合同容量 25 元/千伏安·月；功率因数考核标准 0.90。",
    )
    v = _version(
        t,
        price_flat=D("0.612000"),
        price_sharp=D("1.080000"),
        price_peak=D("0.905000"),
        price_valley=D("0.299000"),
        basic_basis="capacity",
        basic_price=D("25.000000"),
        pf_standard="0.90",
    )
    _funds(v, FUNDS_BUSINESS)
    _business_periods(v)
    tariffs[t.code] = t

    t = Tariff.objects.create(
        code="AGR-FLAT",
        name="农业生产用电",
        category=CustomerCategory.AGRICULTURE,
        description="农业生产、排灌用电，单一电价。",
    )
    v = _version(t, price_flat=D("0.483000"))
    _funds(v, FUNDS_RESIDENTIAL[:1])
    tariffs[t.code] = t
    return tariffs


def build_policies() -> None:
    common = {"night_start": time(20), "night_end": time(8), "no_trip_on_holidays": True}
    CostControlPolicy.objects.bulk_create(
        [
            CostControlPolicy(
                code="DEFAULT",
                name="默认费控策略",
                warning1_threshold=D("50"),
                warning2_threshold=D("20"),
                trip_threshold=D("0"),
                close_threshold=D("10"),
                required_warning=2,
                grace_hours=D("24"),
                **common,
            ),
            CostControlPolicy(
                code="RES",
                name="居民费控策略",
                category=CustomerCategory.RESIDENTIAL,
                warning1_threshold=D("30"),
                warning2_threshold=D("10"),
                trip_threshold=D("0"),
                close_threshold=D("5"),
                required_warning=2,
                grace_hours=D("24"),
                **common,
            ),
            CostControlPolicy(
                code="BIZ",
                name="工商业费控策略",
                category=CustomerCategory.COMMERCIAL,
                warning1_threshold=D("2000"),
                warning2_threshold=D("500"),
                trip_threshold=D("0"),
                close_threshold=D("200"),
                credit_allowance=D("500"),
                required_warning=2,
                grace_hours=D("48"),
                **common,
            ),
            CostControlPolicy(
                code="IMPORTANT",
                name="重要用户（一级）",
                importance_grade="grade1",
                warning1_threshold=D("10000"),
                warning2_threshold=D("5000"),
                trip_threshold=D("-20000"),
                close_threshold=D("0"),
                credit_allowance=D("20000"),
                required_warning=2,
                grace_hours=D("72"),
                **common,
            ),
        ]
    )


TARIFF_BY_CATEGORY = {
    CustomerCategory.COMMERCIAL: "COM-TOU",
    CustomerCategory.LARGE_INDUSTRY: "LI-TWO-PART",
    CustomerCategory.AGRICULTURE: "AGR-FLAT",
}


def assign_tariffs(rng: random.Random, tariffs: dict[str, Tariff]) -> int:
    rows = []
    for pk, category, opened_on in Account.objects.values_list("pk", "customer__category", "opened_on"):
        if category == CustomerCategory.RESIDENTIAL:
            code = "RES-TOU" if rng.random() < 0.2 else "RES-TIER"
        else:
            code = TARIFF_BY_CATEGORY[category]
        rows.append(AccountTariff(account_id=pk, tariff=tariffs[code], effective_from=opened_on))
    AccountTariff.objects.bulk_create(rows, batch_size=5000)
    return len(rows)


def _round_up(amount: Decimal, step: int) -> Decimal:
    steps = int((amount / step).to_integral_value(rounding="ROUND_CEILING"))
    return D(max(1, steps) * step)


def build_ledgers(rng: random.Random, *, today: date) -> dict[str, int]:
    """Rate the stored history of prepaid remote cost-control accounts day by day (as real-time
    rating would have), with top-ups, and start the rating cursors at the last reading."""
    meters = list(
        Meter.objects.filter(
            status=MeterStatus.INSTALLED,
            cost_control_mode=CostControlMode.REMOTE,
            service_point__account__settlement_mode=SettlementMode.PREPAID,
        ).values_list("pk", "service_point__account_id", "service_point__ct_ratio", "service_point__pt_ratio")
    )
    account_of = {m: (a, D((ct or 1) * (pt or 1))) for m, a, ct, pt in meters}
    assignments = defaultdict(list)
    for account_id, start, tariff_id in AccountTariff.objects.values_list(
        "account_id", "effective_from", "tariff_id"
    ):
        assignments[account_id].append((start, tariff_id))
    specs = tariff_specs({t for a in assignments.values() for _s, t in a})
    opened = dict(Account.objects.values_list("pk", "opened_on"))
    readings = defaultdict(list)
    for row in (
        DailyReading.objects.filter(meter_id__in=list(account_of))
        .order_by("meter_id", "read_date")
        .values_list(
            "meter_id", "read_date", "forward_total", "forward_sharp", "forward_peak", "forward_valley"
        )
        .iterator(chunk_size=20000)
    ):
        readings[row[0]].append(row)

    entries: list[LedgerEntry] = []
    balances: dict[int, Decimal] = {}
    tiers: dict[tuple[int, date], Decimal] = {}
    low_accounts = []
    tz = timezone.get_current_timezone()
    for meter_id, rows in readings.items():
        account_id, mult = account_of[meter_id]
        assignment = sorted(assignments.get(account_id, []))
        if not assignment or len(rows) < 2:
            continue
        spec = specs[assignment[-1][1]]
        daily_costs = []
        balance = D("0")
        # Opening top-up before the history: about 40 days of use, in round money.
        first, last = rows[0], rows[-1]
        days = max(1, (last[1] - first[1]).days)
        per_day_kwh = (last[2] - first[2]) * mult / days
        price = spec.versions[-1].energy_prices["flat"]
        typical_day = max(D("0.5"), per_day_kwh * price)
        topup_step = 50 if typical_day < 20 else 1000
        opening = _round_up(typical_day * 40, topup_step)
        stamp = datetime.combine(first[1], time(9, 30), tz)
        entries.append(_payment(account_id, opening, first[1], stamp, f"demo-open-{account_id}", "开户预存"))
        balance += opening
        prev = first
        for row in rows[1:]:
            day = row[1] - timedelta(days=1)
            version = spec.version_on(day)
            if version is None:
                prev = row
                continue
            # (total, sharp, peak, flat, valley), as real-time rating reads them
            kwh = consumption_by_band(
                (row[2], row[3], row[4], None, row[5]),
                (prev[2], prev[3], prev[4], None, prev[5]),
                mult,
                version,
            )
            period = tier_period_start(version.tier_basis, day)
            limits = (
                engine.prorated_tier_limits(version, day.year, opened.get(account_id), None) if period else ()
            )
            used = tiers.get((account_id, period), D("0")) if period else D("0")
            if period and (account_id, period) not in tiers:
                # kWh of the tier year before the history began, at the history's pace
                used = quantize_energy(
                    per_day_kwh * max(0, (first[1] - max(period, opened[account_id])).days)
                )
            amount, used_after = engine.rate_energy_day(version, kwh, used, limits)
            if period:
                tiers[(account_id, period)] = used_after
            prev = row
            if amount:
                total_kwh = quantize_energy(sum(kwh.values(), D("0")))
                entries.append(
                    LedgerEntry(
                        account_id=account_id,
                        kind=EntryKind.ENERGY_CHARGE,
                        amount=-amount,
                        kwh=total_kwh,
                        business_date=day,
                        description=f"Energy {day:%Y-%m-%d} {total_kwh} kWh",
                        source=EntrySource.READING,
                        source_ref=f"reading:{meter_id}:{row[1]:%Y%m%d}",
                        idempotency_key=f"rt:{meter_id}:{row[1]:%Y%m%d}",
                        created_at=datetime.combine(row[1], time(2, 30), tz),
                    )
                )
                balance -= amount
                daily_costs.append(amount)
            if balance < typical_day * 8 and row is not last:
                topup = _round_up(typical_day * rng.randint(25, 60), topup_step)
                channel = rng.choice(("网上国网", "柜台现金", "银行代收", "支付宝", "微信"))
                stamp = datetime.combine(row[1], time(rng.randint(8, 21), rng.randint(0, 59)), tz)
                entries.append(
                    _payment(account_id, topup, row[1], stamp, f"demo-{meter_id}-{row[1]:%Y%m%d}", channel)
                )
                balance += topup
        balances[account_id] = balance
        if rng.random() < 0.03 and typical_day < 20:
            low_accounts.append((account_id, typical_day, rows[-1][1]))

    # A few accounts stop topping up: warned two days ago and down to about a day of use,
    # so that the first live rating trips them (policy permitting) and a payment closes them.
    for account_id, typical_day, last_day in low_accounts:
        target = quantize_yuan(max(D("0.50"), typical_day * D("0.8")))
        difference = quantize_yuan(target - balances[account_id])
        if difference == 0:
            continue
        stamp = datetime.combine(last_day, time(3), tz)
        entries.append(
            LedgerEntry(
                account_id=account_id,
                kind=EntryKind.ADJUSTMENT,
                amount=difference,
                business_date=last_day,
                description="迁移余额校正（演示）",
                source=EntrySource.SYSTEM,
                source_ref="demo",
                idempotency_key=f"demo-migration:{account_id}",
                created_at=stamp,
            )
        )
        balances[account_id] = target

    LedgerEntry.objects.bulk_create(entries, batch_size=5000)
    _payment_rows([e for e in entries if e.kind == EntryKind.PAYMENT])
    now = timezone.now()
    warned = {a for a, _t, _d in low_accounts}
    AccountBilling.objects.bulk_create(
        [
            AccountBilling(
                account_id=a,
                balance=b,
                state=CostControlState.WARNING2 if a in warned else CostControlState.NORMAL,
                warning1_at=now - timedelta(days=3) if a in warned else None,
                warning2_at=now - timedelta(days=2) if a in warned else None,
                state_changed_at=now - timedelta(days=2) if a in warned else None,
                last_rated_at=now,
            )
            for a, b in balances.items()
        ],
        batch_size=5000,
    )
    TierAccumulator.objects.bulk_create(
        [
            TierAccumulator(account_id=a, period_start=p, kwh=quantize_energy(k))
            for (a, p), k in tiers.items()
        ],
        batch_size=5000,
    )
    started = rating_cursors_start(meter_ids=list(readings), as_of=today)
    return {"entries": len(entries), "accounts": len(balances), "warned": len(warned), "cursors": started}


def _payment(account_id, amount, day, stamp, key, channel) -> LedgerEntry:
    return LedgerEntry(
        account_id=account_id,
        kind=EntryKind.PAYMENT,
        amount=amount,
        business_date=day,
        description=f"缴费（{channel}）",
        source=EntrySource.PAYMENT,
        source_ref=key,
        idempotency_key=f"demo-payment:{key}",
        created_at=stamp,
    )


# How the demo's payments came in: the channel named in the entry's description.
CHANNELS = {
    "开户预存": (Channel.COUNTER, Method.CASH),
    "柜台现金": (Channel.COUNTER, Method.CASH),
    "银行代收": (Channel.BANK, Method.TRANSFER),
    "网上国网": (Channel.ONLINE, Method.ONLINE),
    "支付宝": (Channel.ONLINE, Method.ONLINE),
    "微信": (Channel.ONLINE, Method.ONLINE),
}


def _payment_rows(entries: list[LedgerEntry]) -> None:
    """The payments app's record of each demo payment (its ledger entry is already posted)."""
    rows = []
    for e in entries:
        label = e.description.removeprefix("缴费（").removesuffix("）")
        channel, method = CHANNELS.get(label, (Channel.COUNTER, Method.CASH))
        rows.append(
            Payment(
                channel=channel,
                external_id=e.source_ref,
                account_id=e.account_id,
                amount=e.amount,
                method=method,
                received_at=e.created_at,
                posted_at=e.created_at,
                entry_id=e.pk,
                payer="",
                details={"demo": True},
            )
        )
    Payment.objects.bulk_create(rows, batch_size=5000)


def build(rng: random.Random, *, today: date, log=print) -> None:
    with transaction.atomic():
        tariffs = build_tariffs()
        build_policies()
        assigned = assign_tariffs(rng, tariffs)
    log(f"tariffs: {len(tariffs)}, accounts on tariffs: {assigned}")
    figures = build_ledgers(rng, today=today)
    log(
        "ledger: {entries} entries for {accounts} prepaid accounts ({warned} warned and nearly empty); "
        "rating cursors: {cursors}".format(**figures)
    )
