"""The audit trail: PostgreSQL triggers record every change with who and where, and the
recorded events cannot be edited."""

import pytest
from django.db import DatabaseError, connection, transaction
from pghistory.models import Events

from core import selectors
from core.models import Role
from core.permissions import actor_for
from customers.models import AccountEvent, Contact, ContactEvent, CustomerEvent, ServicePointEvent
from customers.services import contact_add, customer_update

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]


def _events(customer):
    return CustomerEvent.objects.filter(pgh_obj_id=customer.pk).select_related("pgh_context")


def _last_event(customer):
    return _events(customer).order_by("-pgh_id").first()


def test_create_records_an_event_for_every_row_with_one_shared_context(make_customer, staff):
    customer = make_customer("qx_s1", actor="counter")

    insert = _events(customer).get()
    assert insert.pgh_label == "insert"
    assert insert.name == customer.name
    meta = insert.pgh_context.metadata
    assert meta["user"] == staff["counter"].pk
    assert meta["username"] == "counter"
    assert meta["role"] == Role.COUNTER
    assert meta["org_unit"] == "QX-H01"
    assert meta["hall"] == "QX-H01"
    assert meta["hall_name"] == "青溪城关营业厅"
    assert meta["action"] == "customer.create"
    assert meta["customer_unit"] == "QX-S01"
    assert meta["cross_region"] is False

    # account, service point and owner contact were written in the same business action
    context_id = insert.pgh_context_id
    assert AccountEvent.objects.get(pgh_obj__customer=customer).pgh_context_id == context_id
    assert ServicePointEvent.objects.get(pgh_obj__customer=customer).pgh_context_id == context_id
    assert ContactEvent.objects.get(customer_id=customer.pk).pgh_context_id == context_id


def test_update_records_before_and_after(make_customer, actors):
    customer = make_customer("qx_s1", actor="admin", name="李四")
    customer_update(actor=actors["manager"], customer=customer, expected_version=1, name="李四光")

    update = _last_event(customer)
    assert update.pgh_label == "update"
    assert update.name == "李四光"
    assert update.version == 2
    meta = update.pgh_context.metadata
    assert meta["username"] == "manager"
    assert meta["role"] == Role.MANAGER
    assert meta["org_unit"] == "JN-LC-QX"
    assert meta["action"] == "customer.update"
    assert "hall" not in meta  # a manager does not work at a service hall
    assert meta["cross_region"] is False

    diff = Events.objects.tracks(customer).get(pgh_label="update").pgh_diff
    assert diff["name"] == ["李四", "李四光"]
    assert diff["version"] == [1, 2]


def test_counter_staff_of_another_county_records_cross_region_and_hall(make_customer, actors):
    customer = make_customer("qx_s1", actor="admin")
    customer_update(actor=actors["counter_bs"], customer=customer, address="青溪县城关镇解放路14号")

    meta = _last_event(customer).pgh_context.metadata
    assert meta["username"] == "counter_bs"
    assert meta["role"] == Role.COUNTER
    assert meta["hall"] == "BS-H01"
    assert meta["hall_name"] == "白石城关营业厅"
    assert meta["customer_unit"] == "QX-S01"
    assert meta["cross_region"] is True


def test_counter_staff_creating_in_another_county_is_cross_region(make_customer):
    customer = make_customer("qx_s2", actor="counter_bs")
    meta = _events(customer).get().pgh_context.metadata
    assert meta["cross_region"] is True
    assert meta["hall"] == "BS-H01"
    assert meta["customer_unit"] == "QX-S02"


def test_counter_staff_in_their_own_county_is_not_cross_region(make_customer, actors):
    customer = make_customer("qx_s2", actor="admin")
    customer_update(actor=actors["counter"], customer=customer, email="zhang@example.cn")
    meta = _last_event(customer).pgh_context.metadata
    assert meta["hall"] == "QX-H01"
    assert meta["cross_region"] is False


def test_counter_staff_posted_at_county_level_serving_another_county_is_cross_region(
    make_staff, make_customer
):
    """Home is the hall's county for hall staff, and the unit itself otherwise: a counter
    clerk whose profile sits at county QX serving a BS customer is cross-region."""
    clerk = actor_for(make_staff("qx_county_clerk", Role.COUNTER, "qx"))
    customer = make_customer("bs_s1", actor="admin")
    customer_update(actor=clerk, customer=customer, email="bai@example.cn")
    meta = _last_event(customer).pgh_context.metadata
    assert meta["org_unit"] == "JN-LC-QX"
    assert "hall" not in meta
    assert meta["cross_region"] is True


def test_contact_events_carry_their_own_action(make_customer, actors):
    customer = make_customer("qx_s1", actor="admin")
    contact = contact_add(
        actor=actors["counter_bs"], customer=customer, name="王电工", role="electrician", phone="13900001111"
    )
    event = ContactEvent.objects.get(pgh_obj_id=contact.pk)
    assert event.phone == "+8613900001111"
    assert event.pgh_context.metadata["action"] == "contact.add"
    assert event.pgh_context.metadata["cross_region"] is True


# --- append-only, enforced by the database ------------------------------------------------


def test_event_rows_cannot_be_updated_through_the_orm(make_customer):
    customer = make_customer()
    event = _events(customer).get()
    with pytest.raises(DatabaseError, match="Cannot update or delete"), transaction.atomic():
        CustomerEvent.objects.filter(pk=event.pk).update(name="篡改")
    event.refresh_from_db()
    assert event.name == customer.name


def test_event_rows_cannot_be_deleted_through_the_orm(make_customer):
    customer = make_customer()
    with pytest.raises(DatabaseError, match="Cannot update or delete"), transaction.atomic():
        _events(customer).delete()
    assert _events(customer).count() == 1


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE customers_customerevent SET name = 'x' WHERE pgh_obj_id = %s",
        "DELETE FROM customers_customerevent WHERE pgh_obj_id = %s",
        "UPDATE customers_accountevent SET status = 'closed' WHERE customer_id = %s",
        "DELETE FROM customers_contactevent WHERE customer_id = %s",
    ],
)
def test_event_rows_cannot_be_changed_by_raw_sql(make_customer, sql):
    customer = make_customer()
    with pytest.raises(DatabaseError, match="Cannot update or delete"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(sql, [customer.pk])
    assert _events(customer).get().name == customer.name
    assert AccountEvent.objects.filter(customer_id=customer.pk, status="open").count() == 1
    assert ContactEvent.objects.filter(customer_id=customer.pk).count() == 1


@pytest.mark.django_db(transaction=True)
def test_raw_sql_update_bypassing_services_still_leaves_an_event(make_customer):
    """Committed transactions, as in production: the raw UPDATE runs in a transaction of
    its own, after the service's audit context has closed."""
    customer = make_customer(name="赵六")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE customers_customer SET name = %s WHERE id = %s", ["赵六六", customer.pk])

    events = list(_events(customer).order_by("pgh_id"))
    assert [e.pgh_label for e in events] == ["insert", "update"]
    assert events[-1].name == "赵六六"
    # no service opened an audit context: the event says so rather than inventing a who
    assert events[-1].pgh_context is None
    assert Events.objects.tracks(customer).get(pgh_label="update").pgh_diff["name"] == ["赵六", "赵六六"]


def test_raw_sql_delete_leaves_a_delete_event(make_customer):
    customer = make_customer()
    contact = Contact.objects.get(customer=customer)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM customers_contact WHERE id = %s", [contact.pk])
    labels = list(ContactEvent.objects.filter(pgh_obj_id=contact.pk).values_list("pgh_label", flat=True))
    assert sorted(labels) == ["delete", "insert"]


def test_an_update_that_changes_nothing_records_nothing(make_customer, actors):
    customer = make_customer()
    result = customer_update(actor=actors["admin"], customer=customer, name=customer.name)
    assert result.version == 1
    assert _events(customer).count() == 1


# --- reading the trail --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_audit_events_selector_filters_by_user_and_model(make_customer, actors):
    """Transactional, so that the two actions get distinct timestamps (NOW() is per
    transaction) and "newest first" is observable."""
    customer = make_customer(actor="counter")
    customer_update(actor=actors["manager"], customer=customer, name="改名者")

    by_manager = list(selectors.audit_events(username="manager"))
    assert [(e.pgh_model, e.pgh_label) for e in by_manager] == [("customers.CustomerEvent", "update")]
    by_counter = selectors.audit_events(username="counter")
    assert {e.pgh_model for e in by_counter} == {
        "customers.CustomerEvent",
        "customers.AccountEvent",
        "customers.ServicePointEvent",
        "customers.ContactEvent",
    }
    customer_events = list(selectors.audit_events(model="customers.CustomerEvent"))
    assert [e.pgh_label for e in customer_events] == ["update", "insert"]  # newest first


def test_audit_log_page_is_for_auditors(client, staff, make_customer):
    make_customer(actor="counter")
    client.force_login(staff["auditor"])
    response = client.get("/audit/", {"user": "counter"})
    assert response.status_code == 200
    assert response.context["page"].paginator.count == 4
    client.force_login(staff["counter"])
    assert client.get("/audit/").status_code == 403


def test_a_request_records_its_url_and_user_in_the_context(client, staff, customer_data):
    """The middleware opens the context (URL, user); the service adds role and hall."""
    data = customer_data("qx_s1")
    data["transformer_area"] = data["transformer_area"].pk
    data.update(ct_ratio=1, pt_ratio=1, importance_grade="ordinary")
    client.force_login(staff["counter_bs"])
    response = client.post("/customers/new/", data)
    assert response.status_code == 302
    event = CustomerEvent.objects.select_related("pgh_context").get()
    meta = event.pgh_context.metadata
    assert meta["url"] == "/customers/new/"
    assert meta["user"] == staff["counter_bs"].pk
    assert meta["hall"] == "BS-H01"
    assert meta["cross_region"] is True
