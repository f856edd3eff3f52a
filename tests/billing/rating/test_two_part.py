"""Two-part tariffs: basic charge by capacity or demand, and the power-factor adjustment.

Numbers worked out by hand in the comments."""

from datetime import date
from decimal import Decimal

import pytest

from billing.rating import Usage, rate
from core.exceptions import ValidationError
from tests.billing.rating.tariffs import FUNDS, tariff, version

D = Decimal
INDUSTRY = {"flat": D("0.6000")}


def lines_of(quote, kind):
    return [(ln.quantity, ln.unit, ln.unit_price, ln.amount) for ln in quote.lines if ln.kind == kind]


def month_usage(kwh="50000", **kwargs):
    return Usage(date(2026, 3, 1), date(2026, 3, 31), {"flat": D(kwh)}, **kwargs)


def test_basic_charge_by_capacity():
    t = tariff(version(INDUSTRY, basic_basis="capacity", basic_price=D("25")))
    quote = rate(t, month_usage(capacity_kva=D("315")))
    # 315 kVA × 25 = 7875.00; 50000 × 0.6 = 30000.00
    assert lines_of(quote, "basic") == [(D("315"), "kVA", D("25.000000"), D("7875.00"))]
    assert quote.total == D("37875.00")


def test_basic_charge_by_capacity_for_parts_of_months():
    t = tariff(version(INDUSTRY, basic_basis="capacity", basic_price=D("25")))
    quote = rate(t, Usage(date(2026, 3, 15), date(2026, 4, 14), {"flat": D("0")}, capacity_kva=D("315")))
    assert lines_of(quote, "basic") == [
        # 15-31 March = 17 of 31 days: 25 × 17/31 = 13.709677; 315 × 13.709677 = 4318.548255
        (D("315"), "kVA", D("13.709677"), D("4318.55")),
        # 1-14 April = 14 of 30 days: 25 × 14/30 = 11.666667; 315 × 11.666667 = 3675.000105
        (D("315"), "kVA", D("11.666667"), D("3675.00")),
    ]
    assert quote.total == D("7993.55")


def test_basic_charge_by_maximum_demand():
    t = tariff(version(INDUSTRY, basic_basis="demand", basic_price=D("38")))
    quote = rate(t, month_usage(max_demand_kw=D("412.5")))
    # 412.5 kW × 38 = 15675.00; + 30000.00 energy
    assert lines_of(quote, "basic") == [(D("412.5"), "kW", D("38.000000"), D("15675.00"))]
    assert quote.total == D("45675.00")


def test_missing_demand_is_refused():
    t = tariff(version(INDUSTRY, basic_basis="demand", basic_price=D("38")))
    with pytest.raises(ValidationError) as err:
        rate(t, month_usage())
    assert "max_demand_kw" in err.value.field_errors


# Base for the PF cases: 315 kVA × 25 = 7875.00 basic + 10000 kWh × 0.6 = 6000.00 energy = 13875.00.
# kvarh 3287: cos φ = 10000 / √(10000² + 3287²) = 10000 / 10526.37 = 0.94999 -> 0.95
# kvarh 7500: 10000 / √(10000² + 7500²) = 10000 / 12500 = 0.80
# kvarh 13333.33: 10000 / 16666.66 = 0.6000001 -> 0.60
@pytest.mark.parametrize(
    ("standard", "kvarh", "pf", "percent", "adjustment"),
    [
        ("0.90", "3287", "0.95", "-0.75", "-104.06"),  # 13875 × -0.75% = -104.0625
        ("0.90", "7500", "0.80", "5.00", "693.75"),  # 13875 × 5% (0.5% for each 0.01 below 0.90)
        ("0.85", "3287", "0.95", "-1.10", "-152.63"),  # 13875 × -1.10% = -152.625 -> away from zero
        ("0.85", "7500", "0.80", "2.50", "346.88"),  # 13875 × 2.5% = 346.875
        ("0.80", "3287", "0.95", "-1.30", "-180.38"),  # 13875 × -1.30% = -180.375
        ("0.80", "13333.33", "0.60", "10.00", "1387.50"),  # 13875 × 10%
    ],
)
def test_power_factor_adjustment(standard, kvarh, pf, percent, adjustment):
    t = tariff(version(INDUSTRY, basic_basis="capacity", basic_price=D("25"), pf_standard=D(standard)))
    quote = rate(t, month_usage("10000", capacity_kva=D("315"), kvarh=D(kvarh)))
    assert quote.power_factor == D(pf)
    assert quote.pf_adjustment_percent == D(percent)
    # the line: percent × (base / 100) = percent × 138.75
    assert lines_of(quote, "power_factor") == [(D(percent), "%", D("138.750000"), D(adjustment))]
    assert quote.total == D("13875.00") + D(adjustment)


def test_power_factor_base_leaves_out_the_included_funds():
    v = version(
        INDUSTRY, basic_basis="capacity", basic_price=D("25"), pf_standard=D("0.90"), surcharges=FUNDS[1:3]
    )
    quote = rate(tariff(v), month_usage("10000", capacity_kva=D("315"), kvarh=D("7500")))
    # funds: 10000 × 0.019 = 190.00 and 10000 × 0.02 = 200.00, inside the 6000.00 energy charge
    # base = 7875.00 + 6000.00 - 390.00 = 13485.00; pf 0.80 against 0.90 -> +5% = 674.25
    assert lines_of(quote, "power_factor") == [(D("5.00"), "%", D("134.850000"), D("674.25"))]
    # total = 7875.00 + 6000.00 + 674.25; the fund lines are not added
    assert quote.total == D("14549.25")


def test_power_factor_needs_kvarh():
    t = tariff(version(INDUSTRY, basic_basis="capacity", basic_price=D("25"), pf_standard=D("0.90")))
    with pytest.raises(ValidationError) as err:
        rate(t, month_usage(capacity_kva=D("315")))
    assert "kvarh" in err.value.field_errors


def test_tou_prices_float_but_basic_and_pf_do_not():
    prices = {"peak": D("0.9800"), "flat": D("0.6500"), "valley": D("0.3200")}
    v = version(prices, basic_basis="demand", basic_price=D("38"), pf_standard=D("0.90"))
    usage = Usage(
        date(2026, 3, 1),
        date(2026, 3, 31),
        {"peak": D("3000"), "flat": D("4000"), "valley": D("3000")},
        kvarh=D("7500"),
        max_demand_kw=D("100"),
    )
    quote = rate(tariff(v), usage)
    # energy: 3000 × 0.98 = 2940.00, 4000 × 0.65 = 2600.00, 3000 × 0.32 = 960.00 -> 6500.00
    # basic: 100 kW × 38 = 3800.00 (one price, whatever the hour)
    # pf from the 10000 kWh total and 7500 kvarh = 0.80 -> +5% of (3800 + 6500) = 515.00
    assert lines_of(quote, "power_factor") == [(D("5.00"), "%", D("103.000000"), D("515.00"))]
    assert quote.total == D("10815.00")
