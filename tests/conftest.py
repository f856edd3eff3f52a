"""Shared fixtures: a small utility (two counties), staff in every role, and a customer
factory that goes through the real service."""

import itertools
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from core.models import OrgUnit, Role, StaffProfile, TransformerArea
from core.permissions import actor_for

_phone_counter = itertools.count(10_000_000)


@pytest.fixture
def org(db):
    """province JN → city → counties QX and BS, each with a hall and stations."""
    province = OrgUnit.objects.add_root(dict(code="JN", name="江南省电力", kind="province"))
    city = OrgUnit.objects.add_child(province, dict(code="JN-LC", name="临川市供电公司", kind="city"))
    qx = OrgUnit.objects.add_child(city, dict(code="JN-LC-QX", name="青溪县供电公司", kind="county"))
    bs = OrgUnit.objects.add_child(city, dict(code="JN-LC-BS", name="白石县供电公司", kind="county"))
    units = {
        "province": province,
        "city": city,
        "qx": qx,
        "bs": bs,
        "qx_hall": OrgUnit.objects.add_child(qx, dict(code="QX-H01", name="青溪城关营业厅", kind="hall")),
        "qx_s1": OrgUnit.objects.add_child(qx, dict(code="QX-S01", name="城关供电所", kind="station")),
        "qx_s2": OrgUnit.objects.add_child(qx, dict(code="QX-S02", name="东溪供电所", kind="station")),
        "bs_hall": OrgUnit.objects.add_child(bs, dict(code="BS-H01", name="白石城关营业厅", kind="hall")),
        "bs_s1": OrgUnit.objects.add_child(bs, dict(code="BS-S01", name="白石城区供电所", kind="station")),
    }
    return {k: OrgUnit.objects.get(pk=v.pk) for k, v in units.items()}


@pytest.fixture
def areas(org):
    def area(code, station):
        return TransformerArea.objects.create(
            code=code, name=f"{code}台区", supply_station=station, transformer_capacity_kva=Decimal("400")
        )

    return {
        "qx_s1": area("QX-S01-T0001", org["qx_s1"]),
        "qx_s2": area("QX-S02-T0001", org["qx_s2"]),
        "bs_s1": area("BS-S01-T0001", org["bs_s1"]),
    }


@pytest.fixture
def make_staff(org):
    User = get_user_model()

    def make(username, role, unit_key, *, superuser=False):
        user = User.objects.create_user(
            username=username, password="pw-for-tests-1", is_superuser=superuser, is_staff=superuser
        )
        StaffProfile.objects.create(user=user, role=role, org_unit=org[unit_key])
        return user

    return make


@pytest.fixture
def staff(make_staff):
    """One user per role; the *_bs ones work in the other county (白石)."""
    return {
        "counter": make_staff("counter", Role.COUNTER, "qx_hall"),
        "counter_bs": make_staff("counter_bs", Role.COUNTER, "bs_hall"),
        "inspector": make_staff("inspector", Role.INSPECTOR, "qx_s1"),
        "inspector_bs": make_staff("inspector_bs", Role.INSPECTOR, "bs_s1"),
        "auditor": make_staff("auditor", Role.AUDITOR, "city"),
        "manager": make_staff("manager", Role.MANAGER, "qx"),
        "manager_bs": make_staff("manager_bs", Role.MANAGER, "bs"),
        "admin": make_staff("admin", Role.ADMIN, "province", superuser=True),
    }


@pytest.fixture
def actors(staff):
    return {name: actor_for(user) for name, user in staff.items()}


def valid_resident_id(body17: str = "36102519800101123") -> str:
    from customers.validators import resident_id_check_char

    return body17 + resident_id_check_char(body17)


@pytest.fixture
def customer_data(areas):
    """Valid keyword arguments for customers.services.customer_create."""

    def data(area_key="qx_s1", **overrides):
        values = {
            "name": "张三",
            "id_type": "resident_id",
            "id_number": valid_resident_id(),
            "mobile_phone": f"138{next(_phone_counter):08d}",
            "address": "青溪县城关镇解放路12号",
            "category": "residential",
            "voltage_level": "220V",
            "contracted_capacity_kva": Decimal("8"),
            "transformer_area": areas[area_key],
            "settlement_mode": "prepaid",
        }
        values.update(overrides)
        return values

    return data


@pytest.fixture
def make_customer(actors, customer_data):
    from customers.services import customer_create

    def make(area_key="qx_s1", actor="admin", **overrides):
        return customer_create(actor=actors[actor], **customer_data(area_key, **overrides))

    return make


@pytest.fixture
def english(settings):
    """Messages in English, whatever catalogues are compiled, so tests can assert on them."""
    from django.utils import translation

    settings.LANGUAGE_CODE = "en"
    with translation.override("en"):
        yield


@pytest.fixture
def fast_password_hashing(settings):
    """Staff fixtures hash eight passwords; the production hasher makes that take seconds.
    Request this (e.g. via ``pytest.mark.usefixtures``) before ``staff``; existing hashes
    still verify because the production hashers stay in the list."""
    from django.conf import global_settings

    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        *global_settings.PASSWORD_HASHERS,
    ]
