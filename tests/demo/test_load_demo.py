from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from core.models import OrgUnit, StaffProfile, TransformerArea
from customers.models import Account, Contact, Customer, ServicePoint
from customers.validators import normalize_mobile, validate_credit_code
from demo.org import DEMO_USERS


def _snapshot():
    return list(Customer.objects.order_by("number").values_list("number", "name", "address", "category"))


@pytest.mark.django_db
def test_demo_utility_is_realistic_and_complete():
    call_command("load_demo", customers=1000, seed=7, verbosity=0)
    assert Customer.objects.count() == 1000
    assert Account.objects.count() == 1000
    assert ServicePoint.objects.count() == 1000
    assert Contact.objects.count() == 1000
    kinds = Counter(OrgUnit.objects.values_list("kind", flat=True))
    assert kinds == {"province": 1, "city": 1, "county": 2, "hall": 5, "station": 8}
    assert TransformerArea.objects.count() >= 16
    # Every customer is managed by a supply station and served through one of its areas.
    bad = ServicePoint.objects.exclude(transformer_area__supply_station=models_f("customer__org_unit"))
    assert not bad.exists()
    mix = Counter(Customer.objects.values_list("category", flat=True))
    assert 780 <= mix["residential"] <= 930
    assert mix["commercial"] >= 50 and mix["agriculture"] >= 15 and mix["large_industry"] >= 1
    assert Customer.objects.filter(protected=True).exclude(protected_reason="").count() >= 1
    for customer in Customer.objects.all()[:200]:
        assert normalize_mobile(customer.mobile_phone) == customer.mobile_phone
        assert "*" in customer.id_number_masked
    # Large-industry customers meet the service's own rules (≥ 315 kVA, high voltage, post-paid).
    for customer in Customer.objects.filter(category="large_industry"):
        assert customer.contracted_capacity_kva >= 315
        assert customer.voltage_level in ("10kV", "35kV")
        assert customer.accounts.get().settlement_mode == "postpaid"
    User = get_user_model()
    for demo_user in DEMO_USERS:
        user = User.objects.get(username=demo_user.username)
        assert user.check_password("kilowatt-demo")
        assert StaffProfile.objects.get(user=user).role == demo_user.role


def models_f(path):
    from django.db.models import F

    return F(path)


@pytest.mark.django_db(transaction=True)
def test_same_seed_gives_the_same_utility_and_if_empty_does_nothing():
    call_command("load_demo", customers=60, seed=11, verbosity=0)
    first = _snapshot()
    call_command("load_demo", customers=60, seed=11, if_empty=True, verbosity=0)
    assert _snapshot() == first
    with pytest.raises(CommandError, match="already holds customers"):
        call_command("load_demo", customers=60, seed=11, verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    call_command("load_demo", customers=60, seed=11, verbosity=0)
    assert _snapshot() == first
    call_command("flush", interactive=False, verbosity=0)
    call_command("load_demo", customers=60, seed=12, verbosity=0)
    assert _snapshot() != first


def test_generated_credit_codes_pass_the_check_character_rule():
    import random

    from demo.customers import _credit_code

    rng = random.Random(3)
    for _ in range(200):
        code = _credit_code(rng, "361025")
        assert validate_credit_code(code) == code
