"""Energy charges: flat, TOU, blocks (monthly, annual, prorated), funds, a price change.

Every expected number is worked out by hand in the comment next to it; amounts are rounded
half-up to the fen per line."""

from datetime import date
from decimal import Decimal

import pytest

from billing.rating import (
    PriceVersion,
    Usage,
    prorated_tier_limits,
    quote_to_dict,
    rate,
    rate_energy_day,
)
from tests.billing.rating.tariffs import (
    ANNUAL_BLOCKS,
    COMMERCIAL_PERIODS,
    COMMERCIAL_PRICES,
    FUNDS,
    MONTHLY_BLOCKS,
    tariff,
    version,
)

D = Decimal


def energy_lines(quote):
    return [
        (ln.band, ln.tier, ln.quantity, ln.unit_price, ln.amount) for ln in quote.lines if ln.kind == "energy"
    ]


def march(kwh, **kwargs):
    return Usage(period_start=date(2026, 3, 1), period_end=date(2026, 3, 31), kwh=kwh, **kwargs)


def test_flat_price():
    quote = rate(tariff(version()), march({"flat": D("156.78")}))
    # 156.78 × 0.5283 = 78.39 + 4.436874 = 82.826874 -> 82.83
    assert energy_lines(quote) == [("flat", None, D("156.78"), D("0.528300"), D("82.83"))]
    assert quote.total == D("82.83")
    assert quote.power_factor is None


def test_total_register_is_billed_as_flat():
    quote = rate(tariff(version()), march({"total": D("156.78")}))
    assert energy_lines(quote) == [("flat", None, D("156.78"), D("0.528300"), D("82.83"))]


def test_tou_four_bands():
    t = tariff(version(COMMERCIAL_PRICES), periods=COMMERCIAL_PERIODS)
    quote = rate(
        t, march({"sharp": D("123.45"), "peak": D("456.78"), "flat": D("500.01"), "valley": D("300.50")})
    )
    assert energy_lines(quote) == [
        ("sharp", None, D("123.45"), D("1.200000"), D("148.14")),  # 123.45 × 1.2 = 148.14
        ("peak", None, D("456.78"), D("0.980000"), D("447.64")),  # 456.78 × 0.98 = 447.6444
        ("flat", None, D("500.01"), D("0.650000"), D("325.01")),  # 500.01 × 0.65 = 325.0065 -> .01
        ("valley", None, D("300.50"), D("0.320000"), D("96.16")),  # 300.5 × 0.32 = 96.16
    ]
    # 148.14 + 447.64 + 325.01 + 96.16
    assert quote.total == D("1016.95")


def test_monthly_blocks_one_month():
    t = tariff(version({"flat": D("0.5600")}, tier_basis="monthly", tiers=MONTHLY_BLOCKS))
    quote = rate(t, march({"flat": D("400")}))
    assert energy_lines(quote) == [
        ("flat", 1, D("180.00"), D("0.560000"), D("100.80")),  # 180 × 0.56
        ("flat", 2, D("170.00"), D("0.610000"), D("103.70")),  # (350 - 180) × (0.56 + 0.05)
        ("flat", 3, D("50.00"), D("0.860000"), D("43.00")),  # (400 - 350) × (0.56 + 0.30)
    ]
    assert quote.total == D("247.50")
    assert quote.tier_kwh_after == D("400.00")


def test_monthly_blocks_restart_each_calendar_month():
    t = tariff(version({"flat": D("0.5600")}, tier_basis="monthly", tiers=MONTHLY_BLOCKS))
    usage = Usage(date(2026, 1, 16), date(2026, 2, 15), {"flat": D("310")}, tier_kwh_used=D("100"))
    quote = rate(t, usage)
    # 31 days: 16 in January, 15 in February -> 310 × 16/31 = 160.00 and 150.00 kWh
    # January starts at 100 already used: 80 kWh to 180 in block 1, then 80 kWh in block 2
    # February starts again at 0: 150 kWh in block 1
    assert energy_lines(quote) == [
        ("flat", 1, D("80.00"), D("0.560000"), D("44.80")),
        ("flat", 2, D("80.00"), D("0.610000"), D("48.80")),
        ("flat", 1, D("150.00"), D("0.560000"), D("84.00")),
    ]
    assert quote.total == D("177.60")
    assert quote.tier_kwh_after == D("150.00")


def test_annual_blocks_crossing_1_to_2_and_2_to_3():
    t = tariff(version(tier_basis="annual", tiers=ANNUAL_BLOCKS))
    usage = Usage(date(2026, 6, 1), date(2026, 6, 30), {"flat": D("2500")}, tier_kwh_used=D("2000"))
    quote = rate(t, usage)
    # the year's kWh go from 2000 to 4500
    assert energy_lines(quote) == [
        ("flat", 1, D("160.00"), D("0.528300"), D("84.53")),  # 160 × 0.5283 = 84.528
        ("flat", 2, D("2040.00"), D("0.578300"), D("1179.73")),  # 2040 × 0.5783 = 1179.732
        ("flat", 3, D("300.00"), D("0.828300"), D("248.49")),  # 300 × 0.8283 = 248.49
    ]
    assert quote.total == D("1512.75")
    assert quote.tier_kwh_after == D("4500.00")


def test_annual_block_bounds_prorated_for_part_years():
    v = version(tier_basis="annual", tiers=ANNUAL_BLOCKS)
    # opened 1 July 2026: 184 days of 365; 2160 × 184/365 = 1088.88 -> 1089, 4200 × 184/365 = 2117.26 -> 2117
    assert prorated_tier_limits(v, 2026, date(2026, 7, 1), None) == (D("1089"), D("2117"), None)
    # closed 31 March 2026: 31 + 28 + 31 = 90 days;
    # 2160 × 90/365 = 532.60 -> 533; 4200 × 90/365 = 1035.62 -> 1036
    assert prorated_tier_limits(v, 2026, None, date(2026, 3, 31)) == (D("533"), D("1036"), None)
    # active the whole year: unchanged
    assert prorated_tier_limits(v, 2026, date(2025, 3, 1), None) == (D("2160"), D("4200"), None)


def test_annual_blocks_for_an_account_opened_mid_year():
    t = tariff(version(tier_basis="annual", tiers=ANNUAL_BLOCKS))
    usage = Usage(
        date(2026, 12, 1),
        date(2026, 12, 31),
        {"flat": D("1200")},
        tier_kwh_used=D("1000"),
        active_from=date(2026, 7, 1),
    )
    quote = rate(t, usage)
    # prorated bounds 1089 / 2117; the year's kWh go from 1000 to 2200
    assert energy_lines(quote) == [
        ("flat", 1, D("89.00"), D("0.528300"), D("47.02")),  # 89 × 0.5283 = 47.0187
        ("flat", 2, D("1028.00"), D("0.578300"), D("594.49")),  # 1028 × 0.5783 = 594.4924
        ("flat", 3, D("83.00"), D("0.828300"), D("68.75")),  # 83 × 0.8283 = 68.7489
    ]
    assert quote.total == D("710.26")


RESIDENTIAL_TOU = {"peak": D("0.5683"), "valley": D("0.2883")}


def test_residential_tou_with_annual_blocks():
    t = tariff(version(RESIDENTIAL_TOU, tier_basis="annual", tiers=ANNUAL_BLOCKS))
    quote = rate(t, march({"peak": D("300"), "valley": D("200")}, tier_kwh_used=D("1960")))
    # 500 kWh from 1960 to 2460: 200 in block 1, 300 in block 2.
    # Block 2 shared in proportion: peak 300 × 300/500 = 180, valley 300 × 200/500 = 120;
    # block 1 takes the rest: peak 120, valley 80.
    assert energy_lines(quote) == [
        ("peak", 1, D("120.00"), D("0.568300"), D("68.20")),  # 120 × 0.5683 = 68.196
        ("peak", 2, D("180.00"), D("0.618300"), D("111.29")),  # 180 × 0.6183 = 111.294
        ("valley", 1, D("80.00"), D("0.288300"), D("23.06")),  # 80 × 0.2883 = 23.064
        ("valley", 2, D("120.00"), D("0.338300"), D("40.60")),  # 120 × 0.3383 = 40.596
    ]
    assert quote.total == D("243.15")


def test_residential_tou_block_share_rounding():
    t = tariff(version(RESIDENTIAL_TOU, tier_basis="annual", tiers=ANNUAL_BLOCKS))
    quote = rate(t, march({"peak": D("30.21"), "valley": D("20.10")}, tier_kwh_used=D("2150")))
    # 50.31 kWh from 2150: 10 in block 1, 40.31 in block 2.
    # Block 2 exact shares: peak 40.31 × 30.21/50.31 = 24.2052..., valley 16.1047...
    # floors 24.20 + 16.10 = 40.30; the last fen goes to the larger remainder (peak) -> 24.21 / 16.10
    assert energy_lines(quote) == [
        ("peak", 1, D("6.00"), D("0.568300"), D("3.41")),  # 6 × 0.5683 = 3.4098
        ("peak", 2, D("24.21"), D("0.618300"), D("14.97")),  # 24.21 × 0.6183 = 14.968743
        ("valley", 1, D("4.00"), D("0.288300"), D("1.15")),  # 4 × 0.2883 = 1.1532
        ("valley", 2, D("16.10"), D("0.338300"), D("5.45")),  # 16.10 × 0.3383 = 5.44663
    ]
    assert quote.total == D("24.98")
    assert quote.tier_kwh_after == D("2200.31")


def test_funds_are_itemised_inside_the_energy_charge_not_added():
    t = tariff(version(surcharges=FUNDS))
    quote = rate(t, march({"flat": D("200")}))
    funds = [
        (ln.description, ln.quantity, ln.unit_price, ln.amount) for ln in quote.lines if ln.kind != "energy"
    ]
    assert [f[1:] for f in funds] == [
        (D("200.00"), D("0.004000"), D("0.80")),  # 200 × 0.004
        (D("200.00"), D("0.019000"), D("3.80")),  # 200 × 0.019
        (D("200.00"), D("0.020000"), D("4.00")),  # 200 × 0.02
        (D("200.00"), D("0.006200"), D("1.24")),  # 200 × 0.0062
    ]
    assert "可再生能源电价附加" in funds[1][0]
    # total is the energy charge alone: 200 × 0.5283 = 105.66
    assert quote.total == D("105.66")


def test_price_change_inside_the_period_splits_it_by_days():
    old = version(
        effective_to=date(2026, 7, 1), basic_basis="capacity", basic_price=D("25")
    )  # flat 0.5283, 25 yuan/kVA-month
    new = version(
        {"flat": D("0.5483")}, effective_from=date(2026, 7, 1), basic_basis="capacity", basic_price=D("30")
    )
    usage = Usage(date(2026, 6, 16), date(2026, 7, 15), {"flat": D("301.01")}, capacity_kva=D("100"))
    quote = rate(tariff(old, new), usage)
    # 30 days, 15 under each price: 301.01 × 15/30 = 150.505 -> 150.51;
    # the last share takes the rest: 301.01 - 150.51 = 150.50
    assert energy_lines(quote) == [
        ("flat", None, D("150.51"), D("0.528300"), D("79.51")),  # 150.51 × 0.5283 = 79.514433
        ("flat", None, D("150.50"), D("0.548300"), D("82.52")),  # 150.50 × 0.5483 = 82.51915
    ]
    basic = [
        (ln.quantity, ln.unit_price, ln.amount, ln.period_start) for ln in quote.lines if ln.kind == "basic"
    ]
    assert basic == [
        # June 16-30: 15 of 30 days; 25 × 15/30 = 12.5 -> 100 × 12.5
        (D("100"), D("12.500000"), D("1250.00"), date(2026, 6, 16)),
        # July 1-15: 15 of 31 days; 30 × 15/31 = 14.516129; 100 × 14.516129 = 1451.6129
        (D("100"), D("14.516129"), D("1451.61"), date(2026, 7, 1)),
    ]
    # 79.51 + 82.52 + 1250.00 + 1451.61
    assert quote.total == D("2863.64")


def test_no_price_in_force_is_refused():
    from core.exceptions import ValidationError

    v = version(effective_from=date(2026, 4, 1))
    with pytest.raises(ValidationError):
        rate(tariff(v), march({"flat": D("1")}))


def test_quote_to_dict_is_json_ready(english):  # descriptions are in the active language
    data = quote_to_dict(rate(tariff(version()), march({"flat": D("156.78")})))
    assert data["total"] == "82.83"
    assert data["lines"][0] == {
        "kind": "energy",
        "description": "Energy, flat",
        "band": "flat",
        "tier": None,
        "quantity": "156.78",
        "unit": "kWh",
        "unit_price": "0.528300",
        "amount": "82.83",
        "period_start": "2026-03-01",
        "period_end": "2026-03-31",
    }


# ---------------------------------------------------------------- rate_energy_day


def test_rate_energy_day_flat():
    # 3.21 × 0.5283 = 1.695843 -> 1.70
    assert rate_energy_day(version(), {"flat": D("3.21")}, D("0"), ()) == (D("1.70"), D("3.21"))


def test_rate_energy_day_negative_flat():
    # a true-up of -3.21 kWh: -1.695843 -> -1.70 (half-up rounds away from zero)
    assert rate_energy_day(version(), {"flat": D("-3.21")}, D("10"), ()) == (D("-1.70"), D("6.79"))


def test_rate_energy_day_negative_undoes_from_the_top_block():
    v = version(tier_basis="annual", tiers=ANNUAL_BLOCKS)
    amount, after = rate_energy_day(v, {"flat": D("-100")}, D("2200"), v.tier_limits)
    # undo 2100..2200: 40 kWh of block 2 (40 × 0.5783 = 23.132 -> 23.13) and 60 of block 1
    # (60 × 0.5283 = 31.698 -> 31.70): -(23.13 + 31.70)
    assert (amount, after) == (D("-54.83"), D("2100"))
    # and adding the 100 kWh back gives the same amount with the opposite sign
    assert rate_energy_day(v, {"flat": D("100")}, D("2100"), v.tier_limits) == (D("54.83"), D("2200.00"))


def test_rate_energy_day_with_prorated_limits():
    v = version(tier_basis="annual", tiers=ANNUAL_BLOCKS)
    # bounds 1089 / 2117 (opened 1 July); 10 kWh from 1085: 4 in block 1 (2.1132 -> 2.11), 6 in block 2
    # (6 × 0.5783 = 3.4698 -> 3.47)
    assert rate_energy_day(v, {"flat": D("10")}, D("1085"), (D("1089"), D("2117"), None)) == (
        D("5.58"),
        D("1095.00"),
    )


@pytest.mark.parametrize(
    ("prices", "blocks", "kwh", "used"),
    [
        ({"flat": D("0.5283")}, None, {"flat": D("3.21")}, D("0")),
        ({"flat": D("0.5283")}, ANNUAL_BLOCKS, {"flat": D("50")}, D("2150")),
        (RESIDENTIAL_TOU, ANNUAL_BLOCKS, {"peak": D("30.21"), "valley": D("20.10")}, D("2150")),
        (
            COMMERCIAL_PRICES,
            None,
            {"sharp": D("1.5"), "peak": D("7.25"), "flat": D("3"), "valley": D("9.99")},
            D("0"),
        ),
        (RESIDENTIAL_TOU, MONTHLY_BLOCKS, {"peak": D("250"), "valley": D("190.55")}, D("170")),
    ],
)
def test_rate_energy_day_matches_the_energy_lines_of_rate(prices, blocks, kwh, used):
    basis = "none" if blocks is None else ("annual" if blocks is ANNUAL_BLOCKS else "monthly")
    v: PriceVersion = version(prices, tier_basis=basis, tiers=blocks or ())
    day = date(2026, 5, 20)
    quote = rate(tariff(v), Usage(day, day, kwh, tier_kwh_used=used))
    lines_sum = sum(ln.amount for ln in quote.lines if ln.kind == "energy")
    assert rate_energy_day(v, kwh, used, v.tier_limits) == (lines_sum, quote.tier_kwh_after)


def test_shares_over_many_pieces_add_up_and_are_never_negative():
    t = tariff(version({"flat": D("0.5600")}, tier_basis="monthly", tiers=MONTHLY_BLOCKS))
    # 1 January - 31 May 2026 = 151 days in five months; 0.03 kWh shared by days.
    # Running totals rounded at each month end: Jan 0.03 × 31/151 = 0.006 -> 0.01;
    # Feb 0.03 × 59/151 = 0.0117 -> 0.01; Mar 0.03 × 90/151 = 0.0179 -> 0.02;
    # Apr 0.03 × 120/151 = 0.0238 -> 0.02; May takes the rest 0.03.
    # Shares: 0.01, 0.00, 0.01, 0.00, 0.01 (rounding each share alone would give 0.01 × 4 and -0.01)
    quote = rate(t, Usage(date(2026, 1, 1), date(2026, 5, 31), {"flat": D("0.03")}))
    assert [(ln.quantity, ln.period_start.month) for ln in quote.lines] == [
        (D("0.01"), 1),
        (D("0.01"), 3),
        (D("0.01"), 5),
    ]
    # 0.01 × 0.56 = 0.0056 -> 0.01 each
    assert quote.total == D("0.03")
