"""Every row of the 1983 power-factor table ((83)水电财字第215号), against the rules written out
independently here, plus the rule below the last printed row."""

from decimal import Decimal

import pytest

from billing.rating import DEFAULT_POWER_FACTOR_TABLE, POWER_FACTOR_ROWS, PowerFactorTable, power_factor

D = Decimal


def expected_percent(standard: str, pf: Decimal) -> Decimal:
    """The rules in words, in whole hundredths of power factor (x = pf × 100).

    0.90: 95..100 reduce 0.75; 90..94 reduce 0.15 per step above 90; 70..89 add 0.5 per step
          below 90; 65..69 add 10 + 1 per step below 70; below 65 add 15 + 2 per step below 65.
    0.85: 94..100 reduce 1.10; 90..93 reduce 0.50 + 0.15 per step above 90; 85..89 reduce 0.10
          per step above 85; 65..84 add 0.5 per step below 85; 60..64 add 10 + 1 per step
          below 65; below 60 add 15 + 2 per step below 60.
    0.80: 92..100 reduce 1.30; 90..91 reduce 1.00 + 0.15 per step above 90; 80..89 reduce 0.10
          per step above 80; 60..79 add 0.5 per step below 80; 55..59 add 10 + 1 per step
          below 60; below 55 add 15 + 2 per step below 55.
    """
    x = int(pf * 100)
    if standard == "0.90":
        bands = [
            (95, lambda x: D("-0.75")),
            (90, lambda x: D("-0.15") * (x - 90)),
            (70, lambda x: D("0.5") * (90 - x)),
        ]
        bands += [(65, lambda x: 10 + (70 - x)), (0, lambda x: 15 + 2 * (65 - x))]
    elif standard == "0.85":
        bands = [(94, lambda x: D("-1.10")), (90, lambda x: D("-0.50") - D("0.15") * (x - 90))]
        bands += [(85, lambda x: D("-0.10") * (x - 85)), (65, lambda x: D("0.5") * (85 - x))]
        bands += [(60, lambda x: 10 + (65 - x)), (0, lambda x: 15 + 2 * (60 - x))]
    else:
        bands = [(92, lambda x: D("-1.30")), (90, lambda x: D("-1.00") - D("0.15") * (x - 90))]
        bands += [(80, lambda x: D("-0.10") * (x - 80)), (60, lambda x: D("0.5") * (80 - x))]
        bands += [(55, lambda x: 10 + (60 - x)), (0, lambda x: 15 + 2 * (55 - x))]
    for floor, rule in bands:
        if x >= floor:
            return D(rule(x))
    raise AssertionError("unreachable")


@pytest.mark.parametrize(("standard", "pf", "percent"), POWER_FACTOR_ROWS, ids=lambda v: str(v))
def test_every_row_of_the_table(standard, pf, percent):
    assert percent == expected_percent(str(standard), pf)
    assert DEFAULT_POWER_FACTOR_TABLE.percent(standard, pf) == percent


def test_the_table_is_complete():
    # each standard printed from 1.00 down to 0.65 / 0.60 / 0.55, every 0.01: 36 + 41 + 46 rows
    by_standard = {}
    for standard, pf, _percent in POWER_FACTOR_ROWS:
        by_standard.setdefault(str(standard), []).append(int(pf * 100))
    assert sorted(by_standard["0.90"]) == list(range(65, 101))
    assert sorted(by_standard["0.85"]) == list(range(60, 101))
    assert sorted(by_standard["0.80"]) == list(range(55, 101))
    assert len(POWER_FACTOR_ROWS) == 123


@pytest.mark.parametrize(
    ("standard", "pf", "percent"),
    [
        # published lookup (查对表): 0.90 -> 0.64 +17, 0.60 +25, 0.59 +27, 0.30 +85
        ("0.90", "0.64", "17"),
        ("0.90", "0.60", "25"),
        ("0.90", "0.59", "27"),
        ("0.90", "0.30", "85"),
        # 0.85 -> 0.59 +17, 0.30 +75 (15 + 2 × 30)
        ("0.85", "0.59", "17"),
        ("0.85", "0.30", "75"),
        # 0.80 -> 0.54 +17, 0.30 +65 (15 + 2 × 25)
        ("0.80", "0.54", "17"),
        ("0.80", "0.30", "65"),
        ("0.90", "0.00", "145"),  # 15 + 2 × 65
    ],
)
def test_below_the_last_printed_row(standard, pf, percent):
    assert DEFAULT_POWER_FACTOR_TABLE.percent(D(standard), D(pf)) == D(percent)
    assert expected_percent(standard, D(pf)) == D(percent)


def test_table_built_from_database_rows():
    # the billing app stores rows as strings/decimals and passes its own below-table steps
    rows = [("0.90", "0.90", "0.00"), ("0.90", "0.89", "0.50"), ("0.90", "0.88", "1.00")]
    table = PowerFactorTable.from_rows(rows, {D("0.90"): D("2")})
    assert table.percent(D("0.90"), D("0.89")) == D("0.50")
    assert table.percent(D("0.90"), D("0.85")) == D("7.00")  # 1.00 + 2 × 3


@pytest.mark.parametrize(
    ("kwh", "kvarh", "pf"),
    [
        ("10000", "4843", "0.90"),  # 10000 / √(10000² + 4843²) = 10000 / 11111.1 = 0.90000
        ("10000", "4860", "0.90"),  # 0.899397 -> 0.90
        ("10000", "4900", "0.90"),  # 0.898027 -> 0.90
        ("10000", "4950", "0.90"),  # 0.896189 -> 0.90
        ("10000", "4983", "0.90"),  # 10000 / √124830289 = 10000 / 11172.75 = 0.895034 -> 0.90
        ("10000", "4985", "0.89"),  # 10000 / √124850225 = 10000 / 11173.64 = 0.894963 -> 0.89
        ("10000", "5000", "0.89"),  # 10000 / 11180.34 = 0.894427 -> 0.89
        ("300", "400", "0.60"),  # 3-4-5 triangle
        ("0", "10", "0.00"),
        ("10", "0", "1.00"),
    ],
)
def test_power_factor_rounding(kwh, kvarh, pf):
    assert power_factor(D(kwh), D(kvarh)) == D(pf)


def test_no_power_factor_without_energy():
    assert power_factor(D("0"), D("0")) is None
