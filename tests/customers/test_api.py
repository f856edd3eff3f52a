"""REST API for the customer register: token auth, scope, and errors as {code, detail}."""

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from customers.models import Customer
from customers.services import customer_update

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing", "english")]

ID_NUMBER = "361025198001011235"


@pytest.fixture
def api(staff):
    """An API client authenticated with a DRF token of the named staff member."""

    def as_(name=None):
        client = APIClient()
        if name is not None:
            token = Token.objects.create(user=staff[name])
            client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    return as_


@pytest.fixture
def payload(areas):
    def data(**overrides):
        values = {
            "name": "蒋十一",
            "id_type": "resident_id",
            "id_number": ID_NUMBER,
            "mobile_phone": "13900009999",
            "address": "青溪县城关镇解放路30号",
            "category": "residential",
            "voltage_level": "220V",
            "contracted_capacity_kva": "8.00",
            "transformer_area": "QX-S01-T0001",
            "settlement_mode": "prepaid",
        }
        values.update(overrides)
        return values

    return data


# --- authentication -------------------------------------------------------------------------


def test_no_credentials_is_401(api, make_customer):
    customer = make_customer()
    client = api()
    for response in (
        client.get("/api/v1/customers/"),
        client.get(f"/api/v1/customers/{customer.number}/"),
        client.post("/api/v1/customers/", {}, format="json"),
        client.patch(f"/api/v1/customers/{customer.number}/", {"version": 1}, format="json"),
    ):
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Token"


def test_bad_token_is_401(staff):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    assert client.get("/api/v1/customers/").status_code == 401


def test_token_of_a_user_without_staff_role_is_403(django_user_model, org):
    user = django_user_model.objects.create_user("portal-user", password="x-pw-12345")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    assert client.get("/api/v1/customers/").status_code == 403


# --- reading --------------------------------------------------------------------------------


def test_list_is_paginated_and_scoped(api, make_customer):
    make_customer("qx_s1", name="沈一")
    make_customer("qx_s2", name="沈二")
    make_customer("bs_s1", name="沈三")

    body = api("counter").get("/api/v1/customers/").json()
    assert body["count"] == 3
    assert [c["name"] for c in body["results"]] == ["沈一", "沈二", "沈三"]
    first = body["results"][0]
    assert set(first) == {
        "number",
        "name",
        "category",
        "mobile_phone",
        "address",
        "status",
        "protected",
        "org_unit",
        "version",
    }
    assert first["org_unit"] == "QX-S01"

    assert [c["name"] for c in api("inspector").get("/api/v1/customers/").json()["results"]] == ["沈一"]
    assert [c["name"] for c in api("manager_bs").get("/api/v1/customers/").json()["results"]] == ["沈三"]


def test_search(api, make_customer):
    make_customer(name="韩一", mobile_phone="13711112222")
    make_customer(name="杨二", category="commercial")
    client = api("auditor")
    assert [
        c["name"] for c in client.get("/api/v1/customers/", {"q": "+86 137 1111 2222"}).json()["results"]
    ] == ["韩一"]
    assert [c["name"] for c in client.get("/api/v1/customers/", {"q": "2222"}).json()["results"]] == ["韩一"]
    assert [c["name"] for c in client.get("/api/v1/customers/", {"q": "杨"}).json()["results"]] == ["杨二"]
    by_category = client.get("/api/v1/customers/", {"category": "commercial"}).json()
    assert [c["name"] for c in by_category["results"]] == ["杨二"]


def test_detail(api, make_customer):
    customer = make_customer(name="朱三", id_number=ID_NUMBER)
    response = api("inspector").get(f"/api/v1/customers/{customer.number}/")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "朱三"
    assert body["id_number_masked"] == "361025********1235"
    assert "id_number" not in body and "id_number_digest" not in body
    assert ID_NUMBER not in response.content.decode()
    assert [a["number"] for a in body["accounts"]] == [f"{customer.number}01"]
    point = body["service_points"][0]
    assert (point["account"], point["transformer_area"], point["multiplier"]) == (
        f"{customer.number}01",
        "QX-S01-T0001",
        1,
    )
    assert [c["role"] for c in body["contacts"]] == ["owner"]
    assert body["contracted_capacity_kva"] == "8.00"  # decimals travel as strings, not floats


def test_detail_out_of_scope_is_404(api, make_customer):
    customer = make_customer("qx_s1")
    response = api("inspector_bs").get(f"/api/v1/customers/{customer.number}/")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "Not found."}
    assert api("admin").get("/api/v1/customers/0000000000/").status_code == 404


# --- creating -------------------------------------------------------------------------------


def test_create(api, payload):
    response = api("counter").post("/api/v1/customers/", payload(), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    customer = Customer.objects.get()
    assert body["number"] == customer.number == "3100000001"
    assert body["mobile_phone"] == "+8613900009999"
    assert body["org_unit"] == "QX-S01"
    assert body["version"] == 1
    assert body["id_number_masked"] == "361025********1235"
    assert ID_NUMBER not in response.content.decode()
    assert len(body["accounts"]) == len(body["service_points"]) == len(body["contacts"]) == 1


def test_create_with_an_invalid_id_is_400_with_field_errors(api, payload):
    response = api("counter").post(
        "/api/v1/customers/", payload(id_number="361025198001011234"), format="json"
    )
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid",
        "detail": "Please correct the errors below.",
        "errors": {
            "id_number": ["The last character of the ID number should be 5; please check the number."]
        },
    }
    assert not Customer.objects.exists()


def test_create_business_rule_errors(api, payload):
    response = api("counter").post(
        "/api/v1/customers/", payload(voltage_level="10kV", protected=True), format="json"
    )
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors == {
        "protected_reason": ["Say why the customer is protected from tripping."],
        "voltage_level": ["Residential customers are supplied at 220 V or 380 V."],
    }


def test_create_input_errors_come_from_the_serializer(api, payload):
    response = api("counter").post(
        "/api/v1/customers/", payload(transformer_area="NOPE", contracted_capacity_kva=-1), format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert set(body["errors"]) == {"transformer_area", "contracted_capacity_kva"}
    assert not Customer.objects.exists()


@pytest.mark.parametrize("who", ["auditor", "inspector"])
def test_read_only_roles_get_403_on_post(api, payload, who):
    response = api(who).post("/api/v1/customers/", payload(), format="json")
    assert response.status_code == 403
    assert response.json() == {"code": "permission_denied", "detail": "You are not allowed to do this."}
    assert not Customer.objects.exists()


def test_manager_cannot_create_in_another_county(api, payload):
    response = api("manager_bs").post("/api/v1/customers/", payload(), format="json")
    assert response.status_code == 403
    assert response.json()["detail"] == "That transformer area belongs to a unit outside your scope."


# --- updating -------------------------------------------------------------------------------


def test_patch(api, make_customer):
    customer = make_customer(name="秦四")
    response = api("counter_bs").patch(
        f"/api/v1/customers/{customer.number}/",
        {"version": 1, "name": "秦四海", "email": "qin@example.cn"},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["name"], body["email"], body["version"]) == ("秦四海", "qin@example.cn", 2)
    customer.refresh_from_db()
    assert customer.name == "秦四海"


def test_patch_needs_the_version(api, make_customer):
    customer = make_customer()
    response = api("counter").patch(
        f"/api/v1/customers/{customer.number}/", {"name": "无版本"}, format="json"
    )
    assert response.status_code == 400
    assert "version" in response.json()["errors"]
    customer.refresh_from_db()
    assert customer.version == 1


def test_patch_with_a_stale_version_is_409(api, make_customer, actors):
    customer = make_customer(name="尤五")
    customer_update(actor=actors["admin"], customer=customer, name="尤五先")
    response = api("counter").patch(
        f"/api/v1/customers/{customer.number}/", {"version": 1, "name": "尤五后"}, format="json"
    )
    assert response.status_code == 409
    assert response.json() == {
        "code": "conflict",
        "detail": "The record was changed by someone else. Reload and try again.",
    }
    customer.refresh_from_db()
    assert (customer.name, customer.version) == ("尤五先", 2)


def test_patch_with_an_invalid_phone_is_400_with_field_errors(api, make_customer):
    customer = make_customer()
    response = api("counter").patch(
        f"/api/v1/customers/{customer.number}/", {"version": 1, "mobile_phone": "12345"}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert list(body["errors"]) == ["mobile_phone"]


@pytest.mark.parametrize("who", ["auditor", "inspector"])
def test_read_only_roles_get_403_on_patch(api, make_customer, who):
    customer = make_customer()
    response = api(who).patch(
        f"/api/v1/customers/{customer.number}/", {"version": 1, "name": "改名"}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    customer.refresh_from_db()
    assert customer.version == 1


def test_patch_out_of_scope_is_404(api, make_customer):
    customer = make_customer("qx_s1")
    response = api("manager_bs").patch(
        f"/api/v1/customers/{customer.number}/", {"version": 1, "name": "越权"}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    customer.refresh_from_db()
    assert customer.version == 1


def test_session_auth_also_works_for_staff_pages_calling_the_api(client, staff, make_customer):
    make_customer()
    client.force_login(staff["auditor"])
    assert client.get("/api/v1/customers/").json()["count"] == 1


# --- schema ---------------------------------------------------------------------------------


def test_openapi_schema(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    text = response.content.decode()
    assert text.startswith("openapi: 3")
    assert "/api/v1/customers/:" in text
    assert "/api/v1/customers/{number}/:" in text
    assert "CustomerCreateIn" in text

    as_json = client.get("/api/schema/", {"format": "json"}).json()
    assert as_json["info"]["title"] == "Kilowatt API"
    assert {"get", "post"} <= set(as_json["paths"]["/api/v1/customers/"])
    assert {"get", "patch"} <= set(as_json["paths"]["/api/v1/customers/{number}/"])
