"""core.permissions: what each role may do, and which org units it reaches."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser

from core.exceptions import PermissionDenied
from core.models import OrgUnit, Role, StaffProfile, TransformerArea
from core.permissions import (
    ROLE_CAPABILITIES,
    Actor,
    Cap,
    actor_for,
    can_see_unit,
    org_scope_q,
    require,
)
from customers.models import Customer

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]

V, CR, CH, AU = Cap.CUSTOMER_VIEW, Cap.CUSTOMER_CREATE, Cap.CUSTOMER_CHANGE, Cap.AUDIT_VIEW

# The capability table, written out by hand: (role, view, create, change, audit).
EXPECTED_CAPABILITIES = [
    (Role.COUNTER, True, True, True, False),
    (Role.INSPECTOR, True, False, False, False),
    (Role.AUDITOR, True, False, False, True),
    (Role.MANAGER, True, True, True, False),
    (Role.ADMIN, True, True, True, True),
    (Role.CUSTOMER, False, False, False, False),
]


@pytest.mark.parametrize(("role", "view", "create", "change", "audit"), EXPECTED_CAPABILITIES)
def test_capability_table(role, view, create, change, audit):
    actor = Actor(user_id=1, username="u", role=role, org_unit=None)
    assert actor.has(V) is view
    assert actor.has(CR) is create
    assert actor.has(CH) is change
    assert actor.has(AU) is audit


def test_every_role_is_in_the_table():
    assert set(ROLE_CAPABILITIES) == set(Role)


def test_unknown_role_has_no_capability():
    actor = Actor(user_id=1, username="u", role="janitor", org_unit=None)
    assert not any(actor.has(cap) for cap in Cap)


@pytest.mark.parametrize(
    ("name", "is_global"),
    [
        ("counter", True),
        ("counter_bs", True),
        ("auditor", True),
        ("admin", True),
        ("inspector", False),
        ("manager", False),
        ("manager_bs", False),
    ],
)
def test_global_scope_by_role(actors, name, is_global):
    assert actors[name].is_global is is_global


def test_actor_for_reads_role_and_unit_from_the_staff_profile(staff, org):
    actor = actor_for(staff["inspector"])
    assert actor == Actor(staff["inspector"].pk, "inspector", Role.INSPECTOR, org["qx_s1"])


def test_actor_for_caches_on_the_user(staff, django_assert_num_queries):
    user = staff["manager"]
    first = actor_for(user)
    with django_assert_num_queries(0):
        assert actor_for(user) is first


def test_actor_for_nobody(db, org):
    User = get_user_model()
    assert actor_for(None) is None
    assert actor_for(AnonymousUser()) is None
    no_profile = User.objects.create_user("portal-customer", password="x-pw-12345")
    assert actor_for(no_profile) is None
    inactive = User.objects.create_user("gone", password="x-pw-12345", is_active=False)
    StaffProfile.objects.create(user=inactive, role=Role.MANAGER, org_unit=org["qx"])
    assert actor_for(inactive) is None


def test_superuser_without_profile_is_a_global_admin(db):
    root = get_user_model().objects.create_superuser("root", password="x-pw-12345")
    actor = actor_for(root)
    assert actor.role == Role.ADMIN
    assert actor.org_unit is None
    assert actor.is_global
    assert all(actor.has(cap) for cap in Cap)


def test_superuser_is_admin_whatever_the_profile_says(db, org):
    boss = get_user_model().objects.create_superuser("boss", password="x-pw-12345")
    StaffProfile.objects.create(user=boss, role=Role.INSPECTOR, org_unit=org["bs"])
    actor = actor_for(boss)
    assert actor.role == Role.ADMIN
    assert actor.org_unit == org["bs"]


def test_require(staff):
    assert require(staff["counter"], CR).username == "counter"
    with pytest.raises(PermissionDenied):
        require(staff["inspector"], CR)
    with pytest.raises(PermissionDenied):
        require(staff["auditor"], CH)
    with pytest.raises(PermissionDenied):
        require(AnonymousUser(), V)


# --- org_scope_q: "this unit and everything below it" ------------------------------------


def _codes(qs):
    return sorted(qs.values_list("code", flat=True))


def test_org_scope_q_for_a_county_manager_is_the_county_subtree(actors, areas):
    q = org_scope_q(actors["manager"], "supply_station")
    assert _codes(TransformerArea.objects.filter(q)) == ["QX-S01-T0001", "QX-S02-T0001"]
    q = org_scope_q(actors["manager_bs"], "supply_station")
    assert _codes(TransformerArea.objects.filter(q)) == ["BS-S01-T0001"]


def test_org_scope_q_for_a_station_is_that_station_only(actors, areas):
    q = org_scope_q(actors["inspector"], "supply_station")
    assert _codes(TransformerArea.objects.filter(q)) == ["QX-S01-T0001"]


def test_org_scope_q_does_not_leak_to_sibling_with_a_common_path_prefix(org, areas):
    """Materialised paths of siblings differ in their last step, so a prefix match on the
    parent's path must not pull in a sibling (QX-S01 vs QX-S02)."""
    s1, s2 = org["qx_s1"], org["qx_s2"]
    assert not s2.path.startswith(s1.path)
    assert s1.contains(s1)
    assert not s1.contains(s2)
    assert org["qx"].contains(s1) and org["qx"].contains(s2)
    assert not org["qx"].contains(org["bs_s1"])
    assert org["province"].contains(org["bs_s1"])


def test_subtree_of_a_county(actors, org):
    subtree = OrgUnit.objects.filter(path__startswith=actors["manager"].org_unit.path)
    assert _codes(subtree) == ["JN-LC-QX", "QX-H01", "QX-S01", "QX-S02"]
    assert _codes(org["qx"].subtree()) == _codes(subtree)


@pytest.mark.parametrize("name", ["counter", "counter_bs", "auditor", "admin"])
def test_org_scope_q_is_unrestricted_for_global_roles(actors, areas, name):
    assert org_scope_q(actors[name], "supply_station") == org_scope_q(actors[name])
    assert TransformerArea.objects.filter(org_scope_q(actors[name], "supply_station")).count() == 3


def test_org_scope_q_without_an_org_unit_sees_nothing(areas):
    actor = Actor(user_id=1, username="u", role=Role.MANAGER, org_unit=None)
    assert not TransformerArea.objects.filter(org_scope_q(actor, "supply_station")).exists()


def test_org_scope_q_on_customers(actors, make_customer):
    s1 = make_customer("qx_s1")
    s2 = make_customer("qx_s2")
    bs = make_customer("bs_s1")

    def visible(name):
        return set(Customer.objects.filter(org_scope_q(actors[name])).values_list("pk", flat=True))

    assert visible("inspector") == {s1.pk}
    assert visible("manager") == {s1.pk, s2.pk}
    assert visible("manager_bs") == {bs.pk}
    assert visible("inspector_bs") == {bs.pk}
    assert visible("counter") == visible("auditor") == {s1.pk, s2.pk, bs.pk}


def test_can_see_unit(actors, org):
    assert can_see_unit(actors["inspector"], org["qx_s1"])
    assert not can_see_unit(actors["inspector"], org["qx_s2"])
    assert not can_see_unit(actors["inspector"], org["qx"])  # a parent is not in the subtree
    assert can_see_unit(actors["manager"], org["qx_s2"])
    assert not can_see_unit(actors["manager"], org["bs_s1"])
    assert can_see_unit(actors["counter"], org["bs_s1"])  # counter staff serve everyone
    assert can_see_unit(actors["auditor"], org["qx_s1"])


def test_in_home_scope_is_not_widened_by_global_roles(actors, org):
    counter = actors["counter"]
    assert counter.in_home_scope(org["qx_hall"])
    assert not counter.in_home_scope(org["qx_s1"])  # reachable, but not home
