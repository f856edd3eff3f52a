"""The rating engine: consumption + tariff -> itemised charges, in Decimal only.

Used by bill runs (:func:`rate`) and by real-time rating (:func:`rate_energy_day`, the lean
path for one day of one account). Both produce the same energy amount for the same inputs
because they share :func:`_energy_parts`.

Rules and rounding, in one place:

* Every line amount is ``quantize_yuan(quantity × unit_price)``; the total is the sum of the
  line amounts except the "of which" fund lines (funds are included in the energy price).
* kWh are taken to 0.01 kWh (``quantize_energy``) on entry.
* A price change inside the period splits it by days: each band's kWh is shared out in
  proportion to the days under each price version; the running total is rounded with
  ``quantize_energy`` at each cut and the last share takes the remainder, so the shares add
  back up exactly and none is negative (two parts: round(q × d1 / days), then the rest). The same split
  happens at calendar-month boundaries for monthly blocks and at the new year for annual
  blocks (the accumulator restarts at 0 there). The power factor is computed once from the
  whole period's kWh and kvarh; each price version's part is adjusted with that version's
  standard.
* Blocks (tiers) apply to the total kWh across bands. kWh in block n is billed at the band
  price + the block-n adder. When several bands are used, the kWh of the highest block are
  shared among the bands in proportion to each band's kWh (largest-remainder on 0.01 kWh, so
  no band gets more than it used), then the next block down in proportion to what is left,
  and block 1 takes each band's remainder.
* Monthly blocks: each calendar month of the period has its full blocks; ``tier_kwh_used``
  counts for the month the period starts in. Annual blocks run per calendar year with
  ``tier_kwh_used`` as the year's accumulator; when the account is active for only part of the
  year (``active_from`` / ``active_to``) each bound becomes bound × active days / days in the
  year, rounded half-up to whole kWh (2160 × 184 / 365 = 1088.88 -> 1089).
* Basic charge: capacity kVA or maximum demand kW × price for each calendar month; a part of a
  month is charged at price × days / days in that month (unit price to 6 places).
* Power-factor adjustment = quantize_yuan((basic + energy charge − included funds) × percent
  / 100); the line shows the percent as quantity and base / 100 as the unit price.
"""

from calendar import monthrange
from datetime import date, timedelta
from decimal import Decimal

from django.utils.translation import gettext as _

from billing.rating.model import (
    BANDS,
    FLAT,
    LINE_BASIC,
    LINE_ENERGY,
    LINE_POWER_FACTOR,
    LINE_SURCHARGE_INCLUDED,
    TOTAL,
    ChargeLine,
    PriceVersion,
    Quote,
    TariffSpec,
    Usage,
)
from billing.rating.power_factor import DEFAULT_POWER_FACTOR_TABLE, PowerFactorTable, power_factor
from core.exceptions import ValidationError
from core.money import (
    ENERGY,
    ROUNDING,
    YUAN,
    quantize_energy,
    quantize_unit_price,
    quantize_yuan,
    split_yuan,
    to_decimal,
)

ZERO = Decimal("0")
ONE_DAY = timedelta(days=1)
WHOLE_KWH = Decimal("1")

# split_yuan shares out on a 0.01 grid; kWh use the same grid, so it serves for energy too.
assert ENERGY == YUAN

BAND_ORDER = {band: i for i, band in enumerate(BANDS)}


def band_label(band: str) -> str:
    labels = {"sharp": _("sharp"), "peak": _("peak"), "flat": _("flat"), "valley": _("valley")}
    return labels.get(band, band)


# ---------------------------------------------------------------------------- blocks (tiers)


def whole_kwh(value: Decimal) -> Decimal:
    return value.quantize(WHOLE_KWH, rounding=ROUNDING)


def prorated_tier_limits(
    version: PriceVersion, year: int, active_from: date | None, active_to: date | None
) -> tuple[Decimal | None, ...]:
    """Block bounds for one tier year of an account active only from/to the given days."""
    limits = version.tier_limits
    if version.tier_basis != "annual" or not limits:
        return limits
    year_start, year_end = date(year, 1, 1), date(year, 12, 31)
    first = max(year_start, active_from) if active_from else year_start
    last = min(year_end, active_to) if active_to else year_end
    days_in_year = (year_end - year_start).days + 1
    active_days = max((last - first).days + 1, 0)
    if active_days >= days_in_year:
        return limits
    return tuple(None if upper is None else whole_kwh(upper * active_days / days_in_year) for upper in limits)


def _tier_quantities(used: Decimal, total: Decimal, limits: tuple[Decimal | None, ...]) -> list[Decimal]:
    """kWh of the range [used, used + total] (total >= 0) in each block; block 1 reaches down
    below zero so that undoing more than was counted stays in block 1."""
    if not limits:
        return [total]
    top = used + total
    quantities = []
    lower = None
    for upper in limits:
        low = used if lower is None or used > lower else lower
        high = top if upper is None or top < upper else upper
        quantities.append(high - low if high > low else ZERO)
        if upper is None:
            break
        lower = upper
    return quantities


def _energy_parts(
    version: PriceVersion, band_kwh: list[tuple[str, Decimal]], used: Decimal, limits
) -> list[tuple[str, int, Decimal, Decimal]]:
    """(band, block index, kWh, unit price) for non-negative kWh per band starting at ``used``."""
    prices = version.unit_prices
    for band, _kwh in band_kwh:
        if band not in prices:
            raise ValidationError(
                _("The tariff has no %(band)s price on %(day)s.")
                % {"band": band_label(band), "day": version.effective_from.isoformat()},
                code="band_without_price",
            )
    if len(band_kwh) == 1:
        band, kwh = band_kwh[0]
        if not limits:
            return [(band, 0, kwh, prices[band][0])]
        return [(band, i, q, prices[band][i]) for i, q in enumerate(_tier_quantities(used, kwh, limits)) if q]
    total = sum((q for _b, q in band_kwh), ZERO)
    tiers = _tier_quantities(used, total, limits)
    remaining = [q for _b, q in band_kwh]
    by_tier: list[list[Decimal]] = [[] for _ in tiers]
    for t in range(len(tiers) - 1, 0, -1):
        if tiers[t] and sum(remaining):
            shares = split_yuan(tiers[t], remaining)
            remaining = [r - s for r, s in zip(remaining, shares, strict=True)]
        else:
            shares = [ZERO] * len(band_kwh)
        by_tier[t] = shares
    by_tier[0] = remaining
    parts = []
    for i, (band, _kwh) in enumerate(band_kwh):
        for t in range(len(tiers)):
            q = by_tier[t][i]
            if q:
                parts.append((band, t, q, prices[band][t]))
    return parts


def _normalise_kwh(kwh: dict[str, Decimal]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for band, q in kwh.items():
        band = FLAT if band == TOTAL else band
        out[band] = out.get(band, ZERO) + quantize_energy(q)
    return out


def _sorted_bands(kwh: dict[str, Decimal]) -> list[tuple[str, Decimal]]:
    return sorted(((b, q) for b, q in kwh.items() if q), key=lambda item: BAND_ORDER.get(item[0], 99))


def rate_energy_day(
    version: PriceVersion,
    kwh: dict[str, Decimal],
    tier_kwh_used: Decimal,
    tier_limits: tuple[Decimal | None, ...] | None = None,
) -> tuple[Decimal, Decimal]:
    """Energy charge of one day's consumption -> (amount, tier_kwh_after).

    ``tier_limits`` are the block bounds in force for the account (see
    :func:`prorated_tier_limits`); None means the version's own. Negative kWh (a true-up that
    replaces a higher estimate) undo consumption from the top of the blocks and give a
    negative amount; when a day has both, the negative bands are undone first.
    """
    if tier_limits is None:
        tier_limits = version.tier_limits
    if len(kwh) == 1 and not tier_limits:
        # fast path: one register, no blocks
        for band, q in kwh.items():
            q = quantize_energy(q)
            if band == TOTAL:
                band = FLAT
            prices = version.unit_prices.get(band)
            if prices is None:
                _energy_parts(version, [(band, q)], tier_kwh_used, ())  # raises the message
            return quantize_yuan(q * prices[0]), tier_kwh_used + q
    kwh = _normalise_kwh(kwh)
    used = tier_kwh_used
    amount = ZERO
    negative = [(b, -q) for b, q in _sorted_bands(kwh) if q < 0]
    positive = [(b, q) for b, q in _sorted_bands(kwh) if q > 0]
    if negative:
        undone = sum((q for _b, q in negative), ZERO)
        used -= undone
        for _band, _tier, q, price in _energy_parts(version, negative, used, tier_limits):
            amount -= quantize_yuan(q * price)
    if positive:
        for _band, _tier, q, price in _energy_parts(version, positive, used, tier_limits):
            amount += quantize_yuan(q * price)
        used += sum((q for _b, q in positive), ZERO)
    return amount, used


# ---------------------------------------------------------------------------- periods


def _days(first: date, last: date) -> int:
    return (last - first).days + 1


def _month_pieces(first: date, last: date) -> list[tuple[date, date]]:
    pieces = []
    while first <= last:
        month_end = date(first.year, first.month, monthrange(first.year, first.month)[1])
        end = min(month_end, last)
        pieces.append((first, end))
        first = end + ONE_DAY
    return pieces


def _year_pieces(first: date, last: date) -> list[tuple[date, date]]:
    pieces = []
    while first <= last:
        end = min(date(first.year, 12, 31), last)
        pieces.append((first, end))
        first = end + ONE_DAY
    return pieces


def _version_segments(tariff: TariffSpec, first: date, last: date) -> list[tuple[PriceVersion, date, date]]:
    segments = []
    day = first
    while day <= last:
        version = tariff.version_on(day)
        if version is None:
            raise ValidationError(
                _("Tariff %(code)s has no price in force on %(day)s.")
                % {"code": tariff.code, "day": day.isoformat()},
                code="no_price_version",
            )
        end = last if version.effective_to is None else min(last, version.effective_to - ONE_DAY)
        segments.append((version, day, end))
        day = end + ONE_DAY
    return segments


def _share_by_days(quantity: Decimal, days: list[int]) -> list[Decimal]:
    """Shares in proportion to days that add back up exactly and are never negative.

    The running total is rounded (quantize_energy) at each cut and each share is the difference
    of two rounded running totals, so the last share takes the remainder; with two parts this
    is simply round(q × d1 / days) and q minus that."""
    if len(days) == 1:
        return [quantity]
    total_days = sum(days)
    shares = []
    elapsed, before = 0, ZERO
    for d in days[:-1]:
        elapsed += d
        upto = quantize_energy(quantity * elapsed / total_days)
        shares.append(upto - before)
        before = upto
    shares.append(quantity - before)
    return shares


def _tier_key(version: PriceVersion, day: date):
    if version.tier_basis == "monthly":
        return ("monthly", day.year, day.month)
    if version.tier_basis == "annual":
        return ("annual", day.year)
    return ("none",)


def _check_usage(tariff: TariffSpec, usage: Usage, kwh: dict[str, Decimal]) -> None:
    if usage.period_end < usage.period_start:
        raise ValidationError(
            _("The period ends before it starts."),
            field_errors={"period_end": [_("Must not be before start.")]},
        )
    negative = [b for b, q in kwh.items() if q < 0]
    if negative:
        raise ValidationError(
            _("Consumption must not be negative in a quote or bill."),
            field_errors={"kwh": [_("Negative kWh for %(bands)s.") % {"bands": ", ".join(negative)}]},
        )
    for q in (usage.kvarh, usage.max_demand_kw, usage.capacity_kva):
        if q is not None and q < 0:
            raise ValidationError(_("kvarh, maximum demand and capacity must not be negative."))


# ---------------------------------------------------------------------------- rate()


def rate(tariff: TariffSpec, usage: Usage, pf_table: PowerFactorTable | None = None) -> Quote:
    """Itemised charges of ``usage`` under ``tariff`` (see the module docstring for the rules)."""
    if pf_table is None:
        pf_table = DEFAULT_POWER_FACTOR_TABLE
    kwh = _normalise_kwh(usage.kwh)
    _check_usage(tariff, usage, kwh)
    first, last = usage.period_start, usage.period_end
    segments = _version_segments(tariff, first, last)

    # energy pieces: version segments, cut at tier-month / tier-year boundaries
    pieces: list[tuple[int, PriceVersion, date, date]] = []
    for index, (version, seg_first, seg_last) in enumerate(segments):
        if version.tier_basis == "monthly":
            cuts = _month_pieces(seg_first, seg_last)
        elif version.tier_basis == "annual":
            cuts = _year_pieces(seg_first, seg_last)
        else:
            cuts = [(seg_first, seg_last)]
        pieces.extend((index, version, a, b) for a, b in cuts)
    piece_days = [_days(a, b) for _i, _v, a, b in pieces]
    piece_kwh: list[dict[str, Decimal]] = [{} for _ in pieces]
    for band, q in _sorted_bands(kwh):
        for i, share in enumerate(_share_by_days(q, piece_days)):
            piece_kwh[i][band] = share

    energy_lines: list[ChargeLine] = []
    fund_lines: list[ChargeLine] = []
    basic_lines: list[ChargeLine] = []
    pf_lines: list[ChargeLine] = []
    seg_energy = [ZERO] * len(segments)
    seg_funds = [ZERO] * len(segments)
    seg_basic = [ZERO] * len(segments)
    seg_kwh = [ZERO] * len(segments)

    used = usage.tier_kwh_used
    key = None
    for i, (seg_index, version, a, b) in enumerate(pieces):
        piece_key = _tier_key(version, a)
        if key is not None and piece_key != key:
            used = ZERO
        key = piece_key
        if version.tier_basis == "annual":
            limits = prorated_tier_limits(version, a.year, usage.active_from, usage.active_to)
        else:
            limits = version.tier_limits
        band_kwh = _sorted_bands(piece_kwh[i])
        for band, tier, q, price in _energy_parts(version, band_kwh, used, limits) if band_kwh else []:
            tier_no = tier + 1 if limits else None
            if tier_no:
                text = _("Energy, %(band)s, tier %(tier)d") % {"band": band_label(band), "tier": tier_no}
            else:
                text = _("Energy, %(band)s") % {"band": band_label(band)}
            amount = quantize_yuan(q * price)
            energy_lines.append(ChargeLine(LINE_ENERGY, text, band, tier_no, q, "kWh", price, amount, a, b))
            seg_energy[seg_index] += amount
        piece_total = sum((q for _b, q in band_kwh), ZERO)
        seg_kwh[seg_index] += piece_total
        used += piece_total

    for index, (version, seg_first, seg_last) in enumerate(segments):
        for surcharge in version.surcharges:
            price = quantize_unit_price(surcharge.price_per_kwh)
            amount = quantize_yuan(seg_kwh[index] * price)
            text = _("of which %(name)s (included in the energy price)") % {"name": surcharge.name}
            fund_lines.append(
                ChargeLine(
                    LINE_SURCHARGE_INCLUDED,
                    text,
                    None,
                    None,
                    seg_kwh[index],
                    "kWh",
                    price,
                    amount,
                    seg_first,
                    seg_last,
                )
            )
            seg_funds[index] += amount
        if version.basic_basis != "none":
            for line in _basic_lines(version, usage, seg_first, seg_last):
                basic_lines.append(line)
                seg_basic[index] += line.amount

    pf = None
    percents = set()
    if any(v.pf_standard is not None for v, _a, _b in segments):
        if usage.kvarh is None:
            raise ValidationError(
                _("This tariff has a power-factor adjustment; the reactive energy (kvarh) is required."),
                field_errors={"kvarh": [_("Required for this tariff.")]},
            )
        pf = power_factor(sum(kwh.values(), ZERO), usage.kvarh)
    if pf is not None:
        for index, (version, seg_first, seg_last) in enumerate(segments):
            if version.pf_standard is None:
                continue
            percent = pf_table.percent(version.pf_standard, pf)
            percents.add(percent)
            base = seg_basic[index] + seg_energy[index] - seg_funds[index]
            unit_price = quantize_unit_price(base / 100)
            text = _(
                "Power factor adjustment: %(pf)s against standard %(standard)s, %(percent)s%% of %(base)s"
            ) % {
                "pf": pf,
                "standard": version.pf_standard,
                "percent": f"{percent:+.2f}",
                "base": quantize_yuan(base),
            }
            amount = quantize_yuan(percent * unit_price)
            pf_lines.append(
                ChargeLine(
                    LINE_POWER_FACTOR, text, None, None, percent, "%", unit_price, amount, seg_first, seg_last
                )
            )

    lines = energy_lines + fund_lines + basic_lines + pf_lines
    total = sum((line.amount for line in lines if line.kind != LINE_SURCHARGE_INCLUDED), ZERO)
    return Quote(
        lines=lines,
        total=quantize_yuan(total),
        power_factor=pf,
        pf_adjustment_percent=percents.pop() if len(percents) == 1 else None,
        tier_kwh_after=used,
    )


def _basic_lines(version: PriceVersion, usage: Usage, first: date, last: date) -> list[ChargeLine]:
    if version.basic_basis == "capacity":
        quantity, unit = usage.capacity_kva, "kVA"
        missing = _("The contracted capacity (kVA) is required for this tariff.")
        field = "capacity_kva"
    else:
        quantity, unit = usage.max_demand_kw, "kW"
        missing = _("The maximum demand (kW) is required for this tariff.")
        field = "max_demand_kw"
    if quantity is None:
        raise ValidationError(missing, field_errors={field: [_("Required for this tariff.")]})
    quantity = to_decimal(quantity)
    lines = []
    for a, b in _month_pieces(first, last):
        days, days_in_month = _days(a, b), monthrange(a.year, a.month)[1]
        if days == days_in_month:
            price = quantize_unit_price(version.basic_price)
            text = _("Basic charge, %(month)s") % {"month": f"{a:%Y-%m}"}
        else:
            price = quantize_unit_price(version.basic_price * days / days_in_month)
            text = _("Basic charge, %(month)s, %(days)d of %(in_month)d days") % {
                "month": f"{a:%Y-%m}",
                "days": days,
                "in_month": days_in_month,
            }
        lines.append(
            ChargeLine(
                LINE_BASIC, text, None, None, quantity, unit, price, quantize_yuan(quantity * price), a, b
            )
        )
    return lines


# ---------------------------------------------------------------------------- output


def quote_to_dict(quote: Quote) -> dict:
    """JSON-ready: amounts as strings with two places, dates as ISO strings."""

    def text(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return {
        "total": f"{quote.total:.2f}",
        "power_factor": text(quote.power_factor),
        "pf_adjustment_percent": text(quote.pf_adjustment_percent),
        "tier_kwh_after": text(quote.tier_kwh_after),
        "lines": [
            {
                "kind": line.kind,
                "description": line.description,
                "band": line.band,
                "tier": line.tier,
                "quantity": str(line.quantity),
                "unit": line.unit,
                "unit_price": str(line.unit_price),
                "amount": f"{line.amount:.2f}",
                "period_start": line.period_start.isoformat(),
                "period_end": line.period_end.isoformat(),
            }
            for line in quote.lines
        ],
    }
