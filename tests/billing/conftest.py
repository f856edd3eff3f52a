"""Billing fixtures shared by the billing tests.

- ``tariff``: RES-TOU, a residential tariff with annual blocks (2160 / 4200 kWh, +0.05 / +0.30)
  and two time-of-use bands (peak 08:00-22:00 at 0.60, valley 22:00-08:00 at 0.30, flat 0.56
  for a single register), with one fund included in the price (0.0062 yuan/kWh), from 2020-01-01.
- ``cost_control_policy``: DEFAULT, for every category: warnings at 50 / 20 yuan, trip below 0,
  close above 10, credit allowance 30.
- ``prepaid_account``: a prepaid residential account in 青溪 (qx_s1) on RES-TOU, with its
  billing state (balance 0).
- ``post_entry``: posts a ledger entry through ``ledger_post`` with a fresh idempotency key.
"""

import itertools
from datetime import date, time
from decimal import Decimal

import pytest

from billing.models import (
    AccountBilling,
    CostControlPolicy,
    EntryKind,
    EntrySource,
    Tariff,
    TariffSurcharge,
    TariffTier,
    TariffVersion,
    TouPeriod,
)

_keys = itertools.count(1)


@pytest.fixture
def tariff(db):
    tariff = Tariff.objects.create(code="RES-TOU", name="居民阶梯分时电价", category="residential")
    version = TariffVersion.objects.create(
        tariff=tariff,
        effective_from=date(2020, 1, 1),
        price_flat=Decimal("0.560000"),
        price_peak=Decimal("0.600000"),
        price_valley=Decimal("0.300000"),
        tier_basis="annual",
    )
    TariffTier.objects.create(version=version, number=1, upper_kwh=Decimal("2160"), price_adder=Decimal("0"))
    TariffTier.objects.create(
        version=version, number=2, upper_kwh=Decimal("4200"), price_adder=Decimal("0.05")
    )
    TariffTier.objects.create(version=version, number=3, upper_kwh=None, price_adder=Decimal("0.30"))
    TariffSurcharge.objects.create(
        version=version,
        code="reservoir",
        name="大中型水库移民后期扶持资金",
        price_per_kwh=Decimal("0.006200"),
    )
    TouPeriod.objects.create(version=version, start=time(8, 0), end=time(22, 0), band="peak")
    TouPeriod.objects.create(version=version, start=time(22, 0), end=time(8, 0), band="valley")
    return tariff


@pytest.fixture
def cost_control_policy(db):
    return CostControlPolicy.objects.create(
        code="DEFAULT",
        name="默认费控策略",
        warning1_threshold=Decimal("50.00"),
        warning2_threshold=Decimal("20.00"),
        trip_threshold=Decimal("0.00"),
        close_threshold=Decimal("10.00"),
        credit_allowance=Decimal("30.00"),
    )


@pytest.fixture
def prepaid_account(make_customer, tariff, cost_control_policy):
    from billing.services.accounts import tariff_assign
    from billing.services.ledger import billing_states_ensure

    customer = make_customer("qx_s1", name="王五", settlement_mode="prepaid")
    account = customer.accounts.get()
    tariff_assign(account=account, tariff=tariff, effective_from=account.opened_on)
    billing_states_ensure([account.pk])
    assert AccountBilling.objects.filter(pk=account.pk).exists()
    return account


@pytest.fixture
def post_entry(db):
    from billing.services.ledger import ledger_post

    def post(account, kind, amount, *, business_date=None, description="", source=None, **extra):
        kind = EntryKind(kind)
        if source is None:
            source = {
                EntryKind.PAYMENT: EntrySource.PAYMENT,
                EntryKind.ENERGY_CHARGE: EntrySource.READING,
            }.get(kind, EntrySource.STAFF)
        return ledger_post(
            account_id=account.pk,
            kind=kind,
            amount=Decimal(amount),
            source=source,
            idempotency_key=f"test:{next(_keys)}",
            description=description or kind.label,
            business_date=business_date,
            **extra,
        ).entry

    return post
