"""customers.services: registering and changing customers, with every rule a clerk can hit."""

import hashlib
import hmac
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection, transaction

from core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from core.models import Sequence
from customers.models import (
    Account,
    Contact,
    Customer,
    CustomerEvent,
    ServicePoint,
)
from customers.services import (
    account_close,
    account_open,
    contact_add,
    contact_remove,
    customer_create,
    customer_update,
    service_point_add,
)
from tests.conftest import valid_resident_id

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]

RESIDENT_ID = "361025198001011235"  # 36102519800101123 + check "5" (sum 216, mod 11 = 7)


def _field_errors(call) -> dict:
    with pytest.raises(ValidationError) as info:
        call()
    return info.value.field_errors


def _nothing_written():
    assert not Customer.objects.exists()
    assert not Account.objects.exists()
    assert not ServicePoint.objects.exists()
    assert not Contact.objects.exists()
    assert not CustomerEvent.objects.exists()


# --- customer_create ----------------------------------------------------------------------


def test_create_happy_path(actors, customer_data, areas, org):
    data = customer_data(
        "qx_s1",
        name="  张三  ",
        mobile_phone="138 0000 1234",
        other_phone="0791-86123456",
        email=" zhang@example.cn ",
        service_address="青溪县城关镇解放路12号后院",
        ct_ratio=20,
        pt_ratio=1,
        opened_on=date(2024, 3, 1),
    )
    customer = customer_create(actor=actors["counter"], **data)

    customer.refresh_from_db()
    assert customer.number == "3100000001"  # first value of the customer-number sequence
    assert customer.name == "张三"
    assert customer.mobile_phone == "+8613800001234"
    assert customer.other_phone == "+8679186123456"
    assert customer.email == "zhang@example.cn"
    assert customer.org_unit == org["qx_s1"]  # managed by the area's supply station
    assert customer.status == "active"
    assert customer.version == 1
    assert customer.contracted_capacity_kva == Decimal("8.00")

    account = customer.accounts.get()
    assert account.number == "310000000101"
    assert account.settlement_mode == "prepaid"
    assert account.status == "open"
    assert account.opened_on == date(2024, 3, 1)

    point = customer.service_points.get()
    assert point.number == "7100000001"
    assert point.account == account
    assert point.transformer_area == areas["qx_s1"]
    assert point.address == "青溪县城关镇解放路12号后院"
    assert point.multiplier == 20

    owner = customer.contacts.get()
    assert (owner.name, owner.role, owner.phone) == ("张三", "owner", "+8613800001234")


def test_create_stores_the_id_masked_and_as_a_keyed_digest_never_raw(make_customer):
    customer = make_customer(id_number=RESIDENT_ID)
    customer.refresh_from_db()
    assert customer.id_number_masked == "361025********1235"
    expected = hmac.new(
        settings.IDENTITY_DIGEST_KEY.encode(), f"resident_id:{RESIDENT_ID}".encode(), hashlib.sha256
    ).hexdigest()
    assert customer.id_number_digest == expected
    assert RESIDENT_ID not in customer.id_number_digest
    # the raw number is nowhere in the row, nor in the audit trail
    with connection.cursor() as cursor:
        cursor.execute("SELECT row_to_json(c)::text FROM customers_customer c WHERE id = %s", [customer.pk])
        assert RESIDENT_ID not in cursor.fetchone()[0]
        cursor.execute(
            "SELECT count(*) FROM customers_customerevent e WHERE row_to_json(e)::text LIKE %s",
            [f"%{RESIDENT_ID}%"],
        )
        assert cursor.fetchone()[0] == 0


@pytest.mark.parametrize(
    ("id_type", "id_number", "masked"),
    [
        ("resident_id", "11010519491231002x", "110105********002X"),
        ("credit_code", "91350100M000100Y43", "9135**********0Y43"),
        ("passport", "e12345678", "*****5678"),
        ("other", "AB1234", "**1234"),
    ],
)
def test_create_masks_each_document_type(make_customer, id_type, id_number, masked):
    overrides = {"category": "commercial"} if id_type == "credit_code" else {}
    customer = make_customer(id_type=id_type, id_number=id_number, **overrides)
    assert customer.id_number_masked == masked
    assert customer.id_type == id_type


def test_numbers_come_from_the_sequences(make_customer):
    Sequence.objects.create(name="customer_number", last_value=3_100_000_499)
    Sequence.objects.create(name="service_point_number", last_value=7_100_000_099)
    first = make_customer()
    second = make_customer()
    assert (first.number, second.number) == ("3100000500", "3100000501")
    assert second.accounts.get().number == "310000050101"
    assert second.service_points.get().number == "7100000101"
    assert Sequence.objects.get(name="customer_number").last_value == 3_100_000_501


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"name": "张"}, "name", "Enter the customer's full name (at least 2 characters)."),
        ({"name": "   "}, "name", "Enter the customer's full name (at least 2 characters)."),
        ({"mobile_phone": "12345"}, "mobile_phone", "“12345” is not a valid phone number"),
        ({"mobile_phone": ""}, "mobile_phone", "Enter a phone number."),
        ({"mobile_phone": "010-12345678"}, "mobile_phone", "is not a mobile number"),
        ({"other_phone": "abc"}, "other_phone", "“abc” is not a phone number."),
        ({"email": "zhang@"}, "email", "Enter a valid e-mail address."),
        ({"address": "解放路"}, "address", "Enter the full address (at least 5 characters)."),
        ({"category": "household"}, "category", "“household” is not one of the allowed values."),
        ({"voltage_level": "240V"}, "voltage_level", "“240V” is not one of the allowed values."),
        ({"importance_grade": "vip"}, "importance_grade", "“vip” is not one of the allowed values."),
        ({"contracted_capacity_kva": "-1"}, "contracted_capacity_kva", "not negative"),
        ({"contracted_capacity_kva": "8.125"}, "contracted_capacity_kva", "at most 2 decimals"),
        ({"contracted_capacity_kva": "lots"}, "contracted_capacity_kva", "Enter the contracted capacity"),
        ({"contracted_capacity_kva": "NaN"}, "contracted_capacity_kva", "Enter the contracted capacity"),
        ({"contracted_capacity_kva": "Infinity"}, "contracted_capacity_kva", "Enter the contracted capacity"),
        ({"contracted_capacity_kva": None}, "contracted_capacity_kva", "Enter the contracted capacity"),
        (
            {"contracted_capacity_kva": "100000000"},
            "contracted_capacity_kva",
            "Enter the contracted capacity",
        ),
        ({"id_type": "driving_licence"}, "id_type", "“driving_licence” is not one of the allowed values."),
        ({"id_number": "361025198001011234"}, "id_number", "should be 5; please check the number."),
        ({"id_number": "36102519800230123X"}, "id_number", "(19800230) is not a real date."),
        ({"id_number": "3610251980"}, "id_number", "17 digits followed by a digit or X"),
        ({"id_type": "credit_code", "id_number": "91350100M000100Y44"}, "id_number", "should be 3"),
        ({"id_type": "passport", "id_number": "E12"}, "id_number", "5 to 32 letters or digits"),
        ({"id_type": "passport", "id_number": "E12-3456"}, "id_number", "5 to 32 letters or digits"),
        ({"settlement_mode": "credit"}, "settlement_mode", "“credit” is not one of the allowed values."),
        ({"ct_ratio": 0}, "ct_ratio", "A transformer ratio is a whole number of at least 1."),
        ({"pt_ratio": "2"}, "pt_ratio", "A transformer ratio is a whole number of at least 1."),
        ({"protected": True}, "protected_reason", "Say why the customer is protected from tripping."),
        ({"protected": True, "protected_reason": "  "}, "protected_reason", "Say why"),
    ],
)
def test_create_validation_errors(actors, customer_data, overrides, field, message):
    errors = _field_errors(lambda: customer_create(actor=actors["counter"], **customer_data(**overrides)))
    assert set(errors) == {field}
    assert any(message in m for m in errors[field]), errors
    _nothing_written()
    assert not Sequence.objects.exists()  # no number is used up by a refused request


def test_create_reports_every_error_at_once(actors, customer_data):
    data = customer_data(name="", mobile_phone="x", address="", id_number="1", ct_ratio=0, protected=True)
    errors = _field_errors(lambda: customer_create(actor=actors["counter"], **data))
    assert set(errors) == {"name", "mobile_phone", "address", "id_number", "ct_ratio", "protected_reason"}
    _nothing_written()


@pytest.mark.parametrize("voltage", ["10kV", "35kV", "110kV"])
def test_residential_customers_are_low_voltage(actors, customer_data, voltage):
    errors = _field_errors(
        lambda: customer_create(actor=actors["counter"], **customer_data(voltage_level=voltage))
    )
    assert errors == {"voltage_level": ["Residential customers are supplied at 220 V or 380 V."]}


@pytest.mark.parametrize("voltage", ["220V", "380V"])
def test_residential_low_voltage_is_fine(make_customer, voltage):
    assert make_customer(voltage_level=voltage).voltage_level == voltage


def test_commercial_customers_may_take_high_voltage(make_customer):
    assert make_customer(category="commercial", voltage_level="10kV").voltage_level == "10kV"


@pytest.mark.parametrize(
    ("capacity", "ok"), [("314.99", False), ("0", False), ("315", True), ("315.00", True)]
)
def test_large_industry_needs_at_least_315_kva(actors, customer_data, capacity, ok):
    data = customer_data(category="large_industry", voltage_level="10kV", contracted_capacity_kva=capacity)
    if ok:
        customer = customer_create(actor=actors["counter"], **data)
        assert customer.contracted_capacity_kva == Decimal("315")
    else:
        errors = _field_errors(lambda: customer_create(actor=actors["counter"], **data))
        assert errors == {
            "contracted_capacity_kva": [
                "Large-industry customers have a contracted capacity of at least 315 kVA."
            ]
        }


def test_protected_customer_keeps_its_reason(make_customer):
    customer = make_customer(protected=True, protected_reason=" 县医院重症监护 ")
    customer.refresh_from_db()
    assert customer.protected is True
    assert customer.protected_reason == "县医院重症监护"


def test_reason_is_dropped_when_not_protected(make_customer):
    customer = make_customer(protected=False, protected_reason="left over")
    customer.refresh_from_db()
    assert customer.protected_reason == ""


@pytest.mark.parametrize("who", ["inspector", "inspector_bs", "auditor"])
def test_roles_without_create_are_refused(actors, customer_data, who):
    with pytest.raises(PermissionDenied):
        customer_create(actor=actors[who], **customer_data("qx_s1"))
    _nothing_written()


def test_manager_creates_only_inside_their_county(actors, customer_data):
    with pytest.raises(PermissionDenied, match="outside your scope"):
        customer_create(actor=actors["manager_bs"], **customer_data("qx_s1"))
    _nothing_written()
    assert customer_create(actor=actors["manager"], **customer_data("qx_s2")).org_unit.code == "QX-S02"


def test_counter_staff_create_in_any_county(actors, customer_data):
    customer = customer_create(actor=actors["counter_bs"], **customer_data("qx_s1"))
    assert customer.org_unit.code == "QX-S01"


def test_no_actor_is_refused(customer_data):
    with pytest.raises(PermissionDenied):
        customer_create(actor=None, **customer_data())


# --- customer_update ----------------------------------------------------------------------


@pytest.fixture
def customer(make_customer):
    return make_customer("qx_s1", actor="admin", name="王五")


def test_update_changes_fields_and_bumps_the_version(actors, customer):
    updated = customer_update(
        actor=actors["counter"],
        customer=customer,
        expected_version=1,
        name="王五五",
        mobile_phone="+86 139 0000 2222",
        category="commercial",
        voltage_level="380V",
        contracted_capacity_kva="12.5",
    )
    assert updated.version == 2
    customer.refresh_from_db()
    assert customer.name == "王五五"
    assert customer.mobile_phone == "+8613900002222"
    assert customer.category == "commercial"
    assert customer.contracted_capacity_kva == Decimal("12.50")
    assert customer.version == 2


def test_update_without_expected_version_is_not_checked(actors, customer):
    customer_update(actor=actors["admin"], customer=customer, expected_version=1, name="王五一")
    updated = customer_update(actor=actors["admin"], customer=customer, name="王五二")
    assert (updated.name, updated.version) == ("王五二", 3)


def test_update_validates_like_create(actors, customer):
    errors = _field_errors(
        lambda: customer_update(actor=actors["admin"], customer=customer, name="一", email="bad@")
    )
    assert set(errors) == {"name", "email"}
    customer.refresh_from_db()
    assert (customer.name, customer.version) == ("王五", 1)


def test_update_that_changes_nothing_keeps_the_version(actors, customer):
    result = customer_update(actor=actors["admin"], customer=customer, expected_version=1, name="王五")
    assert result.version == 1
    assert CustomerEvent.objects.filter(pgh_obj_id=customer.pk).count() == 1


def test_update_refuses_fields_that_are_not_editable(actors, customer):
    with pytest.raises(ValidationError, match="cannot be changed here: number, version") as info:
        customer_update(actor=actors["admin"], customer=customer, number="1", version=9)
    assert info.value.field_errors == {}
    customer.refresh_from_db()
    assert (customer.number, customer.version) == ("3100000001", 1)


def test_stale_expected_version_is_a_conflict_and_writes_nothing(actors, customer):
    customer_update(actor=actors["counter"], customer=customer, expected_version=1, name="先改者")
    events_before = CustomerEvent.objects.count()

    with pytest.raises(Conflict) as info:
        customer_update(actor=actors["counter_bs"], customer=customer, expected_version=1, name="后改者")
    assert info.value.status_code == 409
    assert "changed by someone else" in str(info.value.message)
    customer.refresh_from_db()
    assert (customer.name, customer.version) == ("先改者", 2)
    assert CustomerEvent.objects.count() == events_before


def test_stale_version_is_checked_even_for_a_stale_instance(actors, customer):
    """The service re-reads the row under lock; the caller's copy does not matter."""
    fresh = Customer.objects.get(pk=customer.pk)
    customer_update(actor=actors["admin"], customer=fresh, expected_version=1, name="甲乙")
    assert customer.version == 1  # the caller's stale copy
    with pytest.raises(Conflict):
        customer_update(
            actor=actors["admin"], customer=customer, expected_version=customer.version, name="丙丁"
        )
    assert (
        customer_update(actor=actors["admin"], customer=customer, expected_version=2, name="丙丁").version
        == 3
    )


@pytest.mark.parametrize("voltage", ["10kV", "35kV"])
def test_update_keeps_residential_low_voltage(actors, customer, voltage):
    errors = _field_errors(
        lambda: customer_update(actor=actors["admin"], customer=customer, voltage_level=voltage)
    )
    assert errors == {"voltage_level": ["Residential customers are supplied at 220 V or 380 V."]}


def test_update_checks_rules_against_the_merged_record(actors, make_customer):
    """Changing only the category is checked together with the stored voltage/capacity."""
    plant = make_customer(category="commercial", voltage_level="10kV", contracted_capacity_kva="200")
    errors = _field_errors(
        lambda: customer_update(actor=actors["admin"], customer=plant, category="residential")
    )
    assert set(errors) == {"voltage_level"}
    errors = _field_errors(
        lambda: customer_update(actor=actors["admin"], customer=plant, category="large_industry")
    )
    assert set(errors) == {"contracted_capacity_kva"}
    updated = customer_update(
        actor=actors["admin"], customer=plant, category="large_industry", contracted_capacity_kva="630"
    )
    assert (updated.category, updated.contracted_capacity_kva) == ("large_industry", Decimal("630"))


def test_update_protection_needs_a_reason_and_unprotecting_clears_it(actors, customer):
    errors = _field_errors(lambda: customer_update(actor=actors["admin"], customer=customer, protected=True))
    assert errors == {"protected_reason": ["Say why the customer is protected from tripping."]}

    customer_update(actor=actors["admin"], customer=customer, protected=True, protected_reason="透析患者")
    customer.refresh_from_db()
    assert (customer.protected, customer.protected_reason) == (True, "透析患者")

    # an unrelated edit leaves the reason alone
    customer_update(actor=actors["admin"], customer=customer, email="wang@example.cn")
    customer.refresh_from_db()
    assert customer.protected_reason == "透析患者"

    customer_update(actor=actors["admin"], customer=customer, protected=False)
    customer.refresh_from_db()
    assert (customer.protected, customer.protected_reason) == (False, "")


def test_update_identity_document(actors, customer):
    customer_update(actor=actors["admin"], customer=customer, id_number="11010519491231002X")
    customer.refresh_from_db()
    assert customer.id_number_masked == "110105********002X"
    assert customer.version == 2

    customer_update(actor=actors["admin"], customer=customer, id_type="passport", id_number="E98765432")
    customer.refresh_from_db()
    assert (customer.id_type, customer.id_number_masked) == ("passport", "*****5432")

    errors = _field_errors(lambda: customer_update(actor=actors["admin"], customer=customer, id_number="X"))
    assert set(errors) == {"id_number"}


def test_update_moves_a_customer_between_units(actors, customer, org):
    errors = _field_errors(
        lambda: customer_update(actor=actors["admin"], customer=customer, org_unit=org["qx_hall"])
    )
    assert errors == {"org_unit": ["A customer is managed by a supply station or county."]}

    with pytest.raises(PermissionDenied, match="outside your scope"):
        customer_update(actor=actors["manager"], customer=customer, org_unit=org["bs_s1"])

    customer_update(actor=actors["manager"], customer=customer, org_unit=org["qx_s2"])
    customer.refresh_from_db()
    assert customer.org_unit == org["qx_s2"]


# --- closing --------------------------------------------------------------------------------


def test_closing_needs_the_accounts_closed_first(actors, customer):
    errors = _field_errors(lambda: customer_update(actor=actors["admin"], customer=customer, status="closed"))
    assert errors == {"status": ["Close the customer's accounts before closing the customer."]}
    customer.refresh_from_db()
    assert customer.status == "active"

    account_close(actor=actors["admin"], account=customer.accounts.get())
    customer_update(actor=actors["admin"], customer=customer, status="closed")
    customer.refresh_from_db()
    assert customer.status == "closed"


def test_a_closed_customer_cannot_be_changed_but_can_be_reopened(actors, customer):
    account_close(actor=actors["admin"], account=customer.accounts.get())
    customer_update(actor=actors["admin"], customer=customer, status="closed")

    with pytest.raises(ValidationError, match="A closed customer record cannot be changed."):
        customer_update(actor=actors["admin"], customer=customer, name="王五六")
    with pytest.raises(ValidationError, match="cannot be changed"):
        customer_update(actor=actors["admin"], customer=customer, status="closed", name="王五六")

    customer_update(actor=actors["admin"], customer=customer, status="active")
    customer.refresh_from_db()
    assert customer.status == "active"


def test_account_close_rules(actors, customer):
    account = customer.accounts.get()
    with pytest.raises(ValidationError, match="cannot close before it opened"):
        account_close(actor=actors["admin"], account=account, closed_on=account.opened_on - timedelta(days=1))
    closed = account_close(actor=actors["admin"], account=account, closed_on=account.opened_on)
    assert (closed.status, closed.closed_on) == ("closed", account.opened_on)
    with pytest.raises(Conflict, match="already closed"):
        account_close(actor=actors["admin"], account=account)


def test_account_open_only_for_active_customers(actors, customer):
    second = account_open(actor=actors["counter_bs"], customer=customer, settlement_mode="postpaid")
    assert second.number == "310000000102"
    assert second.settlement_mode == "postpaid"
    errors = _field_errors(
        lambda: account_open(actor=actors["admin"], customer=customer, settlement_mode="barter")
    )
    assert errors == {"settlement_mode": ["Choose a settlement mode."]}

    customer_update(actor=actors["admin"], customer=customer, status="suspended")
    with pytest.raises(ValidationError, match="only for active customers"):
        account_open(actor=actors["admin"], customer=customer, settlement_mode="prepaid")


def test_service_point_add(actors, customer, areas):
    account = customer.accounts.get()
    point = service_point_add(
        actor=actors["manager"],
        account=account,
        address=" 青溪县城关镇解放路12号2栋 ",
        transformer_area=areas["qx_s1"],
        ct_ratio=50,
        pt_ratio=100,
    )
    assert point.number == "7100000002"
    assert point.address == "青溪县城关镇解放路12号2栋"
    assert point.multiplier == 5000

    errors = _field_errors(
        lambda: service_point_add(
            actor=actors["admin"], account=account, address="x", transformer_area=areas["qx_s1"], ct_ratio=0
        )
    )
    assert set(errors) == {"address", "ct_ratio"}

    account = account_close(actor=actors["admin"], account=account)
    with pytest.raises(ValidationError, match="only to open accounts"):
        service_point_add(
            actor=actors["admin"], account=account, address="青溪县某地某号", transformer_area=areas["qx_s1"]
        )


def test_service_point_add_checks_the_account_as_stored_not_the_callers_copy(actors, customer, areas):
    stale = customer.accounts.get()  # loaded while the account was open
    account_close(actor=actors["admin"], account=Account.objects.get(pk=stale.pk))
    assert stale.status == "open"
    with pytest.raises(ValidationError, match="only to open accounts"):
        service_point_add(
            actor=actors["admin"], account=stale, address="青溪县某地某号", transformer_area=areas["qx_s1"]
        )
    assert customer.service_points.count() == 1


def test_service_point_add_area_must_be_in_scope(actors, customer, areas):
    """As for a new customer: a county manager cannot attach another county's area."""
    account = customer.accounts.get()
    with pytest.raises(PermissionDenied, match="outside your scope"):
        service_point_add(
            actor=actors["manager"],
            account=account,
            address="青溪县某地某号",
            transformer_area=areas["bs_s1"],
        )
    assert customer.service_points.count() == 1
    # counter staff serve every county
    point = service_point_add(
        actor=actors["counter_bs"], account=account, address="青溪县某地某号", transformer_area=areas["bs_s1"]
    )
    assert point.transformer_area == areas["bs_s1"]


# --- contacts ---------------------------------------------------------------------------------


def test_contact_add(actors, customer):
    contact = contact_add(
        actor=actors["counter"],
        customer=customer,
        name=" 李电工 ",
        role="electrician",
        phone="0791-86123456",
        email="li@example.cn",
    )
    assert (contact.name, contact.phone) == ("李电工", "+8679186123456")
    errors = _field_errors(
        lambda: contact_add(
            actor=actors["counter"], customer=customer, name="李", role="boss", phone="1", email="@"
        )
    )
    assert set(errors) == {"name", "role", "phone", "email"}
    assert customer.contacts.count() == 2


def test_last_owner_contact_cannot_be_removed(actors, customer):
    owner = customer.contacts.get(role="owner")
    with pytest.raises(ValidationError, match="at least one owner contact"):
        contact_remove(actor=actors["counter"], contact=owner)
    assert Contact.objects.filter(pk=owner.pk).exists()

    second_owner = contact_add(
        actor=actors["counter"], customer=customer, name="王五妻", role="owner", phone="13900003333"
    )
    contact_remove(actor=actors["counter"], contact=owner)
    assert list(customer.contacts.values_list("pk", flat=True)) == [second_owner.pk]
    with pytest.raises(ValidationError):
        contact_remove(actor=actors["counter"], contact=second_owner)


def test_non_owner_contacts_can_be_removed(actors, customer):
    agent = contact_add(
        actor=actors["counter"], customer=customer, name="代理人", role="agent", phone="13900004444"
    )
    contact_remove(actor=actors["counter"], contact=agent)
    assert not Contact.objects.filter(pk=agent.pk).exists()


# --- scope ------------------------------------------------------------------------------------


def test_inspector_cannot_update(actors, customer):
    with pytest.raises(PermissionDenied):
        customer_update(actor=actors["inspector"], customer=customer, name="检查员改")
    customer.refresh_from_db()
    assert customer.name == "王五"


def test_auditor_cannot_change_anything(actors, customer):
    for call in (
        lambda: customer_update(actor=actors["auditor"], customer=customer, name="稽查改"),
        lambda: account_open(actor=actors["auditor"], customer=customer, settlement_mode="prepaid"),
        lambda: contact_add(
            actor=actors["auditor"], customer=customer, name="某人", role="agent", phone="13900005555"
        ),
    ):
        with pytest.raises(PermissionDenied):
            call()


def test_manager_of_another_county_cannot_see_the_customer(actors, customer):
    for call in (
        lambda: customer_update(actor=actors["manager_bs"], customer=customer, name="白石改"),
        lambda: account_open(actor=actors["manager_bs"], customer=customer, settlement_mode="prepaid"),
        lambda: account_close(actor=actors["manager_bs"], account=customer.accounts.get()),
        lambda: contact_remove(actor=actors["manager_bs"], contact=customer.contacts.get()),
    ):
        with pytest.raises(NotFound, match="No such customer."):
            call()
    customer.refresh_from_db()
    assert (customer.name, customer.version) == ("王五", 1)


def test_scope_is_checked_before_the_version(actors, customer):
    """Out of scope must look like 'not found', not leak that the version moved on."""
    with pytest.raises(NotFound):
        customer_update(actor=actors["manager_bs"], customer=customer, expected_version=99, name="白石改")


def test_counter_staff_of_another_county_can_update(actors, customer):
    customer_update(actor=actors["counter_bs"], customer=customer, expected_version=1, name="王五跨区")
    customer.refresh_from_db()
    assert (customer.name, customer.version) == ("王五跨区", 2)


# --- real concurrency (separate connections, committed transactions) ----------------------------


def _run_in_thread(fn):
    """Run ``fn`` on a connection of its own, closed afterwards."""

    def wrapper(*args):
        try:
            return fn(*args)
        finally:
            connection.close()

    return wrapper


def _outcome(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the outcome is what the test asserts on
        return exc


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_updates_with_the_same_version_one_wins(make_customer, actors):
    customer = make_customer(name="并发")
    start = threading.Barrier(2)

    @_run_in_thread
    def edit(actor_name, new_name):
        start.wait(timeout=10)
        return _outcome(
            lambda: customer_update(
                actor=actors[actor_name],
                customer=Customer.objects.get(pk=customer.pk),
                expected_version=1,
                name=new_name,
            )
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(edit, ["counter", "counter_bs"], ["甲改", "乙改"]))

    winners = [r for r in results if isinstance(r, Customer)]
    losers = [r for r in results if isinstance(r, Conflict)]
    assert len(winners) == 1 and len(losers) == 1, results
    customer.refresh_from_db()
    assert customer.version == 2
    assert customer.name == winners[0].name
    assert list(
        CustomerEvent.objects.filter(pgh_obj_id=customer.pk, pgh_label="update").values_list(
            "name", flat=True
        )
    ) == [winners[0].name]


@pytest.mark.django_db(transaction=True)
def test_a_second_editor_waits_for_the_row_lock_then_sees_the_new_version(make_customer, actors):
    """Deterministic interleaving: editor A holds the row lock (its transaction is open);
    editor B, with the same expected version, must block on the lock rather than read the
    old row, and once A commits, B gets Conflict. Without the lock both would succeed."""
    customer = make_customer(name="锁测")
    a_locked, a_release = threading.Event(), threading.Event()

    @_run_in_thread
    def editor_a():
        with transaction.atomic():
            customer_update(actor=actors["counter"], customer=customer, expected_version=1, name="甲先")
            a_locked.set()
            assert a_release.wait(timeout=20)
        return "committed"

    @_run_in_thread
    def editor_b():
        assert a_locked.wait(timeout=20)
        return _outcome(
            lambda: customer_update(
                actor=actors["counter_bs"], customer=customer, expected_version=1, name="乙后"
            )
        )

    def waiting_on_a_lock() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return cursor.fetchone()[0]

    with ThreadPoolExecutor(max_workers=2) as pool:
        a = pool.submit(editor_a)
        b = pool.submit(editor_b)
        deadline = time.monotonic() + 20
        while waiting_on_a_lock() == 0:
            assert time.monotonic() < deadline, "editor B never blocked on the row lock"
            assert not b.done(), f"editor B finished without waiting: {b.result()!r}"
            time.sleep(0.05)
        a_release.set()
        assert a.result(timeout=20) == "committed"
        outcome = b.result(timeout=20)

    assert isinstance(outcome, Conflict), outcome
    customer.refresh_from_db()
    assert (customer.name, customer.version) == ("甲先", 2)


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_get_distinct_consecutive_numbers(actors, customer_data):
    n = 4
    start = threading.Barrier(n)
    payloads = [customer_data("qx_s1", id_number=valid_resident_id(f"3610251980010112{i}")) for i in range(n)]

    @_run_in_thread
    def create(data):
        start.wait(timeout=10)
        return _outcome(lambda: customer_create(actor=actors["counter"], **data).number)

    with ThreadPoolExecutor(max_workers=n) as pool:
        numbers = list(pool.map(create, payloads))

    assert sorted(numbers) == [str(3_100_000_001 + i) for i in range(n)], numbers
    points = sorted(ServicePoint.objects.values_list("number", flat=True))
    assert points == [str(7_100_000_001 + i) for i in range(n)]
