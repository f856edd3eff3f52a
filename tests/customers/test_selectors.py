"""customers.selectors: search by what a clerk has in hand, limited to the actor's scope."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.exceptions import NotFound, PermissionDenied
from core.permissions import Actor
from customers import selectors
from customers.services import account_open, contact_add, customer_update, service_point_add

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]


@pytest.fixture
def register(make_customer):
    """Four customers with known numbers (allocated in order), phones, names and addresses."""
    return {
        "zhang": make_customer(  # 3100000001
            "qx_s1",
            name="张三",
            mobile_phone="13912345678",
            address="青溪县城关镇解放路12号",
        ),
        "li": make_customer(  # 3100000002
            "qx_s2",
            name="李四",
            mobile_phone="13800001111",
            other_phone="0791-86123456",
            address="青溪县东溪乡和平村5组",
        ),
        "shop": make_customer(  # 3100000003
            "qx_s1",
            name="张记五金商店",
            mobile_phone="15000002222",
            address="青溪县城关镇人民路8号",
            category="commercial",
            voltage_level="380V",
        ),
        "bai": make_customer(  # 3100000004
            "bs_s1",
            name="白石张氏",
            mobile_phone="18600005678",
            address="白石县城区建设路3号",
        ),
    }


def _search(actors, who="admin", **kwargs):
    return [c.name for c in selectors.customer_search(actor=actors[who], **kwargs)]


def test_empty_query_lists_everything_in_number_order(actors, register):
    assert _search(actors) == ["张三", "李四", "张记五金商店", "白石张氏"]
    assert _search(actors, query="   ") == ["张三", "李四", "张记五金商店", "白石张氏"]


def test_by_customer_number_prefix(actors, register):
    assert _search(actors, query="3100000003") == ["张记五金商店"]
    assert _search(actors, query="310000000") == ["张三", "李四", "张记五金商店", "白石张氏"]
    assert _search(actors, query="3200") == []


def test_by_account_number(actors, register):
    assert register["li"].accounts.get().number == "310000000201"
    assert _search(actors, query="310000000201") == ["李四"]


def test_by_service_point_number(actors, register):
    number = register["bai"].service_points.get().number
    assert _search(actors, query=number) == ["白石张氏"]


@pytest.mark.parametrize(
    "query",
    [
        "13912345678",
        "+8613912345678",
        "+86 139 1234 5678",
        "139-1234-5678",
        "1391234",  # leading digits
        "45678",  # last digits (at least four)
        "5678",
    ],
)
def test_by_mobile_phone(actors, register, query):
    names = _search(actors, query=query)
    assert "张三" in names
    assert "李四" not in names


def test_last_four_digits_can_match_several(actors, register):
    # 139 1234 5678 and 186 0000 5678 both end in 5678
    assert _search(actors, query="5678") == ["张三", "白石张氏"]


def test_fewer_than_four_trailing_digits_do_not_match_phones(actors, register):
    assert _search(actors, query="678") == []


def test_by_other_phone(actors, register):
    assert _search(actors, query="86123456") == ["李四"]


def test_by_name_substring(actors, register):
    assert _search(actors, query="张") == ["张三", "张记五金商店", "白石张氏"]
    assert _search(actors, query="五金") == ["张记五金商店"]


def test_by_address_substring(actors, register):
    assert _search(actors, query="城关镇") == ["张三", "张记五金商店"]
    assert _search(actors, query="和平村") == ["李四"]


def test_every_word_must_match_name_or_address(actors, register):
    assert _search(actors, query="张 人民路") == ["张记五金商店"]
    assert _search(actors, query="李四 城关镇") == []


def test_category_filter(actors, register):
    assert _search(actors, category="commercial") == ["张记五金商店"]
    assert _search(actors, query="张", category="residential") == ["张三", "白石张氏"]
    assert _search(actors, category="large_industry") == []


def test_a_customer_matching_several_ways_is_listed_once(actors, register):
    # 3100000001 matches the customer number and both account numbers 310000000101/02
    account_open(actor=actors["admin"], customer=register["zhang"], settlement_mode="postpaid")
    qs = selectors.customer_search(actor=actors["admin"], query="3100000001")
    assert [c.name for c in qs] == ["张三"]
    assert qs.count() == 1


def test_search_follows_edits(actors, register):
    customer_update(actor=actors["admin"], customer=register["li"], mobile_phone="13712340000")
    assert _search(actors, query="13800001111") == []
    assert _search(actors, query="13712340000") == ["李四"]


# --- scope --------------------------------------------------------------------------------


def test_inspector_sees_only_their_station(actors, register):
    assert _search(actors, "inspector") == ["张三", "张记五金商店"]
    assert _search(actors, "inspector", query="李四") == []
    assert _search(actors, "inspector", query="13800001111") == []


def test_inspector_of_another_county_sees_none_of_qx(actors, register):
    assert _search(actors, "inspector_bs") == ["白石张氏"]
    assert _search(actors, "inspector_bs", query="3100000001") == []


def test_county_manager_sees_the_county(actors, register):
    assert _search(actors, "manager") == ["张三", "李四", "张记五金商店"]
    assert _search(actors, "manager_bs") == ["白石张氏"]


@pytest.mark.parametrize("who", ["auditor", "counter", "counter_bs", "admin"])
def test_auditor_and_counter_staff_see_everyone(actors, register, who):
    assert _search(actors, who) == ["张三", "李四", "张记五金商店", "白石张氏"]


def _queries_to_show(actor, number) -> int:
    """Queries to load a customer and walk everything the detail page shows."""
    with CaptureQueriesContext(connection) as queries:
        customer = selectors.customer_get(actor=actor, number=number)
        shown = [
            (p.account.number, p.transformer_area.supply_station.code) for p in customer.service_points.all()
        ]
        shown += [a.number for a in customer.accounts.all()]
        shown += [c.name for c in customer.contacts.all()]
    assert shown
    return len(queries)


def test_customer_get_does_not_query_per_related_row(actors, register, areas):
    small = register["zhang"]  # one account, one service point, one contact
    big = register["shop"]
    second = account_open(actor=actors["admin"], customer=big, settlement_mode="postpaid")
    for i in range(3):
        service_point_add(
            actor=actors["admin"],
            account=second,
            address=f"青溪县人民路8号{i}栋",
            transformer_area=areas["qx_s1"],
        )
        contact_add(actor=actors["admin"], customer=big, name=f"店员{i}号", role="agent", phone="13900001234")
    assert _queries_to_show(actors["inspector"], big.number) == _queries_to_show(
        actors["inspector"], small.number
    )


def test_customer_get_in_and_out_of_scope(actors, register):
    number = register["zhang"].number
    customer = selectors.customer_get(actor=actors["inspector"], number=number)
    assert [a.number for a in customer.accounts.all()] == [f"{number}01"]
    assert customer.service_points.all()[0].transformer_area.supply_station.code == "QX-S01"
    assert [c.role for c in customer.contacts.all()] == ["owner"]

    with pytest.raises(NotFound):
        selectors.customer_get(actor=actors["inspector_bs"], number=number)
    with pytest.raises(NotFound):
        selectors.customer_get(actor=actors["inspector"], number=register["li"].number)  # QX-S02
    with pytest.raises(NotFound):
        selectors.customer_get(actor=actors["admin"], number="9999999999")


def test_no_view_capability_no_search(org):
    customer_role = Actor(user_id=1, username="c", role="customer", org_unit=None)
    with pytest.raises(PermissionDenied):
        selectors.customer_search(actor=customer_role)
    with pytest.raises(PermissionDenied):
        selectors.customers_visible_to(None)


def test_customer_history_covers_the_customer_and_its_rows(actors, register):
    customer = register["zhang"]
    customer_update(actor=actors["counter_bs"], customer=customer, name="张三丰")
    events = list(selectors.customer_history(actor=actors["inspector"], customer=customer))
    models = sorted(e.pgh_model for e in events)
    assert models == [
        "customers.AccountEvent",
        "customers.ContactEvent",
        "customers.CustomerEvent",
        "customers.CustomerEvent",
        "customers.ServicePointEvent",
    ]
    update = next(e for e in events if e.pgh_label == "update")
    assert update.pgh_diff["name"] == ["张三", "张三丰"]
    assert update.pgh_context["username"] == "counter_bs"
    assert update.pgh_context["cross_region"] is True
    # nothing from another customer leaks into this history
    assert {e.pgh_obj_id for e in events if e.pgh_model == "customers.CustomerEvent"} == {str(customer.pk)}
