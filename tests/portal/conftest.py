"""Portal fixtures: prepaid accounts (the billing fixtures) and portal users bound to them.

``make_portal_user`` builds the rows directly, for tests of what a signed-in customer sees;
the sign-up flow itself is tested through its service and pages (test_auth*.py)."""

import itertools

import pytest
from django.contrib.auth import get_user_model

from portal.models import AccountBinding, PortalProfile
from tests.billing.services.conftest import flat_tariff, make_prepaid, policy, tier_tariff  # noqa: F401

PORTAL_PASSWORD = "Kw-portal-pw-2026"
_phones = itertools.count(1)


@pytest.fixture
def make_portal_user(db):
    def make(*accounts, phone: str | None = None, password: str = PORTAL_PASSWORD):
        phone = phone or f"139{next(_phones):08d}"
        user = get_user_model().objects.create_user(username=phone, password=password)
        PortalProfile.objects.create(user=user, mobile_phone=phone)
        for account in accounts:
            AccountBinding.objects.create(user=user, account=account)
        return user

    return make
