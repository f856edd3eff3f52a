"""Tariffs from the database as the rating engine's specifications, and quotes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from decimal import Decimal

from django.utils.translation import gettext as _

from billing.models import AccountTariff, PowerFactorRow, Tariff, TariffVersion
from billing.rating import engine
from billing.rating import model as rm
from billing.rating.power_factor import PowerFactorTable
from core.exceptions import NotFound, ValidationError


def _version_spec(v: TariffVersion) -> rm.PriceVersion:
    prices = {"flat": v.price_flat}
    for band in ("sharp", "peak", "valley"):
        value = getattr(v, f"price_{band}")
        if value is not None:
            prices[band] = value
    return rm.PriceVersion(
        effective_from=v.effective_from,
        effective_to=v.effective_to,
        energy_prices=prices,
        tier_basis=v.tier_basis,
        tiers=tuple(rm.Tier(upper_kwh=t.upper_kwh, price_adder=t.price_adder) for t in v.tiers.all()),
        basic_basis=v.basic_basis,
        basic_price=v.basic_price,
        pf_standard=Decimal(v.pf_standard) if v.pf_standard else None,
        surcharges=tuple(
            rm.Surcharge(code=s.code, name=s.name, price_per_kwh=s.price_per_kwh) for s in v.surcharges.all()
        ),
    )


def _tou_periods(v: TariffVersion) -> tuple:
    return tuple(
        rm.TouPeriod(band=p.band, start=p.start, end=p.end, months=p.month_set()) for p in v.tou_periods.all()
    )


def tariff_specs(tariff_ids: Iterable[int]) -> dict[int, rm.TariffSpec]:
    """The rating specifications of these tariffs (a handful of queries for any number)."""
    ids = set(tariff_ids)
    versions = defaultdict(list)
    qs = (
        TariffVersion.objects.filter(tariff_id__in=ids)
        .select_related("tariff")
        .prefetch_related("tiers", "surcharges", "tou_periods")
        .order_by("tariff_id", "effective_from")
    )
    tariffs = {}
    for v in qs:
        versions[v.tariff_id].append(v)
        tariffs[v.tariff_id] = v.tariff
    specs = {}
    for tariff_id, vs in versions.items():
        t = tariffs[tariff_id]
        # TOU periods are kept per version; the engine takes the latest version's periods
        # (a change of periods is a new tariff version with a new schedule downloaded to meters).
        specs[tariff_id] = rm.TariffSpec(
            code=t.code,
            name=t.name,
            versions=tuple(_version_spec(v) for v in vs),
            tou_periods=_tou_periods(vs[-1]),
            holiday_band=t.holiday_band or None,
        )
    return specs


def tariff_spec_by_code(code: str) -> tuple[Tariff, rm.TariffSpec]:
    tariff = Tariff.objects.filter(code=code).first()
    if tariff is None:
        raise NotFound(_("No tariff with code %(code)s.") % {"code": code}, code="unknown_tariff")
    spec = tariff_specs([tariff.pk]).get(tariff.pk)
    if spec is None:
        raise ValidationError(
            _("Tariff %(code)s has no prices yet.") % {"code": code}, code="tariff_without_prices"
        )
    return tariff, spec


def power_factor_table() -> PowerFactorTable:
    rows = PowerFactorRow.objects.values_list("standard", "power_factor", "adjustment_percent")
    return PowerFactorTable.from_rows([(Decimal(s), pf, pct) for s, pf, pct in rows])


def tariff_quote(*, tariff_code: str, usage: rm.Usage) -> rm.Quote:
    """Itemised charges for ``usage`` on the tariff (nothing is posted)."""
    _tariff, spec = tariff_spec_by_code(tariff_code)
    try:
        return engine.rate(spec, usage, power_factor_table())
    except ValueError as exc:
        raise ValidationError(str(exc), code="unrateable") from None


def account_tariffs(account_ids: Iterable[int]) -> dict[int, list[tuple[date, int]]]:
    """Each account's tariff assignments as (effective_from, tariff_id), oldest first."""
    result: dict[int, list[tuple[date, int]]] = defaultdict(list)
    rows = (
        AccountTariff.objects.filter(account_id__in=list(account_ids))
        .order_by("account_id", "effective_from")
        .values_list("account_id", "effective_from", "tariff_id")
    )
    for account_id, start, tariff_id in rows:
        result[account_id].append((start, tariff_id))
    return result


def tariff_on(assignments: list[tuple[date, int]], day: date) -> int | None:
    chosen = None
    for start, tariff_id in assignments:
        if start <= day:
            chosen = tariff_id
        else:
            break
    return chosen
