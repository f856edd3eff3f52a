"""Checks a tariff clerk can act on, for the admin: call before saving a price version."""

from collections.abc import Iterable
from datetime import time

from django.utils.translation import gettext as _

from billing.rating.model import BANDS, BASIC_BASES, FLAT, TIER_BASES, PriceVersion, TouPeriod
from billing.rating.power_factor import STANDARDS
from billing.rating.tou import SLOTS_PER_DAY, period_slots


def _slot_time(slot: int) -> str:
    return f"{slot // 2:02d}:{30 * (slot % 2):02d}"


def validate_version(
    version: PriceVersion, tou_periods: Iterable[TouPeriod] = (), holiday_band: str | None = None
) -> list[str]:
    """Every problem found, as messages; an empty list means the version can be saved."""
    errors: list[str] = []
    periods = list(tou_periods)

    if version.effective_to is not None and version.effective_to <= version.effective_from:
        errors.append(_("The end date must be after the start date."))

    # prices
    for band, price in version.energy_prices.items():
        if band not in BANDS:
            errors.append(_("Unknown band “%(band)s”; use sharp, peak, flat or valley.") % {"band": band})
        if price < 0:
            errors.append(_("The %(band)s price must not be negative.") % {"band": band})
    used_bands = {p.band for p in periods} or {FLAT}
    if holiday_band:
        used_bands.add(holiday_band)
    for band in sorted(used_bands):
        if band not in version.energy_prices:
            errors.append(
                _("The %(band)s band is used by the time-of-use periods but has no price.") % {"band": band}
            )

    # blocks
    if version.tier_basis not in TIER_BASES:
        errors.append(_("The block basis must be none, monthly or annual."))
    elif version.tier_basis == "none":
        if version.tiers:
            errors.append(_("Blocks are given but the block basis is “none”; choose monthly or annual."))
    else:
        tiers = version.tiers
        if len(tiers) < 2:
            errors.append(_("A block tariff needs at least two blocks, the last one without an upper bound."))
        if tiers and tiers[-1].upper_kwh is not None:
            errors.append(_("The last block must have no upper bound."))
        bounds = [t.upper_kwh for t in tiers[:-1]]
        if any(b is None for b in bounds):
            errors.append(_("Only the last block may be without an upper bound."))
        numeric = [t.upper_kwh for t in tiers if t.upper_kwh is not None]
        if any(b <= 0 for b in numeric) or any(x >= y for x, y in zip(numeric, numeric[1:], strict=False)):
            errors.append(_("Block upper bounds must be positive and strictly ascending."))
        if tiers and tiers[0].price_adder != 0:
            errors.append(_("Block 1 must have a price adder of 0."))
        if any(t.price_adder < 0 for t in tiers):
            errors.append(_("Block price adders must not be negative."))

    # basic charge and power factor
    if version.basic_basis not in BASIC_BASES:
        errors.append(_("The basic charge basis must be none, capacity or demand."))
    elif version.basic_basis != "none" and version.basic_price <= 0:
        errors.append(_("A basic charge by capacity or demand needs a price above 0."))
    if version.pf_standard is not None and version.pf_standard not in STANDARDS:
        errors.append(_("The power-factor standard must be 0.90, 0.85 or 0.80."))

    # funds included in the price
    codes = [s.code for s in version.surcharges]
    if len(codes) != len(set(codes)):
        errors.append(_("Each fund or surcharge may appear only once."))
    if any(s.price_per_kwh < 0 for s in version.surcharges):
        errors.append(_("Fund and surcharge prices must not be negative."))
    if version.energy_prices and version.surcharge_price_total > min(version.energy_prices.values()):
        errors.append(_("The included funds and surcharges add up to more than the lowest energy price."))

    errors.extend(_validate_periods(periods))
    return errors


def _validate_periods(periods: list[TouPeriod]) -> list[str]:
    if not periods:
        return []
    errors = []
    for p in periods:
        for moment in (p.start, p.end):
            if moment.minute not in (0, 30) or moment.second or moment.microsecond:
                errors.append(
                    _("Period %(start)s-%(end)s must start and end on a whole or half hour.")
                    % {"start": f"{p.start:%H:%M}", "end": f"{p.end:%H:%M}"}
                )
                break
        if p.start == p.end and p.end != time(0, 0):
            errors.append(
                _("Period %(start)s-%(end)s is empty.")
                % {"start": f"{p.start:%H:%M}", "end": f"{p.end:%H:%M}"}
            )
        if not p.months or any(m < 1 or m > 12 for m in p.months):
            errors.append(_("Every period needs months between 1 and 12."))
        if p.band not in BANDS:
            errors.append(_("Unknown band “%(band)s”; use sharp, peak, flat or valley.") % {"band": p.band})
    for month in range(1, 13):
        cover = [0] * SLOTS_PER_DAY
        for p in periods:
            if month in p.months:
                for slot in period_slots(p):
                    cover[slot] += 1
        gaps = [s for s in range(SLOTS_PER_DAY) if cover[s] == 0]
        overlaps = [s for s in range(SLOTS_PER_DAY) if cover[s] > 1]
        if gaps:
            errors.append(
                _("Month %(month)d: no period covers %(times)s.")
                % {
                    "month": month,
                    "times": ", ".join(_slot_time(s) for s in gaps[:6]) + ("…" if len(gaps) > 6 else ""),
                }
            )
        if overlaps:
            errors.append(
                _("Month %(month)d: periods overlap at %(times)s.")
                % {
                    "month": month,
                    "times": ", ".join(_slot_time(s) for s in overlaps[:6])
                    + ("…" if len(overlaps) > 6 else ""),
                }
            )
    return errors
