"""Power-factor adjustment (功率因数调整电费), after the 1983 rules.

Source: 《功率因数调整电费办法》, (83)水电财字第215号, issued by the then Ministry of Water
Resources and Electric Power and the State Price Bureau on 2 December 1983. The table below is
the printed 功率因数调整电费表: for each standard (0.90 / 0.85 / 0.80) the percentage by which the
month's basic + energy charge is reduced (negative) or increased (positive) for an actual
power factor rounded to two places. Below the last printed row each further 0.01 adds
``POWER_FACTOR_BELOW_TABLE_STEPS[standard]`` percent (2 % for all three standards).

The rows were checked against the published lookup table reproduced at
http://wgbc.cn/zxjs/205.html (e.g. standard 0.90: 0.94 -> -0.6, 0.64 -> +17, 0.30 -> +85).
The constants are data: the billing app loads them into a database table and builds a
:class:`PowerFactorTable` with :meth:`PowerFactorTable.from_rows`.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from core.money import ROUNDING

PF_STEP = Decimal("0.01")
STANDARDS = (Decimal("0.90"), Decimal("0.85"), Decimal("0.80"))

# (standard, power factor, adjustment percent): + is a surcharge, - a reduction.
_PRINTED_ROWS = [
    # standard 0.90: printed rows 1.00 .. 0.65
    ("0.90", "1.00", "-0.75"),
    ("0.90", "0.99", "-0.75"),
    ("0.90", "0.98", "-0.75"),
    ("0.90", "0.97", "-0.75"),
    ("0.90", "0.96", "-0.75"),
    ("0.90", "0.95", "-0.75"),
    ("0.90", "0.94", "-0.60"),
    ("0.90", "0.93", "-0.45"),
    ("0.90", "0.92", "-0.30"),
    ("0.90", "0.91", "-0.15"),
    ("0.90", "0.90", "0.00"),
    ("0.90", "0.89", "0.50"),
    ("0.90", "0.88", "1.00"),
    ("0.90", "0.87", "1.50"),
    ("0.90", "0.86", "2.00"),
    ("0.90", "0.85", "2.50"),
    ("0.90", "0.84", "3.00"),
    ("0.90", "0.83", "3.50"),
    ("0.90", "0.82", "4.00"),
    ("0.90", "0.81", "4.50"),
    ("0.90", "0.80", "5.00"),
    ("0.90", "0.79", "5.50"),
    ("0.90", "0.78", "6.00"),
    ("0.90", "0.77", "6.50"),
    ("0.90", "0.76", "7.00"),
    ("0.90", "0.75", "7.50"),
    ("0.90", "0.74", "8.00"),
    ("0.90", "0.73", "8.50"),
    ("0.90", "0.72", "9.00"),
    ("0.90", "0.71", "9.50"),
    ("0.90", "0.70", "10.00"),
    ("0.90", "0.69", "11.00"),
    ("0.90", "0.68", "12.00"),
    ("0.90", "0.67", "13.00"),
    ("0.90", "0.66", "14.00"),
    ("0.90", "0.65", "15.00"),
    # standard 0.85: printed rows 1.00 .. 0.60
    ("0.85", "1.00", "-1.10"),
    ("0.85", "0.99", "-1.10"),
    ("0.85", "0.98", "-1.10"),
    ("0.85", "0.97", "-1.10"),
    ("0.85", "0.96", "-1.10"),
    ("0.85", "0.95", "-1.10"),
    ("0.85", "0.94", "-1.10"),
    ("0.85", "0.93", "-0.95"),
    ("0.85", "0.92", "-0.80"),
    ("0.85", "0.91", "-0.65"),
    ("0.85", "0.90", "-0.50"),
    ("0.85", "0.89", "-0.40"),
    ("0.85", "0.88", "-0.30"),
    ("0.85", "0.87", "-0.20"),
    ("0.85", "0.86", "-0.10"),
    ("0.85", "0.85", "0.00"),
    ("0.85", "0.84", "0.50"),
    ("0.85", "0.83", "1.00"),
    ("0.85", "0.82", "1.50"),
    ("0.85", "0.81", "2.00"),
    ("0.85", "0.80", "2.50"),
    ("0.85", "0.79", "3.00"),
    ("0.85", "0.78", "3.50"),
    ("0.85", "0.77", "4.00"),
    ("0.85", "0.76", "4.50"),
    ("0.85", "0.75", "5.00"),
    ("0.85", "0.74", "5.50"),
    ("0.85", "0.73", "6.00"),
    ("0.85", "0.72", "6.50"),
    ("0.85", "0.71", "7.00"),
    ("0.85", "0.70", "7.50"),
    ("0.85", "0.69", "8.00"),
    ("0.85", "0.68", "8.50"),
    ("0.85", "0.67", "9.00"),
    ("0.85", "0.66", "9.50"),
    ("0.85", "0.65", "10.00"),
    ("0.85", "0.64", "11.00"),
    ("0.85", "0.63", "12.00"),
    ("0.85", "0.62", "13.00"),
    ("0.85", "0.61", "14.00"),
    ("0.85", "0.60", "15.00"),
    # standard 0.80: printed rows 1.00 .. 0.55
    ("0.80", "1.00", "-1.30"),
    ("0.80", "0.99", "-1.30"),
    ("0.80", "0.98", "-1.30"),
    ("0.80", "0.97", "-1.30"),
    ("0.80", "0.96", "-1.30"),
    ("0.80", "0.95", "-1.30"),
    ("0.80", "0.94", "-1.30"),
    ("0.80", "0.93", "-1.30"),
    ("0.80", "0.92", "-1.30"),
    ("0.80", "0.91", "-1.15"),
    ("0.80", "0.90", "-1.00"),
    ("0.80", "0.89", "-0.90"),
    ("0.80", "0.88", "-0.80"),
    ("0.80", "0.87", "-0.70"),
    ("0.80", "0.86", "-0.60"),
    ("0.80", "0.85", "-0.50"),
    ("0.80", "0.84", "-0.40"),
    ("0.80", "0.83", "-0.30"),
    ("0.80", "0.82", "-0.20"),
    ("0.80", "0.81", "-0.10"),
    ("0.80", "0.80", "0.00"),
    ("0.80", "0.79", "0.50"),
    ("0.80", "0.78", "1.00"),
    ("0.80", "0.77", "1.50"),
    ("0.80", "0.76", "2.00"),
    ("0.80", "0.75", "2.50"),
    ("0.80", "0.74", "3.00"),
    ("0.80", "0.73", "3.50"),
    ("0.80", "0.72", "4.00"),
    ("0.80", "0.71", "4.50"),
    ("0.80", "0.70", "5.00"),
    ("0.80", "0.69", "5.50"),
    ("0.80", "0.68", "6.00"),
    ("0.80", "0.67", "6.50"),
    ("0.80", "0.66", "7.00"),
    ("0.80", "0.65", "7.50"),
    ("0.80", "0.64", "8.00"),
    ("0.80", "0.63", "8.50"),
    ("0.80", "0.62", "9.00"),
    ("0.80", "0.61", "9.50"),
    ("0.80", "0.60", "10.00"),
    ("0.80", "0.59", "11.00"),
    ("0.80", "0.58", "12.00"),
    ("0.80", "0.57", "13.00"),
    ("0.80", "0.56", "14.00"),
    ("0.80", "0.55", "15.00"),
]

POWER_FACTOR_ROWS: list[tuple[Decimal, Decimal, Decimal]] = [
    (Decimal(s), Decimal(pf), Decimal(pct)) for s, pf, pct in _PRINTED_ROWS
]

# Below the last printed row of a standard, each further 0.01 adds this many percent.
POWER_FACTOR_BELOW_TABLE_STEPS: dict[Decimal, Decimal] = {
    Decimal("0.90"): Decimal("2"),  # 0.64 and below
    Decimal("0.85"): Decimal("2"),  # 0.59 and below
    Decimal("0.80"): Decimal("2"),  # 0.54 and below
}


def power_factor(kwh: Decimal, kvarh: Decimal) -> Decimal | None:
    """cos φ = kWh / √(kWh² + kvarh²), rounded half-up to two places; None when both are zero."""
    kwh = abs(kwh)
    kvarh = abs(kvarh)
    if kwh == 0 and kvarh == 0:
        return None
    return (kwh / (kwh * kwh + kvarh * kvarh).sqrt()).quantize(PF_STEP, rounding=ROUNDING)


@dataclass(frozen=True)
class PowerFactorTable:
    """Adjustment percent by (standard, power factor), plus the below-table rule per standard."""

    percents: Mapping[tuple[Decimal, Decimal], Decimal]
    # standard -> (lowest printed power factor, its percent, percent added per further 0.01)
    below_table: Mapping[Decimal, tuple[Decimal, Decimal, Decimal]]

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[tuple[Decimal, Decimal, Decimal]],
        below_table_steps: Mapping[Decimal, Decimal] | None = None,
    ) -> "PowerFactorTable":
        if below_table_steps is None:
            below_table_steps = POWER_FACTOR_BELOW_TABLE_STEPS
        percents: dict[tuple[Decimal, Decimal], Decimal] = {}
        lowest: dict[Decimal, Decimal] = {}
        for standard, pf, percent in rows:
            standard, pf, percent = Decimal(standard), Decimal(pf), Decimal(percent)
            percents[(standard, pf)] = percent
            if standard not in lowest or pf < lowest[standard]:
                lowest[standard] = pf
        below = {
            standard: (low, percents[(standard, low)], Decimal(below_table_steps.get(standard, 0)))
            for standard, low in lowest.items()
        }
        return cls(percents=percents, below_table=below)

    def standards(self) -> tuple[Decimal, ...]:
        return tuple(sorted(self.below_table, reverse=True))

    def percent(self, standard: Decimal, pf: Decimal) -> Decimal:
        """Adjustment percent for a power factor already rounded to two places."""
        if standard not in self.below_table:
            raise KeyError(f"no power-factor table for standard {standard}")
        found = self.percents.get((standard, pf))
        if found is not None:
            return found
        low, low_percent, step = self.below_table[standard]
        if pf < low:
            return low_percent + step * ((low - pf) / PF_STEP)
        raise KeyError(f"power factor {pf} is not in the table for standard {standard}")


DEFAULT_POWER_FACTOR_TABLE = PowerFactorTable.from_rows(POWER_FACTOR_ROWS)
