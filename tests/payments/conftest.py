"""Prepaid accounts on remote cost-control meters (the billing fixtures), for payments."""

from tests.billing.services.conftest import flat_tariff, make_prepaid, policy  # noqa: F401  (fixtures)
