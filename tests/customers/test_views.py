"""Staff pages for the customer register, driven through the Django test client."""

import pytest
from django.test import Client

from customers.models import Contact, Customer
from customers.services import customer_update

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]

ID_NUMBER = "361025198001011235"


@pytest.fixture
def login(client, staff):
    def as_(name):
        client.force_login(staff[name])
        return client

    return as_


@pytest.fixture
def create_form(areas):
    """A complete, valid POST for the new-customer form."""

    def data(**overrides):
        values = {
            "name": "孙七",
            "category": "residential",
            "id_type": "resident_id",
            "id_number": ID_NUMBER,
            "mobile_phone": "139 0000 7777",
            "other_phone": "",
            "email": "",
            "address": "青溪县城关镇解放路20号",
            "voltage_level": "220V",
            "contracted_capacity_kva": "8",
            "importance_grade": "ordinary",
            "protected_reason": "",
            "settlement_mode": "prepaid",
            "transformer_area": areas["qx_s1"].pk,
            "service_address": "",
            "ct_ratio": "1",
            "pt_ratio": "1",
        }
        values.update(overrides)
        return {k: v for k, v in values.items() if v is not None}

    return data


def _edit_form(customer, **overrides):
    values = {
        "version": customer.version,
        "name": customer.name,
        "category": customer.category,
        "status": customer.status,
        "mobile_phone": customer.mobile_phone,
        "other_phone": customer.other_phone,
        "email": customer.email,
        "address": customer.address,
        "voltage_level": customer.voltage_level,
        "contracted_capacity_kva": str(customer.contracted_capacity_kva),
        "importance_grade": customer.importance_grade,
        "protected_reason": customer.protected_reason,
    }
    if customer.protected:
        values["protected"] = "on"
    values.update(overrides)
    return values


def _messages(response):
    return [str(m) for m in response.context["messages"]]


# --- search ---------------------------------------------------------------------------------


def test_search_page_paginates(login, make_customer):
    for _ in range(27):
        make_customer("qx_s1", address="青溪县城关镇解放路12号")
    client = login("counter")

    first = client.get("/customers/", {"q": "解放路"})
    assert first.status_code == 200
    page = first.context["page"]
    assert page.paginator.count == 27
    assert len(page.object_list) == 25
    assert page.has_next()
    assert "27 customers" in first.content.decode()
    assert "page=2" in first.content.decode()
    assert first.context["querystring"] == "q=%E8%A7%A3%E6%94%BE%E8%B7%AF"  # the query is kept

    second = client.get("/customers/", {"q": "解放路", "page": 2})
    assert [c.number for c in second.context["page"].object_list] == ["3100000026", "3100000027"]
    assert not second.context["page"].has_next()

    # a page number past the end shows the last page rather than an error
    assert client.get("/customers/", {"page": 99}).context["page"].number == 2


def test_search_page_finds_and_scopes(login, make_customer):
    make_customer("qx_s1", name="周八", mobile_phone="13700008888")
    make_customer("bs_s1", name="吴九")
    response = login("inspector_bs").get("/customers/", {"q": "13700008888"})
    assert response.context["page"].paginator.count == 0
    assert "No customer matches." in response.content.decode()

    response = login("counter_bs").get("/customers/", {"q": "13700008888"})
    assert [c.name for c in response.context["page"].object_list] == ["周八"]
    assert "137 0000 8888" in response.content.decode()  # shown in national format


def test_search_page_category_filter(login, make_customer):
    make_customer(name="周八")
    make_customer(name="郑商行", category="commercial")
    response = login("auditor").get("/customers/", {"category": "commercial"})
    assert [c.name for c in response.context["page"].object_list] == ["郑商行"]


# --- detail ---------------------------------------------------------------------------------


def test_detail_in_scope(login, make_customer):
    customer = make_customer("qx_s1", name="钱十", id_number=ID_NUMBER)
    response = login("inspector").get(f"/customers/{customer.number}/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "钱十" in body
    assert "361025********1235" in body
    assert ID_NUMBER not in body
    assert f"{customer.number}01" in body  # the account
    assert len(response.context["history"]) == 4  # customer, account, service point, contact
    assert response.context["can_change"] is False
    assert f"/customers/{customer.number}/edit/" not in body


def test_detail_shows_edit_for_staff_who_may_change(login, make_customer):
    customer = make_customer("qx_s1")
    response = login("counter_bs").get(f"/customers/{customer.number}/")
    assert response.context["can_change"] is True
    assert f"/customers/{customer.number}/edit/" in response.content.decode()


def test_detail_history_shows_who_where_and_cross_region(login, make_customer, actors):
    customer = make_customer("qx_s1", name="许二")
    customer_update(actor=actors["counter_bs"], customer=customer, name="许二二")
    response = login("auditor").get(f"/customers/{customer.number}/")
    body = response.content.decode()
    update = next(e for e in response.context["history"] if e.pgh_label == "update")
    assert update.pgh_context["username"] == "counter_bs"
    assert update.pgh_diff["name"] == ["许二", "许二二"]
    assert "白石城关营业厅" in body  # the hall where it happened
    assert "cross-region" in body


def test_detail_out_of_scope_is_404(login, make_customer):
    customer = make_customer("qx_s1")
    response = login("inspector_bs").get(f"/customers/{customer.number}/")
    assert response.status_code == 404
    assert customer.name not in response.content.decode()
    assert login("admin").get("/customers/0000000000/").status_code == 404


# --- create ---------------------------------------------------------------------------------


def test_create_form_renders(login):
    response = login("counter").get("/customers/new/")
    assert response.status_code == 200
    assert 'name="id_number"' in response.content.decode()


def test_create_with_a_wrong_id_shows_the_message_and_creates_nothing(login, create_form):
    response = login("counter").post("/customers/new/", create_form(id_number="361025198001011234"))
    assert response.status_code == 200
    assert response.context["form"].errors["id_number"] == [
        "The last character of the ID number should be 5; please check the number."
    ]
    assert "should be 5; please check the number." in response.content.decode()
    assert not Customer.objects.exists()


def test_create_with_several_errors_shows_each_on_its_field(login, create_form):
    response = login("counter").post(
        "/customers/new/",
        create_form(voltage_level="10kV", protected="on", mobile_phone="010-12345678", name=None),
    )
    assert response.status_code == 200
    errors = response.context["form"].errors
    # the form's own check (required name) stops the request before the service
    assert errors["name"] == ["This field is required."]
    assert not Customer.objects.exists()

    response = login("counter").post(
        "/customers/new/", create_form(voltage_level="10kV", protected="on", mobile_phone="010-12345678")
    )
    errors = response.context["form"].errors
    assert errors["voltage_level"] == ["Residential customers are supplied at 220 V or 380 V."]
    assert errors["protected_reason"] == ["Say why the customer is protected from tripping."]
    assert "is not a mobile number" in errors["mobile_phone"][0]
    assert "Say why the customer is protected from tripping." in response.content.decode()
    assert not Customer.objects.exists()


def test_create_offers_only_areas_in_scope_and_refuses_others(login, create_form, areas):
    client = login("manager_bs")
    offered = client.get("/customers/new/").context["form"].fields["transformer_area"].queryset
    assert [a.code for a in offered] == ["BS-S01-T0001"]

    response = client.post("/customers/new/", create_form(transformer_area=areas["qx_s1"].pk))
    assert response.status_code == 200
    assert response.context["form"].errors["transformer_area"] == [
        "Select a valid choice. That choice is not one of the available choices."
    ]
    assert not Customer.objects.exists()


def test_valid_create_redirects_to_the_new_customer(login, create_form):
    client = login("counter")
    response = client.post("/customers/new/", create_form())
    customer = Customer.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/customers/{customer.number}/"
    assert customer.name == "孙七"
    assert customer.mobile_phone == "+8613900007777"
    assert customer.id_number_masked == "361025********1235"

    page = client.get(response["Location"])
    assert f"Customer {customer.number} created." in _messages(page)


# --- edit -----------------------------------------------------------------------------------


def test_edit_saves_and_redirects(login, make_customer):
    customer = make_customer(name="冯一")
    client = login("counter")
    form = client.get(f"/customers/{customer.number}/edit/")
    assert form.status_code == 200
    assert form.context["form"].initial["version"] == 1

    response = client.post(f"/customers/{customer.number}/edit/", _edit_form(customer, name="冯一一"))
    assert response.status_code == 302
    customer.refresh_from_db()
    assert (customer.name, customer.version) == ("冯一一", 2)
    assert "Changes saved." in _messages(client.get(response["Location"]))


def test_edit_with_a_stale_version_shows_the_conflict(login, make_customer, actors):
    customer = make_customer(name="陈二")
    stale = _edit_form(customer, name="陈二改")  # the form as the clerk loaded it, version 1
    customer_update(actor=actors["counter_bs"], customer=customer, name="陈二先改")  # someone else saves

    response = login("counter").post(f"/customers/{customer.number}/edit/", stale)
    assert response.status_code == 200
    assert response.context["form"].non_field_errors() == [
        "The record was changed by someone else. Reload and try again."
    ]
    assert "changed by someone else" in response.content.decode()
    customer.refresh_from_db()
    assert (customer.name, customer.version) == ("陈二先改", 2)


def test_edit_shows_service_field_errors(login, make_customer):
    customer = make_customer()
    response = login("manager").post(
        f"/customers/{customer.number}/edit/", _edit_form(customer, status="closed")
    )
    assert response.status_code == 200
    assert response.context["form"].errors["status"] == [
        "Close the customer's accounts before closing the customer."
    ]


def test_edit_out_of_scope_is_404(login, make_customer):
    customer = make_customer("qx_s1")
    client = login("manager_bs")
    assert client.get(f"/customers/{customer.number}/edit/").status_code == 404
    assert (
        client.post(f"/customers/{customer.number}/edit/", _edit_form(customer, name="改")).status_code == 404
    )
    customer.refresh_from_db()
    assert customer.version == 1


# --- roles, login, CSRF -----------------------------------------------------------------------


@pytest.mark.parametrize("who", ["auditor", "inspector"])
def test_read_only_roles_get_403_on_create_and_edit(login, make_customer, create_form, who):
    customer = make_customer()
    client = login(who)
    for response in (
        client.get("/customers/new/"),
        client.post("/customers/new/", create_form()),
        client.get(f"/customers/{customer.number}/edit/"),
        client.post(f"/customers/{customer.number}/edit/", _edit_form(customer, name="稽查改")),
        client.post(
            f"/customers/{customer.number}/contacts/",
            {"name": "某人", "role": "agent", "phone": "13900001234"},
        ),
    ):
        assert response.status_code == 403
        assert "You are not allowed to do this." in response.content.decode()
    assert Customer.objects.count() == 1
    customer.refresh_from_db()
    assert customer.version == 1
    assert customer.contacts.count() == 1


@pytest.mark.parametrize("path", ["/customers/", "/customers/new/", "/customers/3100000001/", "/audit/"])
def test_anonymous_is_sent_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={path}"


def test_anonymous_post_creates_nothing(client, create_form):
    response = client.post("/customers/new/", create_form())
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
    assert not Customer.objects.exists()


def test_user_without_a_staff_profile_is_refused(client, django_user_model, org):
    client.force_login(django_user_model.objects.create_user("portal-user", password="x-pw-12345"))
    assert client.get("/customers/").status_code == 403


def test_csrf_is_enforced(staff, create_form):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff["counter"])
    assert client.post("/customers/new/", create_form()).status_code == 403
    assert not Customer.objects.exists()

    client.get("/customers/new/")  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.post("/customers/new/", {**create_form(), "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert Customer.objects.count() == 1


# --- contacts -------------------------------------------------------------------------------


def test_contact_add_and_remove(login, make_customer):
    customer = make_customer()
    client = login("counter")
    response = client.post(
        f"/customers/{customer.number}/contacts/",
        {"name": "褚电工", "role": "electrician", "phone": "0791-86123456"},
        follow=True,
    )
    assert "Contact added." in _messages(response)
    electrician = customer.contacts.get(role="electrician")
    assert electrician.phone == "+8679186123456"

    response = client.post(f"/customers/{customer.number}/contacts/{electrician.pk}/remove/", follow=True)
    assert "Contact removed." in _messages(response)
    assert not Contact.objects.filter(pk=electrician.pk).exists()


def test_contact_add_errors_come_back_as_messages(login, make_customer):
    customer = make_customer()
    response = login("counter").post(
        f"/customers/{customer.number}/contacts/", {"name": "卫", "role": "agent", "phone": "12"}, follow=True
    )
    messages = _messages(response)
    assert "Enter the contact's full name (at least 2 characters)." in messages
    assert any("“12” is not a valid phone number" in m for m in messages)
    assert customer.contacts.count() == 1


def test_removing_the_last_owner_is_refused_with_a_message(login, make_customer):
    customer = make_customer()
    owner = customer.contacts.get()
    response = login("counter").post(f"/customers/{customer.number}/contacts/{owner.pk}/remove/", follow=True)
    assert "A customer must keep at least one owner contact." in _messages(response)
    assert Contact.objects.filter(pk=owner.pk).exists()


def test_contact_of_another_customer_cannot_be_removed_through_this_one(login, make_customer):
    first, second = make_customer(), make_customer()
    other = second.contacts.get()
    response = login("admin").post(f"/customers/{first.number}/contacts/{other.pk}/remove/")
    assert response.status_code == 404
    assert Contact.objects.filter(pk=other.pk).exists()


def test_contact_views_need_post(login, make_customer):
    customer = make_customer()
    assert login("counter").get(f"/customers/{customer.number}/contacts/").status_code == 405
