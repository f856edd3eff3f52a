"""Staff pages driven end to end in headless Chromium: Chinese sign-in, search, customer
detail, language switch, scope (404 outside one's county) and creating a customer.

The browser asks for ``zh-CN``; the glossary terms below are fixed by the translators.
Messages outside the glossary are looked up through gettext, so the assertions follow the
catalogue instead of repeating it.
"""

import re

import pytest
from django.utils import translation
from playwright.sync_api import Page, expect

from core.models import Role
from customers.models import Customer
from customers.validators import resident_id_check_char

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "pw-for-tests-1"


def resident_id(body17: str) -> str:
    return body17 + resident_id_check_char(body17)


def zh(message: str, **params) -> str:
    """``message`` as the Simplified Chinese pages render it."""
    with translation.override("zh-hans"):
        text = translation.gettext(message)
    return text % params if params else text


def sign_in(page: Page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(PASSWORD)
    page.locator("form input[type=submit][name=submit]").click()
    expect(page).to_have_url(f"{base_url}/customers/")
    expect(page.get_by_test_id("whoami")).to_contain_text(username)


def test_counter_signs_in_finds_customer_and_reads_detail_in_chinese(live_server, page, staff, make_customer):
    li_id = resident_id("36102519850315201")
    li = make_customer(name="李四", id_number=li_id, address="青溪县城关镇解放路18号")
    make_customer(
        "qx_s2", name="王五", id_number=resident_id("36102519900620302"), address="青溪县东溪乡王家村5号"
    )
    account_number = li.accounts.get().number
    service_point_number = li.service_points.get().number
    base = live_server.url

    # Sign-in page, in Chinese because the browser asks for zh-CN.
    page.goto(f"{base}/login/")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    expect(page.get_by_role("heading", name="员工登录")).to_be_visible()
    page.locator("#id_username").fill("counter")
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="登录", exact=True).click()

    # Lands on the customer search page.
    expect(page).to_have_url(f"{base}/customers/")
    expect(page.get_by_role("heading", name="查找客户")).to_be_visible()
    expect(page.get_by_test_id("whoami")).to_contain_text("counter")
    search_button = page.get_by_test_id("search-button")
    expect(search_button).to_have_text("查询")

    # Search by name: one row, 李四's, not 王五's.
    page.locator("input[name=q]").fill("李四")
    search_button.click()
    expect(page).to_have_url(re.compile(r"/customers/\?q="))
    results = page.get_by_test_id("results")
    expect(results.locator("thead")).to_contain_text("客户编号")
    rows = results.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("李四")
    expect(rows.first).to_contain_text("青溪县城关镇解放路18号")
    expect(results).not_to_contain_text("王五")
    expect(page.locator("input[name=q]")).to_have_value("李四")

    # Open the customer through the number link.
    rows.first.get_by_role("link", name=li.number, exact=True).click()
    expect(page).to_have_url(f"{base}/customers/{li.number}/")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    expect(page.get_by_test_id("customer-name")).to_have_text("李四")
    main = page.locator("main")
    masked = li_id[:6] + "*" * 8 + li_id[-4:]
    expect(main).to_contain_text(masked)
    expect(page.locator("body")).not_to_contain_text(li_id)
    expect(main).to_contain_text("青溪县城关镇解放路18号")
    for heading in ("账户", "计量点", "联系人"):
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
    expect(main).to_contain_text(account_number)
    expect(main).to_contain_text(service_point_number)
    expect(main).not_to_contain_text("王五")

    page.screenshot(path="/tmp/kilowatt-detail.png", full_page=True)  # noqa: S108


def test_language_selector_switches_to_english_and_back(live_server, page, staff):
    base = live_server.url
    sign_in(page, base, "counter")
    expect(page.get_by_role("heading", name="查找客户")).to_be_visible()

    page.locator("select[name=language]").select_option("en")
    expect(page.get_by_role("heading", name="Find a customer")).to_be_visible()
    expect(page).to_have_url(f"{base}/customers/")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.get_by_test_id("search-button")).to_have_text("Search")
    expect(page.locator("select[name=language]")).to_have_value("en")

    # The choice outlives the page (cookie), despite the browser's zh-CN Accept-Language.
    page.reload()
    expect(page.get_by_role("heading", name="Find a customer")).to_be_visible()

    page.locator("select[name=language]").select_option("zh-hans")
    expect(page.get_by_role("heading", name="查找客户")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")


def test_inspector_of_other_county_gets_404_for_customer(live_server, page, make_staff, make_customer):
    customer = make_customer("qx_s1", name="李四", address="青溪县城关镇解放路18号")
    make_staff("bs_inspector", Role.INSPECTOR, "bs_s1")
    base = live_server.url
    sign_in(page, base, "bs_inspector")

    response = page.goto(f"{base}/customers/{customer.number}/")
    assert response is not None
    assert response.status == 404
    expect(page.get_by_role("alert")).to_contain_text(zh("Not found."))
    expect(page.get_by_test_id("customer-name")).to_have_count(0)
    expect(page.locator("main")).not_to_contain_text("李四")
    expect(page.locator("main")).not_to_contain_text("解放路")

    # Search does not reveal the customer either.
    page.goto(f"{base}/customers/?q={customer.number}")
    expect(page.get_by_test_id("results").locator("tbody")).not_to_contain_text(customer.number)


def test_counter_creates_customer_after_fixing_id_number(live_server, page, staff, areas):
    base = live_server.url
    sign_in(page, base, "counter")
    page.goto(f"{base}/customers/new/")
    expect(page.get_by_role("heading", name=zh("New customer"), exact=True)).to_be_visible()

    body17 = "36102519880808505"
    good_id = resident_id(body17)
    wrong_check = "0" if good_id[-1] != "0" else "1"
    page.locator("#id_name").fill("赵六")
    page.locator("#id_category").select_option("residential")
    page.locator("#id_id_type").select_option("resident_id")
    page.locator("#id_id_number").fill(body17 + wrong_check)
    page.locator("#id_mobile_phone").fill("13912345678")
    page.locator("#id_address").fill("青溪县城关镇人民路88号")
    page.locator("#id_voltage_level").select_option("220V")
    page.locator("#id_contracted_capacity_kva").fill("6")
    page.locator("#id_settlement_mode").select_option("prepaid")
    page.locator("#id_transformer_area").select_option(str(areas["qx_s1"].pk))
    submit = page.locator("form input[type=submit][name=submit]")
    submit.click()

    # Back on the form with the error on the ID number field; the rest is kept.
    expect(page.locator("#id_id_number")).to_have_class(re.compile(r"\bis-invalid\b"))
    expected_error = zh(
        "The last character of the ID number should be %(c)s; please check the number.", c=good_id[-1]
    )
    expect(page.locator("[id^='error_'][id$='_id_id_number']")).to_have_text(expected_error)
    expect(page).to_have_url(f"{base}/customers/new/")
    expect(page.locator("#id_name")).to_have_value("赵六")
    assert not Customer.objects.filter(name="赵六").exists()

    page.locator("#id_id_number").fill(good_id)
    submit.click()

    expect(page).to_have_url(re.compile(rf"^{re.escape(base)}/customers/\d+/$"))
    expect(page.get_by_test_id("customer-name")).to_have_text("赵六")
    customer = Customer.objects.get(name="赵六")
    assert page.url == f"{base}/customers/{customer.number}/"
    assert customer.org_unit_id == areas["qx_s1"].supply_station_id
    expect(page.get_by_role("alert")).to_contain_text(customer.number)
    expect(page.locator("main")).to_contain_text(good_id[:6] + "*" * 8 + good_id[-4:])
    for heading in ("账户", "计量点", "联系人"):
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
